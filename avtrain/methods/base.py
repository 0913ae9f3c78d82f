"""The seam every method sits on: what the trainer, evaluation, serving and checkpoints may ask of a
model, and nothing else (they never name a method).

A method is an ``nn.Module`` subclass of :class:`Method` that

* is built from the run's :class:`~avtrain.run.config.TrainConfig` (and, when it classifies
  identities or attributes, the run's :class:`LabelSpace`): ``Method(cfg, labels)``;
* names its optimisers and parameter groups (:meth:`Method.optimizers`; the first one follows
  the run's LR schedule, all are saved in every checkpoint under their names);
* takes one training step on a :class:`Batch` and returns its named loss terms as floats
  (:meth:`Method.train_step`); the first of :attr:`Method.log_terms` is the one the progress bar
  shows;
* embeds one modality: ``embed("audio" | "face", x) -> (N, embed_dim)``;
* may score with a learned head (:meth:`Method.head_scores`), and says which scoring rule
  evaluation uses by default (:attr:`Method.default_score`: ``l2``, ``cosine`` or ``head``).

Settings of its own live in a dataclass (:attr:`Method.Options`), the config section named after
the method (``--set pins.margin=0.5``); they are saved with the run's config in every checkpoint.
Add a method: one folder under ``avtrain/methods/`` and one line in ``avtrain/methods/__init__.py``
(CONTRIBUTING.md, "Add a method").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from avtrain.methods.encoders import MODALITIES, modalities_of

SCORE_RULES = ("l2", "cosine", "head")  # evaluate --score; "l2" is -Euclidean distance


@dataclass
class LabelSpace:
    """The classes a method that classifies may predict, fixed at the start of a run and saved in
    its checkpoints (``state["labels"]``): ``classes[name]`` is the sorted list of values of
    ``name`` (``identity`` always; ``gender``/``nationality`` when the tuples carry them) and
    ``attributes[identity][name]`` an identity's value of each attribute."""

    classes: dict[str, list[str]] = field(default_factory=dict)
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)

    def size(self, name: str) -> int:
        return len(self.classes.get(name, ()))

    def index(self, name: str, values) -> torch.Tensor:
        """Class indices of ``values`` (a list, or a list of lists) of label ``name``; -1 for a value
        outside the space (an identity not trained on): losses ignore it."""
        lookup = {v: i for i, v in enumerate(self.classes.get(name, ()))}
        if name != "identity":
            values = _map_nested(values, lambda ident: self.attributes.get(ident, {}).get(name, ""))
        return torch.tensor(_map_nested(values, lambda v: lookup.get(v, -1)), dtype=torch.long)

    def to_dict(self) -> dict:
        return {"classes": self.classes, "attributes": self.attributes}

    @classmethod
    def from_dict(cls, d: dict) -> LabelSpace:
        return cls(dict(d.get("classes", {})), dict(d.get("attributes", {})))


def _map_nested(values, fn):
    return [_map_nested(v, fn) if isinstance(v, (list, tuple)) else fn(v) for v in values]


@dataclass
class Batch:
    """One training batch on the device. query (B, C, H, W); gallery (B, k, C', H', W');
    label (B,): the positive's gallery index (matching/retrieval) or 1 = same identity
    (verification); identities: each member's identity name (query (B,), gallery (B, k));
    ``labels``: the run's LabelSpace, to turn those names into class indices."""

    query: torch.Tensor
    gallery: torch.Tensor
    label: torch.Tensor
    direction: str
    query_identities: list[str] = field(default_factory=list)
    gallery_identities: list[list[str]] = field(default_factory=list)
    labels: LabelSpace | None = None

    def classes(self, name: str = "identity") -> tuple[torch.Tensor, torch.Tensor]:
        """(query (B,), gallery (B, k)) class indices of label ``name`` on the batch's device."""
        if self.labels is None:
            raise ValueError("this method needs the run's LabelSpace (Method.needs_labels)")
        dev = self.label.device
        return (
            self.labels.index(name, self.query_identities).to(dev),
            self.labels.index(name, self.gallery_identities).to(dev),
        )


