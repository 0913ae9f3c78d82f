"""The paper's audio and visual branches, shared by every method on the seam, and their inputs.

Layer for layer as in docs/aml-spec.md ("Networks"). Shapes, worked out by hand
(floor((n + 2p - k) / s) + 1 per layer) and checked in tests/test_models.py:

Audio branch, input (1, freq=224, time=125); the spec's tuples are read as (freq, time),
i.e. PyTorch's (H, W). The literal reading already ends at 10x10, so no reinterpretation:
    conv 1->3  k5 s(2,1) p1    : 224x125 -> 111x123
    avgpool    k(3,5) s2       : 111x123 ->  55x60
    conv 3->5  k(3,6) s2 p1    :  55x60  ->  28x29
    avgpool    k3 s2           :  28x29  ->  13x14
    conv 5->8, 8->16, 16->32 k3 p1 : 13x14 (unchanged)
    maxpool    k(4,5) s1       :  13x14  ->  10x10     => 32x10x10 = 3200
Visual branch, input (3, 224, 224):
    conv 3->3  k7 s2 p3 : 224 -> 112;  avgpool 2 : 56
    conv 3->5  k5 s2 p2 :  56 -> 28;   avgpool 2 : 14
    conv 5->8  k2 s1 p4 :  14 -> 21
    conv 8->16, 16->32 k3 p1 : 21;     maxpool 2 s2 : 10   => 32x10x10 = 3200

Nonlinearities and BatchNorms sit exactly where the spec lists them (e.g. the audio
branch has no activation between its last three convs, and neither branch has a BN after
its last conv). Convs keep PyTorch's default bias.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from avdata.tasks import DIRECTIONS

FEATURE_DIM = 32 * 10 * 10  # branch output, flattened (3200)
AUDIO_SHAPE = (1, 224, 125)  # (channel, freq, time)
FACE_SHAPE = (3, 224, 224)
MODALITIES = ("audio", "face")  # the seam's modality names (avdata's item modalities)


def modalities_of(direction: str) -> tuple[str, str]:
    """(query modality, gallery modality) of a direction (a2v: audio query, face gallery)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {tuple(DIRECTIONS)}, got {direction!r}")
    return DIRECTIONS[direction]


# --------------------------------------------------------------------------- branches


