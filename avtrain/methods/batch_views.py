"""What the baselines read off a training batch: every item with its class (methods that classify
items: ssnet, dimnet) and its same-identity (query, gallery item) pairs (methods that learn from
pairs rather than from whole tuples: Learnable PINs, FOP).

A batch of B tuples holds a query and a gallery of k items each. Its positive pairs are
(query i, its gallery's positive): for matching and retrieval tuples (k >= 2) the item at
``label[i]``; for verification tuples (k = 1) the one gallery item, when ``label[i] == 1``
(same person), and none otherwise.
"""

from __future__ import annotations

import torch

from avtrain.methods.base import Batch


def gallery_size(batch: Batch) -> int:
    """k of a batch (a verification gallery may come as (B, C, H, W): k = 1)."""
    return 1 if batch.gallery.dim() == 4 else batch.gallery.shape[1]


def positive_index(batch: Batch) -> torch.Tensor:
    """(B,) gallery index of each tuple's same-identity item, -1 where it has none (a verification
    tuple of two people)."""
    if gallery_size(batch) == 1:  # verification: label 1 = same person
        return torch.where(batch.label == 1, 0, -1)
    return batch.label


def positive_pairs(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows (P,), gallery index (P,)): the tuples that have a positive, and where it sits."""
    index = positive_index(batch)
    rows = torch.nonzero(index >= 0).flatten()
    return rows, index[rows]


def same_identity(batch: Batch) -> torch.Tensor:
    """(B, B * k) bool: whether query i and gallery item j * k + g of the batch (tuple j, position
    g; the order of ``gallery.flatten(0, 1)``) are the same person.

    Same where both identities are known ("" is unknown) and equal, and always for a tuple's own
    positive, so that a batch whose tuples do not name identities still never pairs a query with
    its own positive as a negative."""
    B, k = batch.label.shape[0], gallery_size(batch)
    same = torch.zeros(B, B * k, dtype=torch.bool)
    if batch.query_identities and batch.gallery_identities:
        flat = [ident for row in batch.gallery_identities for ident in row]
        for i, ident in enumerate(batch.query_identities):
            if ident:
                same[i] = torch.tensor([g == ident for g in flat], dtype=torch.bool)
    index = positive_index(batch).cpu()
    rows = torch.nonzero(index >= 0).flatten()
    same[rows, rows * k + index[rows]] = True
    return same.to(batch.label.device)


def every_item(h_query: torch.Tensor, h_gallery: torch.Tensor) -> torch.Tensor:
    """A batch's query (B, ...) and gallery (B, k, ...) rows as one (B + B*k, ...) stack: queries
    first, then each tuple's gallery in order (the order of :func:`item_classes`)."""
    return torch.cat([h_query, h_gallery.flatten(0, 1)])


def item_classes(batch: Batch, name: str) -> torch.Tensor:
    """(B + B*k,) class indices of label ``name`` of every item of the batch, in the order of
    :func:`every_item`; -1 for an item outside the run's label space."""
    query, gallery = batch.classes(name)
    return every_item(query, gallery)
