"""ECAPA-TDNN speaker encoder with SpeechBrain's ``speechbrain/spkrec-ecapa-voxceleb`` weights.

SpeechBrain itself is not a dependency (nor torchaudio): the network (Desplanques, Thienpondt and
Demuynck, "ECAPA-TDNN", Interspeech 2020) and SpeechBrain's feature pipeline are written here in
torch, with the module and parameter names of SpeechBrain's ``ECAPA_TDNN`` so that the published
``embedding_model.ckpt`` state dict loads with ``strict=True``. The hyperparameters are those of
that model's ``hyperparams.yaml``: 80 mel bins in, channels 1024 x4 and 3072, kernels 5/3/3/3/1,
dilations 1/2/3/4/1, attention 128, a 192-d embedding.

One utterance in, one embedding out, the way SpeechBrain's ``EncoderClassifier.encode_batch``
computes it for a single 16 kHz clip:

1. ``Fbank(n_mels=80)``: a centred STFT (400-point FFT of a 25 ms Hamming window every 10 ms,
   zero-padded ends), the power spectrum, SpeechBrain's own triangular mel filters (symmetric in Hz,
   see :func:`mel_filterbank`), ``10 log10`` clamped at 1e-10 and floored at 80 dB under the
   utterance's maximum;
2. ``InputNormalization(norm_type="sentence", std_norm=False)``: the utterance's mean per mel bin
   subtracted;
3. the network, in eval mode; the embedding is the raw 192-d output (SpeechBrain does not
   normalise it either: compare embeddings by cosine).

Not verified against the real weights in this repository (its tests have no network): they check
the architecture's keys and shapes, the pipeline's arithmetic, and the loading code with a weights
file they make. docs/encoders.md (``## ecapa``) says how a user with the weights checks the
embeddings against SpeechBrain's own on one file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avdata.io import sha256_file
from avtrain.encoders.base import (
    EXTRA,
    SAMPLE_RATE,
    EncoderCard,
    FrozenEncoder,
    ItemRejected,
    check_wave,
)
from avtrain.encoders.weights import cache_dir, check_state_dict, given_or_fetched, read_state_dict

# --------------------------------------------------------------------------- the published weights

HF_REPO = "speechbrain/spkrec-ecapa-voxceleb"
# The model repository's commit whose embedding_model.ckpt has the sha256 below; the download URL
# names it, so a later change of the file upstream is a checksum error here, never a silent swap.
HF_REVISION = "0f99f2d0ebe89ac095bcc5903c4dd8f72b367286"
WEIGHTS_FILE = "embedding_model.ckpt"
WEIGHTS_URL = f"https://huggingface.co/{HF_REPO}/resolve/{HF_REVISION}/{WEIGHTS_FILE}"
WEIGHTS_SHA256 = "0575cb64845e6b9a10db9bcb74d5ac32b326b8dc90352671d345e2ee3d0126a2"
CACHE_NAME = f"spkrec-ecapa-voxceleb-{HF_REVISION[:7]}-{WEIGHTS_FILE}"  # in the encoders' download cache

# --------------------------------------------------------------------------- the input

N_MELS = 80
N_FFT = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms
TOP_DB = 80.0
AMIN = 1e-10
# Shorter utterances are rejected: ~50 frames; the attention statistics of fewer frames are noise,
# and the reflect padding of the dilated convolutions needs more than 8 frames anyway.
MIN_SECONDS = 0.5


def _to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) float32: SpeechBrain's ``Filterbank`` matrix (triangular, frozen,
    0 Hz to Nyquist), built with its float32 arithmetic. Its filters differ from the textbook ones:
    filter i is centred at the (i+1)-th of n_mels + 2 mel-spaced points and is a symmetric triangle
    whose half-width is the distance to the point below it (so it reaches zero at the point below
    and a little beyond the point above); peaks are 1, there is no area normalisation."""
    mel = torch.linspace(_to_mel(0.0), _to_mel(sample_rate / 2), n_mels + 2)
    hz = 700 * (10 ** (mel / 2595) - 1)
    band = (hz[1:] - hz[:-1])[:-1]
    central = hz[1:-1]
    freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    slope = (freqs[None, :] - central[:, None]) / band[:, None]
    return torch.clamp(torch.minimum(slope + 1.0, 1.0 - slope), min=0.0).T.contiguous()


