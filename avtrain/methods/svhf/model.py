"""SVHF-Net (Nagrani, Albanie, Zisserman, "Seeing Voices and Hearing Faces: Cross-modal biometric
matching", CVPR 2018), the static network, on avmatch's encoders.

Each modality has its own stream (the gallery items share theirs); the query's and the k gallery
items' stream outputs are concatenated and classified by fc 1024 -> 512 -> k (SVHF-Net's
fc8-fc10: AML's ``concat_mlp`` head, :class:`avtrain.methods.aml.model.MatchingMLPHead`), trained
with cross-entropy on the positive's position. The head is the score (``default_score = "head"``),
for the k and direction it was trained on only.

Streams: the paper's audio / visual branch (3200-d features), then one fully connected layer with
a ReLU per modality (``svhf.embed_dim``, 1024 like SVHF-Net's fc7). ``embed`` returns that stream
output: l2 or cosine scores on it can be computed but mean little, since nothing trains the two
modalities' streams into one space (only the head compares them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from avtrain.methods.aml.model import CONCAT_MLP_HIDDEN, MatchingMLPHead
from avtrain.methods.branches import BranchMethod
from avtrain.methods.encoders import FEATURE_DIM, MODALITIES, init_weights
from avtrain.run.config import ConfigError


@dataclass
class Options:
    """``--set svhf.KEY=VALUE``."""

    embed_dim: int = 1024  # each stream's output, concatenated into the head (SVHF-Net's fc7 width)
    dropout: float = 0.0  # before the head's first layer (the paper states none)

    def __post_init__(self):
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {self.embed_dim}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class SVHF(BranchMethod):
    """Per-modality streams and the k-way head; trains on matching tuples of one k and direction."""

    name = "svhf"
    Options = Options
    default_score = "head"
    log_terms = ("loss", "accuracy")

    def __init__(self, cfg, labels=None):
        super().__init__(cfg, labels)
        if cfg.task != "matching":
            raise ConfigError(
                f"task: method svhf classifies which of k gallery items matches (task matching), "
                f"got {cfg.task}"
            )
        opts = self.options
        self.embed_dim = opts.embed_dim
        self.k = cfg.k
        self.streams = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(FEATURE_DIM, opts.embed_dim), nn.ReLU()) for m in MODALITIES}
        )
        self.head = MatchingMLPHead(cfg.k, opts.dropout, CONCAT_MLP_HIDDEN, dim=opts.embed_dim)
        init_weights(self)

    def embedding(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        return self.streams[modality](features)

    def forward(self, query: torch.Tensor, gallery: torch.Tensor, direction: str) -> dict:
        """The stream outputs h_query (B, D), h_gallery (B, k, D) and the head's logits (B, k)."""
        out = super().forward(query, gallery, direction)
        out["logits"] = self.head(out["h_query"], out["h_gallery"])
        return out

    def train_step(self, batch, optimizers: dict, ctx) -> dict[str, float]:
        """Cross-entropy of the k-way softmax on the positive's position (``batch.label``)."""
        out = ctx.forward(batch.query, batch.gallery, batch.direction)
        logits = out["logits"]
        terms = {
            "loss": F.cross_entropy(logits, batch.label),
            "accuracy": (logits.argmax(1) == batch.label).float().mean(),
        }
        return self.minimise(terms, optimizers)

    def head_scores(self, task, k, direction, h_query, h_gallery):
        """The head's logits (B, k) on matching lists of the k and direction it was trained on;
        None for any other list (another k or direction, verification, retrieval): SVHF-Net has
        no head for them."""
        if task != "matching" or k != self.k or direction != self.run_config.direction:
            return None
        return self.head(h_query, h_gallery)
