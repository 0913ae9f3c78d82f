"""AML networks: audio/visual branches, shared generator, modality discriminator, task heads.

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

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
from torch import nn

EMBED_DIM = 128  # size of the modality-independent feature h
FEATURE_DIM = 32 * 10 * 10  # branch output, flattened (3200)
AUDIO_SHAPE = (1, 224, 125)  # (channel, freq, time)
FACE_SHAPE = (3, 224, 224)
AUDIO, FACE = 0, 1  # modality labels for the discriminator (audio=0, visual=1)
TASKS = ("matching", "verification", "retrieval")
DIRECTIONS = ("a2v", "v2a")  # a2v: audio query, face gallery; v2a: face query, audio gallery
# Matching heads (ModelConfig.head). "concat_linear" is the paper's and its reference's, and the
# default; it cannot learn matching (no query-gallery interaction term, see MatchingHead).
# "concat_mlp" (SVHF-Net style) and "diff_mlp" (per item, on h_q - h_j) can. docs/training.md,
# "Matching heads".
MATCHING_HEADS = ("concat_linear", "concat_mlp", "diff_mlp")
CONCAT_MLP_HIDDEN = (1024, 512)  # SVHF-Net's fc8/fc9 after the concatenation
DIFF_MLP_HIDDEN = 2 * EMBED_DIM  # enough for -sum|h_q - h_j| exactly: |x| = relu(x) + relu(-x)


@dataclass
class ModelConfig:
    task: str = "matching"  # matching | verification | retrieval
    k: int = 2  # gallery size; verification has k = 1 (one face or voice per query)
    # The paper's φ and ψ use one θ_G and the reference has one generator, so sharing is
    # the default; False gives each modality its own generator (same architecture).
    shared_generator: bool = True
    generator_dropout: float = 0.1
    discriminator_dropout: float = 0.3
    head_dropout: float = 0.1  # reference: Dropout 0.1 before each task head
    leaky_slope: float = 0.2
    clip_value: float | None = 0.01  # WGAN-style weight clipping of D (paper; WGAN's 0.01)
    head: str = "concat_linear"  # matching head: one of MATCHING_HEADS (other tasks: their one head)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "verification" and self.k != 1:
            raise ValueError("verification compares one query with one gallery item: k must be 1")
        if self.task != "verification" and self.k < 2:
            raise ValueError(f"{self.task} needs a gallery of k >= 2, got k={self.k}")
        if self.head not in MATCHING_HEADS:
            raise ValueError(f"head must be one of {MATCHING_HEADS}, got {self.head!r}")
        if self.task != "matching" and self.head != "concat_linear":
            raise ValueError(
                f"head={self.head!r} is a matching head; {self.task} has one head (leave the default)"
            )


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


# ------------------------------------------------------- generator and discriminator


class Generator(nn.Module):
    """3200-d branch features -> 128-d modality-independent h in (-1, 1)."""

    def __init__(self, dropout: float = 0.1, slope: float = 0.2):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(FEATURE_DIM, EMBED_DIM),
            nn.LeakyReLU(slope),
            nn.Dropout(dropout),
            nn.Linear(EMBED_DIM, EMBED_DIM),
            nn.Tanh(),
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.layers(f)


class ModalityDiscriminator(nn.Module):
    """h (N, 128) -> modality logits (N, 2): column 0 = audio, column 1 = visual."""

    def __init__(self, dropout: float = 0.3, clip_value: float | None = 0.01):
        super().__init__()
        self.clip_value = clip_value
        self.layers = nn.Sequential(nn.Dropout(dropout), nn.Linear(EMBED_DIM, 2))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layers(h)

    @torch.no_grad()
    def clip_weights(self, c: float | None = None) -> None:
        """WGAN weight clipping: clamp every parameter to [-c, c] (call after each D step).

        c defaults to self.clip_value; nothing happens when both are None.
        """
        c = self.clip_value if c is None else c
        if c is None:
            return
        for p in self.parameters():
            p.clamp_(-c, c)


# ------------------------------------------------------------------------ task heads
# Every head takes h_query (B, D) and h_gallery (B, k, D) and returns logits.


class MatchingHead(nn.Module):
    """Concatenate query and the k gallery features, classify which position matches.

    The paper's head ("concat_linear"), kept as the default. It cannot learn matching: one
    linear layer gives position j the logit  b_j + W_jq·h_q + sum_i W_ji·h_i,  a sum of one
    term per input with no product of h_q and h_j, so it cannot score how close h_j is to
    h_q. Were the weights the same for every position, the h_q term would be common to all
    logits and cancel in the softmax, leaving a score of the gallery alone: exactly chance,
    since the positive is an item like any other. Position-specific weights allow only crude
    one-sided tests on signed differences (v·(h_1 - h_q) > -c passes every match but also half
    the non-matches) and memorisation; see docs/training.md, "Matching heads". MatchingMLPHead
    and DiffMLPHead can learn the comparison.
    """

    def __init__(self, k: int, dropout: float = 0.1):
        super().__init__()
        self.k = k
        self.layers = nn.Sequential(nn.Dropout(dropout), nn.Linear((k + 1) * EMBED_DIM, k))

    def forward(self, h_query: torch.Tensor, h_gallery: torch.Tensor) -> torch.Tensor:
        if h_gallery.shape[1] != self.k:
            raise ValueError(f"matching head built for k={self.k}, got {h_gallery.shape[1]}")
        return self.layers(torch.cat([h_query, h_gallery.flatten(1)], dim=1))  # (B, k)


class MatchingMLPHead(nn.Module):
    """SVHF-Net style ("concat_mlp"): an MLP over the concatenation [h_q, h_1..h_k] -> k logits.

    The hidden ReLU layers can form query-gallery interactions that one linear layer cannot;
    it is still tied to the k it was built for and has to learn the comparison for every
    gallery position separately.
    """

    def __init__(
        self, k: int, dropout: float = 0.1, hidden: tuple[int, ...] = CONCAT_MLP_HIDDEN, dim: int = EMBED_DIM
    ):
        super().__init__()
        self.k = k
        sizes = [(k + 1) * dim, *hidden]
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        for n_in, n_out in pairwise(sizes):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], k))
        self.layers = nn.Sequential(*layers)

    def forward(self, h_query: torch.Tensor, h_gallery: torch.Tensor) -> torch.Tensor:
        if h_gallery.shape[1] != self.k:
            raise ValueError(f"matching head built for k={self.k}, got {h_gallery.shape[1]}")
        return self.layers(torch.cat([h_query, h_gallery.flatten(1)], dim=1))  # (B, k)


class DiffMLPHead(nn.Module):
    """Per item ("diff_mlp"): logit_j = MLP(h_q - h_j), the same small MLP for every position.

    Like the retrieval head it scores the difference, so it works for any gallery size and is
    symmetric in the positions; unlike a linear layer on h_q - h_j (whose w·h_q term is the
    same for every j and cancels in the softmax) the hidden layer can score closeness, e.g.
    -sum_d |h_q,d - h_j,d|. Broadcasts like RetrievalHead: (Q, 1, D) with (1, G, D) -> (Q, G).
    """

    def __init__(self, dropout: float = 0.1, hidden: int = DIFF_MLP_HIDDEN, dim: int = EMBED_DIM):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, h_query: torch.Tensor, h_gallery: torch.Tensor) -> torch.Tensor:
        if h_query.dim() == 2:
            h_query = h_query.unsqueeze(1)
        return self.layers(h_query - h_gallery).squeeze(-1)  # (B, k)


class VerificationHead(nn.Module):
    """Concatenate the pair, two-way classify: logit 1 = same identity."""

    def __init__(self, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * EMBED_DIM, 2))

    def forward(self, h_query: torch.Tensor, h_gallery: torch.Tensor) -> torch.Tensor:
        if h_gallery.dim() == 3:
            if h_gallery.shape[1] != 1:
                raise ValueError(f"verification compares pairs, got gallery {h_gallery.shape[1]}")
            h_gallery = h_gallery[:, 0]
        return self.layers(torch.cat([h_query, h_gallery], dim=1))  # (B, 2)


class RetrievalHead(nn.Module):
    """Learned score of (h_query - h_gallery) per gallery item; softmax lives in the loss.

    Works for any gallery size. h_query may be (B, D) with h_gallery (B, k, D), or, for
    scoring Q queries against one shared gallery, h_query (Q, 1, D) and h_gallery (1, G, D)
    (broadcast), giving (Q, G).
    """

    def __init__(self, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.Sequential(nn.Dropout(dropout), nn.Linear(EMBED_DIM, 1))

    def forward(self, h_query: torch.Tensor, h_gallery: torch.Tensor) -> torch.Tensor:
        if h_query.dim() == 2:
            h_query = h_query.unsqueeze(1)
        return self.layers(h_query - h_gallery).squeeze(-1)  # (B, k)


def make_head(cfg: ModelConfig) -> nn.Module:
    if cfg.task == "matching":
        if cfg.head == "concat_mlp":
            return MatchingMLPHead(cfg.k, cfg.head_dropout)
        if cfg.head == "diff_mlp":
            return DiffMLPHead(cfg.head_dropout)
        return MatchingHead(cfg.k, cfg.head_dropout)
    if cfg.task == "verification":
        return VerificationHead(cfg.head_dropout)
    return RetrievalHead(cfg.head_dropout)


# ----------------------------------------------------------------------------- model


class AML(nn.Module):
    """Both branches, the generator(s), the task head and the modality discriminator.

    The discriminator lives here for convenience (one state_dict) but is trained by its own
    optimiser: use `encoder_parameters()` for the encoders/generator/head group and
    `discriminator.parameters()` for the discriminator group.
    """

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ModelConfig()
        self.audio_branch = AudioBranch(cfg.leaky_slope)
        self.visual_branch = VisualBranch(cfg.leaky_slope)
        self.generator = Generator(cfg.generator_dropout, cfg.leaky_slope)
        # With shared_generator the face generator *is* the audio one (parameters counted once).
        self.face_generator = (
            self.generator if cfg.shared_generator else Generator(cfg.generator_dropout, cfg.leaky_slope)
        )
        self.head = make_head(cfg)
        self.discriminator = ModalityDiscriminator(cfg.discriminator_dropout, cfg.clip_value)
        init_weights(self)

    # -- per-modality embeddings; inputs are (N, C, H, W), any memory format
    def features_audio(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 224, 125) -> (N, 3200): branch features before the generator."""
        return self.audio_branch(x).flatten(1)

    def features_face(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 224, 224) -> (N, 3200): branch features before the generator."""
        return self.visual_branch(x).flatten(1)

    def embed_audio(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 224, 125) -> h (N, 128)."""
        return self.generator(self.features_audio(x))

    def embed_face(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 224, 224) -> h (N, 128)."""
        return self.face_generator(self.features_face(x))

    def encoder_parameters(self):
        """Everything the encoder/generator/head optimiser updates (not the discriminator)."""
        skip = {id(p) for p in self.discriminator.parameters()}
        return [p for p in self.parameters() if id(p) not in skip]

    def forward(self, query: torch.Tensor, gallery: torch.Tensor, direction: str = "a2v") -> dict:
        """query (B, C, H, W); gallery (B, k, C', H', W') or, for k = 1, (B, C', H', W').

        direction 'a2v': audio query, face gallery; 'v2a': face query, audio gallery.
        Returns h_query (B, 128), h_gallery (B, k, 128), logits ((B, k) for matching and
        retrieval, (B, 2) for verification) and the direction (the losses need it to tell
        the modalities apart).
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if gallery.dim() == 4:
            gallery = gallery.unsqueeze(1)
        B, k = gallery.shape[:2]
        embed_query, embed_gallery = (
            (self.embed_audio, self.embed_face) if direction == "a2v" else (self.embed_face, self.embed_audio)
        )
        h_query = embed_query(query)
        h_gallery = embed_gallery(gallery.flatten(0, 1)).view(B, k, EMBED_DIM)
        logits = self.head(h_query, h_gallery)
        return {"h_query": h_query, "h_gallery": h_gallery, "logits": logits, "direction": direction}


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