def fbank(wave: torch.Tensor, filters: torch.Tensor | None = None) -> torch.Tensor:
    """(frames, 80) log-mel features of a (T,) float32 16 kHz waveform, as SpeechBrain's
    ``Fbank(n_mels=80)``: 1 + T // 160 frames (centred, zero-padded), dB floored at 80 under the
    maximum."""
    window = torch.hamming_window(N_FFT)  # periodic, like torch's default that SpeechBrain uses
    spec = torch.stft(
        wave,
        N_FFT,
        hop_length=HOP,
        win_length=N_FFT,
        window=window,
        center=True,
        pad_mode="constant",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    power = spec.real.pow(2) + spec.imag.pow(2)  # (freq, frames)
    mels = power.T @ (mel_filterbank() if filters is None else filters)
    db = 10.0 * torch.log10(torch.clamp(mels, min=AMIN))  # ref 1.0: no offset
    return torch.maximum(db, db.max() - TOP_DB)


def sentence_mean_norm(feats: torch.Tensor) -> torch.Tensor:
    """SpeechBrain's ``InputNormalization(norm_type="sentence", std_norm=False)`` for one
    utterance: each mel bin's mean over the utterance subtracted (its std is left alone)."""
    return feats - feats.mean(dim=0, keepdim=True)


# --------------------------------------------------------------------------- the network
# Names below (conv.conv, norm.norm, blocks, tdnn1, res2net_block, se_block, mfa, asp, asp_bn, fc)
# are the state-dict keys of SpeechBrain's checkpoint; the forward passes follow its ECAPA_TDNN.


class _Conv1d(nn.Module):
    """SpeechBrain's Conv1d: 'same' length by reflect padding, then a plain convolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__()
        self.pad = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (self.pad, self.pad), mode="reflect")
        return self.conv(x)


class _BatchNorm1d(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class TDNNBlock(nn.Module):
    """Convolution, ReLU, then batch norm (SpeechBrain's order)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.conv = _Conv1d(in_channels, out_channels, kernel_size, dilation)
        self.activation = nn.ReLU()
        self.norm = _BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.activation(self.conv(x)))


class Res2NetBlock(nn.Module):
    """Channels split in ``scale`` groups: the first passes through, each next one is convolved
    after adding the previous group's output (growing receptive fields in one layer)."""

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int):
        super().__init__()
        width = channels // scale
        self.scale = scale
        self.blocks = nn.ModuleList(
            [TDNNBlock(width, width, kernel_size, dilation) for _ in range(scale - 1)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        previous = None
        for i, part in enumerate(torch.chunk(x, self.scale, dim=1)):
            if i == 0:
                out = part
            elif i == 1:
                out = self.blocks[0](part)
            else:
                out = self.blocks[i - 1](part + previous)
            outputs.append(out)
            previous = out
        return torch.cat(outputs, dim=1)


class SEBlock(nn.Module):
    """Squeeze-excitation: channel gates from the utterance's mean."""

    def __init__(self, channels: int, se_channels: int):
        super().__init__()
        self.conv1 = _Conv1d(channels, se_channels, 1)
        self.relu = nn.ReLU()
        self.conv2 = _Conv1d(se_channels, channels, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=2, keepdim=True)
        return self.sigmoid(self.conv2(self.relu(self.conv1(s)))) * x


class SERes2NetBlock(nn.Module):
    def __init__(
        self, channels: int, kernel_size: int, dilation: int, scale: int = 8, se_channels: int = 128
    ):
        super().__init__()
        self.tdnn1 = TDNNBlock(channels, channels, 1, 1)
        self.res2net_block = Res2NetBlock(channels, scale, kernel_size, dilation)
        self.tdnn2 = TDNNBlock(channels, channels, 1, 1)
        self.se_block = SEBlock(channels, se_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x)))) + x


def _weighted_stats(x: torch.Tensor, weights: torch.Tensor, eps: float = 1e-12):
    """Mean and std over time of (N, C, L) x under (N, C|1, L) weights summing to 1."""
    mean = (weights * x).sum(dim=2)
    std = torch.sqrt((weights * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2).clamp(eps))
    return mean, std


