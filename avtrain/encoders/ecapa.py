"""ECAPA-TDNN speaker encoder (SpeechBrain / WeSpeaker): its card only, for now.

The issue names it as the second online-only encoder. Running it needs SpeechBrain's (or
WeSpeaker's) ECAPA-TDNN code, which is neither a dependency nor in the encoders extra, so this
version documents the encoder (docs/encoders.md, leakage warnings) and refuses to load it with one
line.
"""

from __future__ import annotations

from avtrain.encoders.base import EXTRA, EncoderCard, EncoderError, FrozenEncoder


class ECAPA(FrozenEncoder):
    card = EncoderCard(
        name="ecapa",
        modality="audio",
        dim=192,
        input="16 kHz mono waveform, 80-d filterbanks (SpeechBrain's recipe)",
        trained_on=("VoxCeleb1", "VoxCeleb2"),  # speechbrain/spkrec-ecapa-voxceleb's model card
        overlaps=("voxceleb1", "voxceleb2"),
        licence="SpeechBrain: Apache-2.0; the VoxCeleb-trained weights follow VoxCeleb's CC BY 4.0",
        extra=EXTRA,
        weights="a file by path (--encoder-weights)",
    )

    def __init__(self, weights=None, allow_download: bool = False):
        raise EncoderError(
            "encoder ecapa is not available in this version of avmatch (its ECAPA-TDNN code is not "
            "packaged yet); use resemblyzer for voices (docs/encoders.md)"
        )
