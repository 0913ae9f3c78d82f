"""SSNet (Nawaz, Janjua, Gallo, Mahmood, Calefati, "Deep Latent Space Learning for Cross-modal
Mapping of Audio and Visual Signals", DICTA 2019; the "SSNet" row of AML's Table III), on
avmatch's encoders.

The paper's two branches give 3200-d features per modality; ONE stream of fully connected layers,
shared by both modalities, maps either into the common embedding (``ssnet.hidden`` -> ReLU ->
``ssnet.embed_dim``). The embedding is trained only by classifying the training identities:
softmax cross-entropy through a linear classifier plus ``ssnet.center_weight`` (lambda) times the
center loss (Wen et al., ECCV 2016; avtrain.losses.center) with one center per identity, shared by
its voices and faces. Every item of a tuple (query and gallery) is one classified sample; pairs
are not used as pairs. The centers move by the center-loss paper's rule, c_j <- c_j - alpha *
delta_c_j, through their own optimiser (``opt_centers``: plain SGD at lr ``ssnet.center_alpha``).
Scored by distance in the embedding (``default_score = "l2"``); no head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avtrain.losses import center_loss, center_update, softmax_loss
from avtrain.methods.batch_views import every_item, item_classes
from avtrain.methods.branches import BranchMethod
from avtrain.methods.encoders import FEATURE_DIM, init_weights


@dataclass
class Options:
    """``--set ssnet.KEY=VALUE``."""

    hidden: int = 1024  # the shared stream's hidden layer
    embed_dim: int = 128  # the common embedding (AML's h size)
    center_weight: float = 0.003  # lambda: center loss against softmax (Wen et al.'s face setting)
    center_alpha: float = 0.5  # alpha: the centers' update rate (Wen et al.)

    def __post_init__(self):
        for key in ("hidden", "embed_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.center_weight < 0:
            raise ValueError(f"center_weight must be >= 0, got {self.center_weight}")
        if not 0 < self.center_alpha <= 1:
            raise ValueError(f"center_alpha must be in (0, 1], got {self.center_alpha}")


class SSNet(BranchMethod):
    """Branches, the shared stream, the identity classifier and the identity centers."""

    name = "ssnet"
    Options = Options
    default_score = "l2"
    log_terms = ("loss", "L_softmax", "L_center")
    needs_labels = True
    optimizer_names = ("opt_g", "opt_centers")

    def __init__(self, cfg, labels=None):
        super().__init__(cfg, labels)
        if labels is None or labels.size("identity") == 0:
            raise ValueError("ssnet classifies identities: it needs the run's LabelSpace")
        opts = self.options
        self.embed_dim = opts.embed_dim
        self.stream = nn.Sequential(
            nn.Linear(FEATURE_DIM, opts.hidden), nn.ReLU(), nn.Linear(opts.hidden, opts.embed_dim)
        )
        self.classifier = nn.Linear(opts.embed_dim, labels.size("identity"))
        init_weights(self)
        # one center per identity; Glorot like the center-loss paper's reference (its xavier filler)
        self.centers = nn.Parameter(torch.empty(labels.size("identity"), opts.embed_dim))
        nn.init.xavier_uniform_(self.centers)

    def embedding(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        return self.stream(features)  # the same stream whatever the modality

    def forward(self, query: torch.Tensor, gallery: torch.Tensor, direction: str) -> dict:
        """h_query (B, D), h_gallery (B, k, D), and ``h`` / ``logits``: every item's embedding and
        identity logits, queries first (avtrain.methods.batch_views.every_item)."""
        out = super().forward(query, gallery, direction)
        out["h"] = every_item(out["h_query"], out["h_gallery"])
        out["logits"] = self.classifier(out["h"])
        return out

    def optimizers(self, cfg) -> dict:
        network = [p for n, p in self.named_parameters() if n != "centers"]
        return {
            "opt_g": torch.optim.Adam(network, lr=cfg.lr_start, weight_decay=cfg.weight_decay),
            "opt_centers": torch.optim.SGD([self.centers], lr=self.options.center_alpha),
        }

    def ddp_ignored(self) -> list[str]:
        return ["centers"]  # moved by the paper's rule, not by a gradient DDP could average

    def train_step(self, batch, optimizers: dict, ctx) -> dict[str, float]:
        """L = L_softmax + lambda * L_center over every item with a training identity; then the
        centers' step c_j <- c_j - alpha * delta_c_j (set as their gradient for ``opt_centers``)."""
        out = ctx.forward(batch.query, batch.gallery, batch.direction)
        targets = item_classes(batch, "identity")
        softmax = softmax_loss(out["logits"], targets)
        center = center_loss(out["h"], targets, self.centers)
        loss = softmax["loss"] + self.options.center_weight * center["loss"]
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        self.centers.grad = center_update(out["h"], targets, self.centers)
        if ctx.average_grads is not None:
            ctx.average_grads([self.centers])
        for opt in optimizers.values():
            opt.step()
        return {
            "loss": float(loss.detach()),
            "L_softmax": float(softmax["loss"].detach()),
            "L_center": float(center["loss"].detach()),
        }