class AttentiveStatisticsPooling(nn.Module):
    """Channel-wise attention over time (with the utterance's global mean and std as context),
    returning the attended mean and std concatenated: (N, 2C, 1)."""

    def __init__(self, channels: int, attention_channels: int):
        super().__init__()
        self.tdnn = TDNNBlock(channels * 3, attention_channels, 1, 1)
        self.tanh = nn.Tanh()
        self.conv = _Conv1d(attention_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        mean, std = _weighted_stats(x, torch.full_like(x[:, :1], 1.0 / frames))
        context = torch.cat(
            [x, mean.unsqueeze(2).expand(-1, -1, frames), std.unsqueeze(2).expand(-1, -1, frames)], dim=1
        )
        attention = F.softmax(self.conv(self.tanh(self.tdnn(context))), dim=2)
        mean, std = _weighted_stats(x, attention)
        return torch.cat([mean, std], dim=1).unsqueeze(2)


class ECAPATDNN(nn.Module):
    """(N, frames, n_mels) normalised log-mels -> (N, lin_neurons) embeddings."""

    def __init__(
        self,
        input_size: int = N_MELS,
        channels: tuple[int, ...] = (1024, 1024, 1024, 1024, 3072),
        kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1),
        dilations: tuple[int, ...] = (1, 2, 3, 4, 1),
        attention_channels: int = 128,
        lin_neurons: int = 192,
    ):
        super().__init__()
        self.blocks = nn.ModuleList([TDNNBlock(input_size, channels[0], kernel_sizes[0], dilations[0])])
        for i in range(1, len(channels) - 1):
            if channels[i] != channels[i - 1]:
                raise ValueError(
                    "ECAPATDNN here has no shortcut convolution: the SE-Res2Net widths are equal"
                )
            self.blocks.append(SERes2NetBlock(channels[i], kernel_sizes[i], dilations[i]))
        self.mfa = TDNNBlock(
            channels[-2] * (len(channels) - 2), channels[-1], kernel_sizes[-1], dilations[-1]
        )
        self.asp = AttentiveStatisticsPooling(channels[-1], attention_channels)
        self.asp_bn = _BatchNorm1d(channels[-1] * 2)
        self.fc = _Conv1d(channels[-1] * 2, lin_neurons, 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = feats.transpose(1, 2)
        outputs = []
        for layer in self.blocks:
            x = layer(x)
            outputs.append(x)
        x = self.mfa(torch.cat(outputs[1:], dim=1))  # multi-layer aggregation of the SE-Res2Net blocks
        return self.fc(self.asp_bn(self.asp(x))).squeeze(2)


# --------------------------------------------------------------------------- the encoder


class ECAPA(FrozenEncoder):
    """ECAPA-TDNN (SpeechBrain spkrec-ecapa-voxceleb): a whole 16 kHz utterance -> (192,) float32.

    ``weights``: the model's ``embedding_model.ckpt`` (or the same tensors as ``.safetensors``) by
    path; any file with this architecture's keys and shapes loads, and ``published`` says whether
    it is byte for byte the file SpeechBrain published (sha256 :data:`WEIGHTS_SHA256`).
    Without a path, only with ``allow_download``: the file from :data:`WEIGHTS_URL` (a pinned
    revision) in the encoders' download cache, fetched once and checked against the pinned sha256."""

    card: ClassVar[EncoderCard] = EncoderCard(
        name="ecapa",
        modality="audio",
        dim=192,
        input=(
            "16 kHz mono waveform, whole file, no VAD: 80 log-mel fbank (25 ms / 10 ms), "
            "sentence mean normalisation (SpeechBrain's pipeline)"
        ),
        # "Voxceleb 1+ Voxceleb2 training data" (model card); its classifier's 7,205 classes are the
        # 1,211 VoxCeleb1 dev + 5,994 VoxCeleb2 dev identities (VoxCeleb1's 40 test ones held out).
        trained_on=("VoxCeleb1 dev (1,211 identities)", "VoxCeleb2 dev (5,994 identities)"),
        overlaps=("voxceleb1", "voxceleb2"),
        licence="Apache-2.0 (the speechbrain/spkrec-ecapa-voxceleb model card)",
        extra=EXTRA,  # needs nothing beyond torch; listed with the other encoders
        weights="a file by path (--encoder-weights), or downloaded with a pinned sha256 when allowed",
    )

    def __init__(self, weights: str | Path | None = None, allow_download: bool = False):
        path = given_or_fetched(
            weights,
            allow_download,
            "ecapa",
            f"SpeechBrain's {WEIGHTS_FILE} from {HF_REPO}",
            WEIGHTS_URL,
            cache_dir() / CACHE_NAME,
            WEIGHTS_SHA256,
        )
        state = read_state_dict(path)
        self.weights_sha256 = sha256_file(path)
        self.weights_path = path
        self.published = self.weights_sha256 == WEIGHTS_SHA256
        model = ECAPATDNN()
        model.load_state_dict(check_state_dict(path, state, model, what="ECAPA-TDNN"), strict=True)
        self.model = model.eval().requires_grad_(False)
        self.filters = mel_filterbank()

    def features(self, wave: np.ndarray) -> torch.Tensor:
        """(frames, 80) normalised log-mels of a (T,) waveform: the network's input."""
        return sentence_mean_norm(fbank(torch.from_numpy(np.ascontiguousarray(wave)), self.filters))

    def embed_audio(self, wave: np.ndarray) -> np.ndarray:
        wave = check_wave(wave, self.card.name)
        seconds = len(wave) / SAMPLE_RATE
        if seconds < MIN_SECONDS:
            raise ItemRejected(f"too short for ecapa: {seconds:.2f} s (needs >= {MIN_SECONDS} s)")
        if not np.isfinite(wave).all():
            raise ItemRejected("waveform has non-finite samples")
        if not np.any(wave):  # SpeechBrain would embed it, but the vector would say nothing of a voice
            raise ItemRejected(f"silent: no non-zero sample in {seconds:.2f} s")
        with torch.inference_mode():
            return self.model(self.features(wave).unsqueeze(0))[0].numpy().astype(np.float32, copy=True)
