"""FOP (Saeed, Khan, Nawaz, Yousaf and Del Bue, "Fusion and Orthogonal Projection for Improved
Face-Voice Association", ICASSP 2022; the FAME challenge baseline) as a method on the seam.

Each modality -> an embedding (linear, BatchNorm, ReLU, dropout, L2 normalisation, then tanh);
a gated multimodal fusion of a same-identity (voice, face) pair into one fused embedding;
softmax identity classification of the fused embedding plus alpha times the orthogonal
projection loss on it (avtrain.losses.orthogonal). Voices and faces are scored by the Euclidean
distance of their per-modality embeddings, as FOP's evaluation does. Layer for layer as the
authors' code (github.com/msaadsaeed/FOP, retrieval_model.py), on avmatch's branches instead of
pre-extracted VGGFace / utterance-level features; docs/methods.md, "fop", lists the departures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from avtrain.losses.orthogonal import orthogonal_projection_loss
from avtrain.methods.batch_views import positive_pairs
from avtrain.methods.branches import BranchMethod
from avtrain.methods.encoders import FEATURE_DIM, init_weights, modalities_of


@dataclass
class FOPOptions:
    """``--set fop.KEY=VALUE``; defaults are FOP's (its README's gated-fusion command and code)."""

    embed_dim: int = 128  # per-modality and fused embedding size (--dim_embed 128)
    alpha: float = 1.0  # weight of OPL beside the softmax loss
    opl_gamma: float = 0.7  # weight of OPL's different-class term (FOP's code; OPL's paper 0.5)
    embed_dropout: float = 0.5  # dropout after each modality's linear layer (make_fc_1d)
    gate_hidden: int = 128  # hidden size of the fusion gate (mid_att_dim)

    def __post_init__(self):
        for key in ("embed_dim", "gate_hidden"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("alpha", "opl_gamma"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{key}: must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.embed_dropout < 1:
            raise ValueError(f"embed_dropout: must be in [0, 1), got {self.embed_dropout}")


class FOPStream(nn.Module):
    """3200-d branch features -> e = L2-normalised (linear, BatchNorm, ReLU, dropout); the
    modality's embedding is tanh(e) (FOP applies the tanh inside its fusion layer and scores
    the tanh'd embeddings)."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(FEATURE_DIM, dim), nn.BatchNorm1d(dim), nn.ReLU(), nn.Dropout(dropout)
        )

    def normalised(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.layers(f), p=2, dim=1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.normalised(f))


class GatedFusion(nn.Module):
    """Gated multimodal fusion: g = sigmoid(MLP([e_face, e_voice])) per dimension,
    fused = g * tanh(e_face) + (1 - g) * tanh(e_voice). The MLP is linear, BatchNorm, ReLU,
    linear (FOP's Forward_Block with dropout 0, then nn.Linear)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Sequential(
            nn.Linear(2 * dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim)
        )

    def forward(self, e_face: torch.Tensor, e_voice: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([e_face, e_voice], dim=1)))
        return g * torch.tanh(e_face) + (1.0 - g) * torch.tanh(e_voice)


class FOP(BranchMethod):
    """Voice and face streams, gated fusion, identity classifier on the fused embedding."""

    name = "fop"
    Options = FOPOptions
    default_score = "l2"  # FOP's test: Euclidean norm of (face - voice) embeddings
    needs_labels = True
    log_terms = ("loss", "L_ce", "L_opl", "opl_same_cos", "opl_different_cos")

    def __init__(self, cfg, labels=None):
        super().__init__(cfg, labels)
        if labels is None or labels.size("identity") == 0:
            raise ValueError(
                "fop classifies the training identities: build it with the run's LabelSpace "
                "(fit and checkpoints pass it; Method.needs_labels)"
            )
        self.opts = opts = self.options or FOPOptions()  # built outside a run: the defaults
        self.embed_dim = opts.embed_dim
        self.audio_head = FOPStream(opts.embed_dim, opts.embed_dropout)
        self.face_head = FOPStream(opts.embed_dim, opts.embed_dropout)
        self.fusion = GatedFusion(opts.embed_dim, opts.gate_hidden)
        self.classifier = nn.Linear(opts.embed_dim, labels.size("identity"))
        init_weights(self)

    def embedding(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        """(N, 3200) branch features -> this modality's embedding (``audio_head`` / ``face_head``)."""
        return (self.audio_head if modality == "audio" else self.face_head)(features)

    def forward(self, voice: torch.Tensor, face: torch.Tensor) -> dict:
        """Same-identity (voice (P, 1, 224, 125), face (P, 3, 224, 224)) -> fused (P, D) and
        identity logits (P, classes)."""
        e_voice = self.audio_head.normalised(self.features("audio", voice))
        e_face = self.face_head.normalised(self.features("face", face))
        fused = self.fusion(e_face, e_voice)
        return {"fused": fused, "logits": self.classifier(fused)}

    def train_step(self, batch, optimizers, ctx) -> dict[str, float]:
        """One Adam step on CE(identity | fused) + alpha * OPL(fused) over the batch's
        same-identity (query, positive) pairs. A batch with fewer than two such pairs (possible
        only with verification tuples) is skipped: BatchNorm needs two."""
        rows, index = positive_pairs(batch)
        if len(rows) < 2:
            return {"pairs": float(len(rows))}
        gallery = batch.gallery.unsqueeze(1) if batch.gallery.dim() == 4 else batch.gallery
        query, positive = batch.query[rows], gallery[rows, index]
        voice, face = (query, positive) if modalities_of(batch.direction)[0] == "audio" else (positive, query)
        out = ctx.forward(voice, face)
        classes = batch.classes("identity")[0][rows]  # -1: an identity outside the label space
        ce = F.cross_entropy(out["logits"], classes, ignore_index=-1, reduction="none")  # 0 where -1
        opl = orthogonal_projection_loss(out["fused"], classes, self.opts.opl_gamma)
        terms = {
            "L_ce": ce.sum() / (classes >= 0).sum().clamp_min(1),
            "L_opl": opl["loss"],
            "opl_same_cos": opl["positive_mean"],
            "opl_different_cos": opl["negative_mean"],
        }
        terms["loss"] = terms["L_ce"] + self.opts.alpha * terms["L_opl"]
        return self.minimise(terms, optimizers)
