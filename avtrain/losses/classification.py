"""Softmax classification of items into a label space (identities, genders, nationalities), for
methods that learn embeddings by classifying them (ssnet, dimnet)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def softmax_loss(logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """Softmax cross-entropy per item: ``nll`` = -log softmax(logits_i)[y_i] (0 for an item whose
    target is -1, i.e. outside the label space), ``valid`` and ``loss`` = the mean of ``nll``
    over the valid items (0, with zero gradients, when there are none: F.cross_entropy's own
    ignore_index would give NaN then). logits (N, C), targets (N,)."""
    valid = targets >= 0
    nll = F.cross_entropy(logits, targets.clamp_min(0), reduction="none") * valid
    return {"nll": nll, "valid": valid, "loss": nll.sum() / valid.sum().clamp_min(1)}
