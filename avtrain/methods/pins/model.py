"""Learnable PINs (Nagrani, Albanie and Zisserman, "Learnable PINs: Cross-Modal Embeddings for Person
Identity", ECCV 2018) as a method on the seam.

Two streams (the paper's audio and visual branches here, then one linear layer each to
``embed_dim``), L2-normalised embeddings, and a contrastive loss on (voice, face) pairs: each
tuple's (query, positive) is a positive pair; its negative pair is the query with an item of the
gallery modality mined inside the batch, of a hardness τ that rises over training (curriculum
mining, avtrain.losses.contrastive). docs/methods.md, "pins", lists the departures from the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from avtrain.losses.contrastive import contrastive_loss, curriculum_hardness, mine_curriculum_negatives
from avtrain.methods.batch_views import positive_pairs, same_identity
from avtrain.methods.branches import BranchMethod
from avtrain.methods.encoders import FEATURE_DIM, init_weights


@dataclass
class PINsOptions:
    """``--set pins.KEY=VALUE``. The margin and the τ schedule: docs/methods.md, "pins"."""

    embed_dim: int = 128  # size of the joint embedding
    margin: float = 0.6  # contrastive margin on L2-normalised embeddings (distances in [0, 2])
    tau_start: float = 0.3  # hardness of the mined negative at the start: 0 easiest, 1 hardest
    tau_end: float = 0.8  # ... at most (never always the very hardest)
    tau_increment: float = 0.1  # τ rises by this ...
    tau_every: int = 500  # ... every this many training steps

    def __post_init__(self):
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim: must be >= 1, got {self.embed_dim}")
        if not 0 < self.margin <= 2:
            raise ValueError(f"margin: must be in (0, 2] (distances of unit vectors), got {self.margin}")
        for key in ("tau_start", "tau_end", "tau_increment"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"{key}: must be in [0, 1], got {getattr(self, key)}")
        if self.tau_end < self.tau_start:
            raise ValueError(f"tau_end: must be >= tau_start ({self.tau_start}), got {self.tau_end}")
        if self.tau_every < 1:
            raise ValueError(f"tau_every: must be >= 1, got {self.tau_every}")


class UnitEmbedding(nn.Module):
    """3200-d branch features -> L2-normalised embedding (one linear layer)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(FEATURE_DIM, dim)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(f), p=2, dim=1)


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.sum() / max(x.numel(), 1)  # 0 for no pairs instead of NaN


class LearnablePINs(BranchMethod):
    """Voice and face streams into one L2-normalised space; contrastive loss with curriculum mining.

    ``steps_taken`` (a buffer, so saved in every checkpoint and restored on resume) counts the
    training steps the τ schedule reads."""

    name = "pins"
    Options = PINsOptions
    default_score = "l2"  # the paper ranks by distance; on unit vectors cosine ranks the same
    log_terms = ("loss", "tau", "d_pos", "d_neg")

    def __init__(self, cfg, labels=None):
        super().__init__(cfg, labels)
        self.opts = opts = self.options or PINsOptions()  # built outside a run: the defaults
        self.embed_dim = opts.embed_dim
        self.audio_head = UnitEmbedding(opts.embed_dim)
        self.face_head = UnitEmbedding(opts.embed_dim)
        init_weights(self)
        self.register_buffer("steps_taken", torch.zeros((), dtype=torch.long))

    def embedding(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        """(N, 3200) branch features -> this modality's embedding (``audio_head`` / ``face_head``)."""
        return (self.audio_head if modality == "audio" else self.face_head)(features)

    @property
    def hardness(self) -> float:
        """τ of the next training step."""
        o = self.opts
        return curriculum_hardness(
            int(self.steps_taken), o.tau_start, o.tau_end, o.tau_increment, o.tau_every
        )

    def train_step(self, batch, optimizers, ctx) -> dict[str, float]:
        """Positive pairs (query, its positive); for each, the in-batch gallery-modality item of
        hardness τ among those of another identity (any tuple's gallery, the own tuple's negatives
        included) as its negative; one Adam step on the contrastive loss."""
        tau = self.hardness
        out = ctx.forward(batch.query, batch.gallery, batch.direction)
        h_query, h_gallery = out["h_query"], out["h_gallery"]  # (B, D), (B, k, D)
        rows, index = positive_pairs(batch)
        anchors, positives = h_query[rows], h_gallery[rows, index]
        candidates = h_gallery.flatten(0, 1)  # (B * k, D): tuple j's item g at j * k + g
        mined = mine_curriculum_negatives(anchors, candidates, same_identity(batch)[rows], tau)
        terms = contrastive_loss(
            anchors, positives, candidates[mined["index"]], self.opts.margin, mined["valid"]
        )
        terms["tau"] = torch.tensor(tau, dtype=torch.float64)  # logged as 0.3, not 0.30000001
        terms["d_pos"] = _mean(terms["d_pos"])
        terms["d_neg"] = _mean(terms["d_neg"][mined["valid"]])
        self.steps_taken += 1
        return self.minimise(terms, optimizers)
