"""Learnable PINs' objective: a contrastive loss on (voice, face) pairs whose negatives are mined
inside the batch by a curriculum of rising hardness.

Three steps, each its own function so that a test can check it by hand:

* :func:`curriculum_hardness`: the hardness τ of the negatives at a training step;
* :func:`mine_curriculum_negatives`: for each positive pair's anchor, the in-batch negative of
  hardness τ (never one of the anchor's own identity);
* :func:`contrastive_loss`: the loss on the positive pairs and the mined negative pairs, as named
  per-pair terms, then one reduction (pytorch-metric-learning style, like losses/metric.py).

Embeddings are L2-normalised (distances in [0, 2]). Defaults are margin 0.6 and τ rising from
0.3 by 0.1 every 500 steps up to 0.8; where they come from is in docs/methods.md, "pins".
"""

from __future__ import annotations

import math

import torch

from avtrain.losses.metric import euclidean

# floor(τ (n - 1)) of a τ like 0.3 + 4 * 0.1 = 0.7000000000000001 or 0.7999999999999999: the
# rank must not depend on how τ was summed, so ranks within this of an integer round to it
_RANK_TOLERANCE = 1e-6


def curriculum_hardness(
    step: int, start: float = 0.3, end: float = 0.8, increment: float = 0.1, every: int = 500
) -> float:
    """τ after ``step`` training steps: ``start`` + ``increment`` for every ``every`` steps
    taken, at most ``end``. τ = 0 picks the easiest in-batch negative, τ = 1 the hardest."""
    if every < 1:
        raise ValueError(f"every: must be >= 1, got {every}")
    return min(end, start + increment * (step // every))


def mine_curriculum_negatives(
    anchors: torch.Tensor, candidates: torch.Tensor, excluded: torch.Tensor, tau: float
) -> dict:
    """For each anchor, the candidate of hardness ``tau`` among those it may be paired with.

    anchors (P, D); candidates (M, D), the batch's items of the other modality; excluded (P, M)
    bool, True where the candidate is the anchor's own identity (never a negative). An anchor's
    n allowed candidates are ordered from the easiest (farthest) to the hardest (nearest); it gets
    the one at rank floor(τ (n - 1)): τ = 0 the farthest, τ = 1 the nearest. Ties keep the
    candidates' order. Mining is a choice, not part of the objective: it runs on detached
    distances.

    Returns index (P,) into candidates, valid (P,) (False for an anchor with no allowed candidate;
    its index is then meaningless), rank (P,), count (P,) = n.
    """
    with torch.no_grad():
        d = euclidean(anchors.detach().unsqueeze(1), candidates.detach().unsqueeze(0))  # (P, M)
        # excluded ones sort last (-inf), after every allowed candidate
        order = torch.sort(d.masked_fill(excluded, -math.inf), dim=1, descending=True, stable=True).indices
        count = (~excluded).sum(1)
        rank = torch.floor(tau * (count - 1).clamp_min(0).double() + _RANK_TOLERANCE).long()
        index = order.gather(1, rank.unsqueeze(1)).squeeze(1)
    return {"index": index, "valid": count > 0, "rank": rank, "count": count}


def contrastive_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    margin: float = 0.6,
    valid: torch.Tensor | None = None,
) -> dict:
    """The contrastive loss (Hadsell, Chopra and LeCun 2006) that Learnable PINs train with, on P
    positive pairs (anchor_i, positive_i) and P negative pairs (anchor_i, negative_i):

      pull_i = d(anchor_i, positive_i)^2                     (pull the same person together)
      push_i = max(0, margin - d(anchor_i, negative_i))^2    (push others beyond the margin)
      loss   = (sum_i pull_i + sum_{i valid} push_i) / (2 N),  N = P + #valid pairs

    i.e. the mean over all N pairs of 1/2 [y d^2 + (1 - y) max(0, m - d)^2]. ``valid`` (P,) marks
    the anchors that have a negative (default: all); the others contribute their positive pair
    only. Shapes (P, D). Returns pull (P,), push (P,) (0 where not valid), d_pos (P,), d_neg (P,),
    loss; with P = 0 the loss is 0 (still connected to the inputs' graph).
    """
    if valid is None:
        valid = torch.ones(anchor.shape[0], dtype=torch.bool, device=anchor.device)
    d_pos = euclidean(anchor, positive)
    d_neg = euclidean(anchor, negative)
    pull = d_pos.pow(2)
    push = (margin - d_neg).clamp_min(0.0).pow(2) * valid
    pairs = anchor.shape[0] + int(valid.sum())
    loss = (pull.sum() + push.sum()) / (2 * max(pairs, 1))
    return {"pull": pull, "push": push, "d_pos": d_pos, "d_neg": d_neg, "loss": loss}