@dataclass
class StepContext:
    """What a training step gets from the loop besides the batch: ``net`` is the module to
    forward (the method itself, or its DistributedDataParallel wrapper), ``autocast`` the
    mixed-precision context, ``average_grads`` (DDP only) averages the gradients of parameters
    outside DDP (:meth:`Method.ddp_ignored`) across ranks, ``d_steps`` the run's T."""

    net: Callable
    autocast: contextlib.AbstractContextManager | None = None
    average_grads: Callable | None = None
    d_steps: int = 1

    def forward(self, *args) -> dict:
        """``net(*args)`` under autocast, tensor outputs as float32 (the losses' precision)."""
        with self.autocast if self.autocast is not None else contextlib.nullcontext():
            out = self.net(*args)
        return {k: (v.float() if torch.is_tensor(v) else v) for k, v in out.items()}


class Method(nn.Module):
    """Base of every method; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    Options: ClassVar[type | None] = None  # dataclass of the method's own settings, or None
    default_score: ClassVar[str] = "l2"
    log_terms: ClassVar[tuple[str, ...]] = ("loss",)
    needs_labels: ClassVar[bool] = False  # trains on identity (or attribute) classes
    optimizer_names: ClassVar[tuple[str, ...]] = ("opt_g",)  # the keys optimizers() returns, in order
    embed_dim: int = 128

    def __init__(self, cfg, labels: LabelSpace | None = None):
        super().__init__()
        self.run_config = cfg
        self.labels = labels

    @property
    def options(self):
        """This method's settings (the config section named after it), or None."""
        return getattr(self.run_config, "options", None)

    # -- training
    def optimizers(self, cfg) -> dict[str, torch.optim.Optimizer]:
        """Named optimisers (keys start with ``opt_``); the first follows the LR schedule.
        Default: one Adam over every parameter at ``lr_start`` with the run's weight decay."""
        return {"opt_g": torch.optim.Adam(self.parameters(), lr=cfg.lr_start, weight_decay=cfg.weight_decay)}

    def train_step(self, batch: Batch, optimizers: dict, ctx: StepContext) -> dict[str, float]:
        raise NotImplementedError

    def minimise(self, terms: dict, optimizers: dict, objective: str = "loss") -> dict[str, float]:
        """One step of every optimiser on ``terms[objective]``; the terms of
        :attr:`log_terms` as floats (for single-objective methods)."""
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        terms[objective].backward()
        for opt in optimizers.values():
            opt.step()
        return {k: float(terms[k].detach()) for k in self.log_terms}

    def ddp_ignored(self) -> list[str]:
        """Parameter names DistributedDataParallel must leave alone (a part with its own backward
        pass, e.g. AML's discriminator); the step averages their gradients itself."""
        return []

    # -- embedding and scoring
    def forward(self, query: torch.Tensor, gallery: torch.Tensor, direction: str) -> dict:
        """Default forward for training: h_query (B, D), h_gallery (B, k, D), direction."""
        q_mod, g_mod = modalities_of(direction)
        if gallery.dim() == 4:
            gallery = gallery.unsqueeze(1)
        B, k = gallery.shape[:2]
        h_query = self.embed(q_mod, query)
        h_gallery = self.embed(g_mod, gallery.flatten(0, 1)).view(B, k, -1)
        return {"h_query": h_query, "h_gallery": h_gallery, "direction": direction}

    def embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) normalised inputs of ``modality`` -> (N, embed_dim) embeddings."""
        raise NotImplementedError

    def features(self, modality: str, x: torch.Tensor) -> torch.Tensor | None:
        """Optional (N, F) features before the embedding layers, for the report's diagnostics
        (AML: the 3200-d branch output before the generator); None if the method has none."""
        return None

    def embed_with_features(self, modality: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(embeddings, diagnostic features or None); a method whose features are a step of its
        embedding overrides this to compute both in one pass."""
        return self.embed(modality, x), self.features(modality, x)

    def head_scores(
        self, task: str, k: int, direction: str, h_query: torch.Tensor, h_gallery: torch.Tensor
    ) -> torch.Tensor | None:
        """Scores of a learned head (higher = more likely the same person), or None where the
        method has no head for this task, k and direction. matching: h_query (B, D), h_gallery
        (B, k, D) -> (B, k); verification: h_query (B, D), h_gallery (B, D) -> (B,); retrieval:
        h_query (Q, 1, D), h_gallery (1, G, D) -> (Q, G)."""
        return None


def check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
