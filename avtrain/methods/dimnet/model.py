"""DIMNet (Wen, Ismail, Liu, Raj, Singh, "Disjoint Mapping Network for Cross-modal Matching of
Voices and Faces", ICLR 2019), DIMNet-IGN, on avmatch's encoders.

Each modality is mapped into the embedding by its own network (the paper's branch, 3200-d, then a
linear layer to ``dimnet.embed_dim``); nothing compares a voice with a face during training.
Instead every embedding, voice or face, goes through the SAME covariate classifiers (one linear
softmax layer per covariate: identity, gender, nationality), and the loss is the weighted sum of
their cross-entropies (``dimnet.{identity,gender,nationality}_weight``, 1 each). Because both
modalities must be classified by the same weights, they end up in one space. Every item of a tuple
(query and gallery) is one classified sample. A covariate of weight 0 has no classifier (the
paper's DIMNet-I, -IG, -IN variants). Scored by cosine similarity of the embeddings
(``default_score = "cosine"``); no head.

Labels: identity classes are the training list's identities; gender and nationality are the
values ``avdata make-tuples`` records for them from the shards' meta file
(avtrain.train.data.label_space).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avtrain.losses import softmax_loss
from avtrain.methods.batch_views import every_item, item_classes
from avtrain.methods.branches import BranchMethod
from avtrain.methods.encoders import FEATURE_DIM, MODALITIES, init_weights
from avtrain.run.config import ConfigError

COVARIATES = ("identity", "gender", "nationality")  # LabelSpace names, in loss order


@dataclass
class Options:
    """``--set dimnet.KEY=VALUE``."""

    embed_dim: int = 128  # the shared embedding (AML's h size)
    identity_weight: float = 1.0  # weight of each covariate's cross-entropy in the sum
    gender_weight: float = 1.0
    nationality_weight: float = 1.0

    def __post_init__(self):
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {self.embed_dim}")
        for c in COVARIATES:
            if getattr(self, f"{c}_weight") < 0:
                raise ValueError(f"{c}_weight must be >= 0, got {getattr(self, f'{c}_weight')}")
        if not any(getattr(self, f"{c}_weight") > 0 for c in COVARIATES):
            raise ValueError("at least one of identity_weight, gender_weight, nationality_weight must be > 0")


class DIMNet(BranchMethod):
    """Branches, a linear embedding layer per modality and the shared covariate classifiers."""

    name = "dimnet"
    Options = Options
    default_score = "cosine"
    log_terms = ("loss", "L_identity", "L_gender", "L_nationality")  # of the covariates trained
    needs_labels = True

    def __init__(self, cfg, labels=None):
        super().__init__(cfg, labels)
        if labels is None:
            raise ValueError("dimnet classifies identities and attributes: it needs the run's LabelSpace")
        opts = self.options
        self.weights = {
            c: getattr(opts, f"{c}_weight") for c in COVARIATES if getattr(opts, f"{c}_weight") > 0
        }
        for c in self.weights:
            if labels.size(c) == 0:
                raise ConfigError(
                    f"dimnet.{c}_weight: the training list records no {c} of its identities (make-tuples "
                    f"records them from the shards' meta file: remake the training tuples, or --set "
                    f"dimnet.{c}_weight=0)"
                )
        self.log_terms = ("loss", *(f"L_{c}" for c in self.weights))
        self.embed_dim = opts.embed_dim
        self.embedders = nn.ModuleDict({m: nn.Linear(FEATURE_DIM, opts.embed_dim) for m in MODALITIES})
        self.classifiers = nn.ModuleDict({c: nn.Linear(opts.embed_dim, labels.size(c)) for c in self.weights})
        init_weights(self)

    def embedding(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        return self.embedders[modality](features)

    def forward(self, query: torch.Tensor, gallery: torch.Tensor, direction: str) -> dict:
        """h_query (B, D), h_gallery (B, k, D), and ``logits_COVARIATE``: every item's logits of
        each trained covariate, queries first (avtrain.methods.batch_views.every_item)."""
        out = super().forward(query, gallery, direction)
        h = every_item(out["h_query"], out["h_gallery"])
        for c, classifier in self.classifiers.items():
            out[f"logits_{c}"] = classifier(h)
        return out

    def train_step(self, batch, optimizers: dict, ctx) -> dict[str, float]:
        """L = sum over the trained covariates of weight * softmax cross-entropy, over every item
        whose identity (and attribute) is in the run's label space."""
        out = ctx.forward(batch.query, batch.gallery, batch.direction)
        terms = {
            f"L_{c}": softmax_loss(out[f"logits_{c}"], item_classes(batch, c))["loss"] for c in self.weights
        }
        terms["loss"] = sum(w * terms[f"L_{c}"] for c, w in self.weights.items())
        return self.minimise(terms, optimizers)
