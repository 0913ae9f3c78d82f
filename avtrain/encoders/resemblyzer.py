"""Resemblyzer 0.1.4's GE2E speaker encoder, with the weights inside its wheel.

Preprocessing is Resemblyzer's own (``preprocess_wav`` on a 16 kHz waveform: volume normalised
up to -30 dBFS, then webrtcvad (mode 3) cuts silences longer than a few frames); the whole
utterance is embedded (``embed_utterance``: 1.6 s partials at 1.3 per second, averaged, L2-normed).

The network is Resemblyzer's ``VoiceEncoder`` (its LSTM + linear and its methods), but its
constructor is not called: it would ``torch.load`` the checkpoint without ``weights_only`` (a
pickle). The state dict is read here with ``torch.load(weights_only=True)`` and loaded strictly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avdata.io import sha256_file
from avtrain.encoders.base import (
    EXTRA,
    SAMPLE_RATE,
    EncoderCard,
    EncoderError,
    FrozenEncoder,
    ItemRejected,
    check_wave,
)

# Less voice than this after VAD would be mostly the zero padding of one 1.6 s partial window.
MIN_VOICED_SECONDS = 1.0
# GE2E's similarity scale and bias: training-only parameters of the loss, not of the encoder.
_LOSS_KEYS = ("similarity_weight", "similarity_bias")


class Resemblyzer(FrozenEncoder):
    requires = ("resemblyzer", "webrtcvad")
    card = EncoderCard(
        name="resemblyzer",
        modality="audio",
        dim=256,
        input="16 kHz mono waveform, volume-normalised and webrtcvad-trimmed (Resemblyzer's preprocess_wav), "
        "whole file",
        # Resemblyzer's model is the Real-Time-Voice-Cloning speaker encoder, whose recipe
        # (encoder_preprocess.py) reads LibriSpeech train-other-500, VoxCeleb1 and VoxCeleb2 dev.
        trained_on=("LibriSpeech train-other-500", "VoxCeleb1", "VoxCeleb2"),
        overlaps=("voxceleb1", "voxceleb2"),
        licence="Apache-2.0 (Resemblyzer 0.1.4, code and pretrained.pt)",
        extra=EXTRA,
        weights="in the resemblyzer package (resemblyzer/pretrained.pt)",
    )

    def __init__(self, weights=None, allow_download: bool = False):
        if weights is not None:
            raise EncoderError(
                f"encoder resemblyzer takes no --encoder-weights ({weights}): it uses the weights "
                f"inside the resemblyzer package"
            )
        resemblyzer, _ = self.check_installed()
        import torch
        from resemblyzer import hparams
        from torch import nn

        path = Path(resemblyzer.__file__).resolve().parent / "pretrained.pt"
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in checkpoint["model_state"].items() if k not in _LOSS_KEYS}
        except Exception as exc:  # noqa: BLE001 - a damaged install: one line naming the file
            raise EncoderError(f"{path}: not Resemblyzer's weights ({type(exc).__name__}: {exc})") from None
        model = resemblyzer.VoiceEncoder.__new__(resemblyzer.VoiceEncoder)
        nn.Module.__init__(model)  # VoiceEncoder's own __init__ would unpickle the file
        model.lstm = nn.LSTM(
            hparams.mel_n_channels, hparams.model_hidden_size, hparams.model_num_layers, batch_first=True
        )
        model.linear = nn.Linear(hparams.model_hidden_size, hparams.model_embedding_size)
        model.relu = nn.ReLU()
        model.device = torch.device("cpu")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise EncoderError(
                f"{path}: keys or shapes differ from Resemblyzer's VoiceEncoder ({exc})"
            ) from None
        self.model = model.eval().requires_grad_(False)
        self.weights_sha256 = sha256_file(path)
        self._preprocess = resemblyzer.preprocess_wav

    def embed_audio(self, wave: np.ndarray) -> np.ndarray:
        wave = check_wave(wave, self.card.name)
        if not wave.size or not np.any(wave):
            raise ItemRejected(f"silent: no non-zero sample in {wave.size / SAMPLE_RATE:.2f} s")
        voiced = self._preprocess(wave)  # no source_sr: already at SAMPLE_RATE, not resampled
        seconds = len(voiced) / SAMPLE_RATE
        if seconds < MIN_VOICED_SECONDS:
            raise ItemRejected(
                f"too short after VAD: {seconds:.2f} s of voice in {wave.size / SAMPLE_RATE:.2f} s "
                f"(at least {MIN_VOICED_SECONDS:.1f} s needed)"
            )
        import torch

        with torch.inference_mode():
            embedding = self.model.embed_utterance(voiced)
        return np.asarray(embedding, dtype=np.float32)