class AudioBranch(nn.Module):
    """Spectrogram (B, 1, 224, 125) -> features (B, 32, 10, 10)."""

    def __init__(self, slope: float = 0.2):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 3, kernel_size=5, stride=(2, 1), padding=1),
            nn.AvgPool2d(kernel_size=(3, 5), stride=2),
            nn.BatchNorm2d(3),
            nn.LeakyReLU(slope),
            nn.Conv2d(3, 5, kernel_size=(3, 6), stride=2, padding=1),
            nn.BatchNorm2d(5),
            nn.AvgPool2d(kernel_size=3, stride=2),
            nn.LeakyReLU(slope),
            nn.Conv2d(5, 8, kernel_size=3, padding=1),
            nn.BatchNorm2d(8),
            nn.Conv2d(8, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.MaxPool2d(kernel_size=(4, 5), stride=1),
            nn.LeakyReLU(slope),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class VisualBranch(nn.Module):
    """Face (B, 3, 224, 224) -> features (B, 32, 10, 10)."""

    def __init__(self, slope: float = 0.2):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, 3, kernel_size=7, stride=2, padding=3),
            nn.AvgPool2d(2),
            nn.BatchNorm2d(3),
            nn.LeakyReLU(slope),
            nn.Conv2d(3, 5, kernel_size=5, stride=2, padding=2),
            nn.AvgPool2d(2),
            nn.BatchNorm2d(5),
            nn.LeakyReLU(slope),
            nn.Conv2d(5, 8, kernel_size=2, stride=1, padding=4),
            nn.BatchNorm2d(8),
            nn.LeakyReLU(slope),
            nn.Conv2d(8, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.MaxPool2d(2, stride=2),
            nn.LeakyReLU(slope),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def branch_for(modality: str, slope: float = 0.2) -> nn.Module:
    """A fresh branch of the paper for ``modality`` (audio or face)."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return AudioBranch(slope) if modality == "audio" else VisualBranch(slope)


# ------------------------------------------------------------ frozen pretrained encoders
# model.voice_encoder / model.face_encoder: "aml" (avtrain.encoders.TRAINED) is the paper's branch,
# trained with the method; an encoder name of avtrain.encoders.ENCODERS makes the modality's input
# that frozen encoder's precomputed (N, dim) vectors (a feature store, avtrain.train.features), and
# its branch the small trainable FeatureAdapter below. This is the one place that choice is made.

ENCODER_KEYS = {"audio": "voice_encoder", "face": "face_encoder"}  # ModelConfig field per modality
TRAINED_BRANCH = "aml"  # == avtrain.encoders.TRAINED (tests/test_feature_methods.py checks); the
# default needs no import of avtrain.encoders, so a run of the paper's branches never loads it


def encoder_choice_problem(modality: str, value) -> str | None:
    """Why ``value`` cannot be ``model.{voice,face}_encoder`` of ``modality``, or None."""
    if value == TRAINED_BRANCH:
        return None
    from avtrain.encoders import ENCODERS, TRAINED, encoder_card

    if not isinstance(value, str) or value not in ENCODERS:
        right = sorted(n for n in ENCODERS if encoder_card(n).modality == modality)
        return f"expected {TRAINED} or one of {', '.join(right)}, got {value!r}"
    card = encoder_card(value)
    if card.modality != modality:
        right = sorted(n for n in ENCODERS if encoder_card(n).modality == modality)
        kind = "voice" if card.modality == "audio" else "face"
        return f"{value} is a {kind} encoder; expected {TRAINED} or one of {', '.join(right)}"
    return None


def frozen_encoders(model_cfg) -> dict[str, str]:
    """modality -> the frozen encoder's name, for the modalities a run reads as precomputed
    vectors (none by default: both branches are the paper's, trained)."""
    out = {}
    for modality, key in ENCODER_KEYS.items():
        name = getattr(model_cfg, key, TRAINED_BRANCH)
        if name != TRAINED_BRANCH:
            out[modality] = name
    return out


class FeatureAdapter(nn.Module):
    """A frozen encoder's vector (B, dim) -> branch features (B, FEATURE_DIM): one linear layer and
    the branches' leaky ReLU, so that every method's layers after the branch (built for the 3200-d
    branch output) take it unchanged. Trained with the method; the encoder itself is not."""

    def __init__(self, dim: int, slope: float = 0.2):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, FEATURE_DIM), nn.LeakyReLU(slope))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def modality_branch(modality: str, model_cfg) -> nn.Module:
    """The branch of ``modality`` a method is built with: the paper's (trained) or, for a frozen
    encoder (``model.voice_encoder`` / ``model.face_encoder``), a :class:`FeatureAdapter` of the
    encoder's embedding size. Either output flattens to (B, FEATURE_DIM)."""
    name = frozen_encoders(model_cfg).get(modality)
    if name is None:
        return branch_for(modality, model_cfg.leaky_slope)
    from avtrain.encoders import encoder_card

    return FeatureAdapter(encoder_card(name).dim, model_cfg.leaky_slope)


def to_branch_input(modality: str, x, frozen: bool) -> torch.Tensor:
    """A batch of decoded items as the branch takes them: spectrograms and faces normalised
    (:func:`normalise_audio` / :func:`normalise_face`); a frozen encoder's vectors as they are
    (float32; the encoders' own scale, e.g. Resemblyzer's and dlib's unit-norm vectors)."""
    if frozen:
        return _as_tensor(x).float()
    return normalise_audio(x) if modality == "audio" else normalise_face(x)


# ---------------------------------------------------------------------- init / inputs


def init_weights(model: nn.Module) -> None:
    """Glorot (Xavier) uniform for every conv and linear weight, zero bias (the paper).

    BatchNorm keeps PyTorch's default (weight 1, bias 0).
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _as_tensor(x) -> torch.Tensor:  # numpy or torch in, torch out (no copy if possible)
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)


def normalise_audio(spec_db, add_channel: bool = True) -> torch.Tensor:
    """dB spectrogram (..., 224, 125) (values in [-80, 0]) -> float32 (x - 0.5) / 0.5.

    This is the reference's transform verbatim (it maps [-80, 0] to [-161, -1]; the
    first BatchNorm absorbs the offset). add_channel inserts the channel axis before the
    last two: (224, 125) -> (1, 224, 125), (B, 224, 125) -> (B, 1, 224, 125).
    """
    x = _as_tensor(spec_db).float()
    x = (x - 0.5) / 0.5
    return x.unsqueeze(-3) if add_channel else x


def normalise_face(image_uint8) -> torch.Tensor:
    """RGB uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1] (mean 0.5, std 0.5)."""
    x = _as_tensor(image_uint8)
    if x.dtype != torch.uint8:
        raise TypeError(f"normalise_face expects uint8 HWC images, got {x.dtype}")
    if x.shape[-1] != 3:
        raise ValueError(f"expected channels last (..., H, W, 3), got {tuple(x.shape)}")
    x = x.float().div(255.0).movedim(-1, -3)
    return (x - 0.5) / 0.5
