"""The baselines' losses against values worked out by hand on tiny 2-D inputs: Learnable PINs'
contrastive loss and curriculum mining (losses/contrastive.py), FOP's orthogonal projection loss
(losses/orthogonal.py), and the in-batch pairs both read (methods/batch_views.py)."""

from __future__ import annotations

import math

import pytest
import torch

from avtrain.losses.contrastive import contrastive_loss, curriculum_hardness, mine_curriculum_negatives
from avtrain.losses.orthogonal import orthogonal_projection_loss
from avtrain.methods.base import Batch
from avtrain.methods.batch_views import positive_index, positive_pairs, same_identity

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------ contrastive loss


def test_contrastive_one_positive_and_one_negative_pair():
    # anchor (0,0), positive (0.3,0.4): d_pos = 0.5, pull = 0.25
    # negative (0,0.2): d_neg = 0.2 < margin 0.6, push = (0.6 - 0.2)^2 = 0.16
    # loss = (0.25 + 0.16) / (2 * 2 pairs) = 0.1025
    out = contrastive_loss(t([0.0, 0.0]), t([0.3, 0.4]), t([0.0, 0.2]), margin=0.6)
    assert out["d_pos"].item() == pytest.approx(0.5)
    assert out["d_neg"].item() == pytest.approx(0.2)
    assert out["pull"].item() == pytest.approx(0.25)
    assert out["push"].item() == pytest.approx(0.16)
    assert out["loss"].item() == pytest.approx(0.1025)


def test_contrastive_negative_beyond_the_margin_costs_nothing():
    # negative (0.8,0.6) at d = 1 > 0.6: push = max(0, 0.6 - 1)^2 = 0; loss = 0.25 / 4 = 0.0625
    out = contrastive_loss(t([0.0, 0.0]), t([0.3, 0.4]), t([0.8, 0.6]), margin=0.6)
    assert out["push"].item() == 0.0
    assert out["loss"].item() == pytest.approx(0.0625)


def test_contrastive_anchor_without_negative_counts_its_positive_pair_only():
    # pair 1 as above (pull 0.25, push 0.16); pair 2: anchor (1,0), positive (1,0.1): d = 0.1,
    # pull = 0.01, no negative (valid False; its candidate (1,0) would have pushed 0.36).
    # N = 2 positive + 1 negative pairs: loss = (0.25 + 0.01 + 0.16) / (2 * 3) = 0.07
    anchor, positive = t([0.0, 0.0], [1.0, 0.0]), t([0.3, 0.4], [1.0, 0.1])
    negative = t([0.0, 0.2], [1.0, 0.0])
    out = contrastive_loss(anchor, positive, negative, margin=0.6, valid=torch.tensor([True, False]))
    assert out["pull"].tolist() == pytest.approx([0.25, 0.01])
    assert out["push"].tolist() == pytest.approx([0.16, 0.0])
    assert out["loss"].item() == pytest.approx(0.07)


def test_contrastive_no_pairs_is_zero_not_nan():
    empty = torch.zeros(0, 2, dtype=torch.float64, requires_grad=True)
    out = contrastive_loss(empty, empty, empty)
    assert out["loss"].item() == 0.0
    out["loss"].backward()  # still part of the graph: a step on a batch without pairs does not fail


# ------------------------------------------------------------------ curriculum mining


def test_curriculum_hardness_schedule():
    # τ = 0.3 + 0.1 * floor(step / 500), at most 0.8
    assert curriculum_hardness(0) == pytest.approx(0.3)
    assert curriculum_hardness(499) == pytest.approx(0.3)
    assert curriculum_hardness(500) == pytest.approx(0.4)
    assert curriculum_hardness(1999) == pytest.approx(0.6)
    assert curriculum_hardness(2500) == pytest.approx(0.8)
    assert curriculum_hardness(10**6) == pytest.approx(0.8)  # capped at tau_end
    assert curriculum_hardness(7, start=0.0, end=1.0, increment=0.25, every=2) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="every"):
        curriculum_hardness(0, every=0)


# One anchor at (0,0) and five candidates, distances to it:
#   c0 (1,0): 1.0   c1 (0,0.5): 0.5   c2 (0,0.2): 0.2   c3 (0,0.7): 0.7   c4 (0.1,0): 0.1 (same identity)
# Allowed, easiest (farthest) to hardest (nearest): c0, c3, c1, c2; n = 4, rank = floor(τ * 3).
ANCHOR = t([0.0, 0.0])
CANDIDATES = t([1.0, 0.0], [0.0, 0.5], [0.0, 0.2], [0.0, 0.7], [0.1, 0.0])
EXCLUDED = torch.tensor([[False, False, False, False, True]])


@pytest.mark.parametrize(
    "tau, rank, chosen",
    [
        (0.0, 0, 0),  # floor(0)   = 0: c0, the farthest
        (0.3, 0, 0),  # floor(0.9) = 0: c0
        (0.4, 1, 3),  # floor(1.2) = 1: c3
        (0.7, 2, 1),  # floor(2.1) = 2: c1
        (0.8, 2, 1),  # floor(2.4) = 2: c1
        (1.0, 3, 2),  # floor(3)   = 3: c2, the nearest allowed; never c4 (same identity), though nearer
    ],
)
def test_mining_picks_the_negative_of_hardness_tau(tau, rank, chosen):
    mined = mine_curriculum_negatives(ANCHOR, CANDIDATES, EXCLUDED, tau)
    assert mined["count"].tolist() == [4]
    assert mined["rank"].tolist() == [rank]
    assert mined["index"].tolist() == [chosen]
    assert mined["valid"].tolist() == [True]


def test_mining_at_a_schedule_point():
    # step 1000 of the default schedule: τ = 0.3 + 2 * 0.1 = 0.5, rank floor(1.5) = 1: c3 (d 0.7);
    # step 2000: τ = 0.3 + 4 * 0.1 = 0.7, rank floor(2.1) = 2: c1 (d 0.5)
    early = mine_curriculum_negatives(ANCHOR, CANDIDATES, EXCLUDED, curriculum_hardness(1000))
    late = mine_curriculum_negatives(ANCHOR, CANDIDATES, EXCLUDED, curriculum_hardness(2000))
    assert early["index"].tolist() == [3]
    assert late["index"].tolist() == [1]


def test_mining_rank_does_not_depend_on_float_sums():
    # 11 allowed candidates at distances 1.0, 0.9, ..., 0.0 (index i at 1 - i/10): rank floor(τ * 10)
    # is the candidate's index. τ = 0.7 written as 0.7 or 0.1 * 7 (0.7000000000000001): rank 7;
    # τ = 0.8 summed as 0.7 + 0.1 (0.7999999999999999, so 7.999999999999999 before the floor): rank 8
    cands = torch.stack([torch.tensor([1.0 - i / 10, 0.0], dtype=torch.float64) for i in range(11)])
    none = torch.zeros(1, 11, dtype=torch.bool)
    for tau in (0.7, 0.1 * 7):
        assert mine_curriculum_negatives(ANCHOR, cands, none, tau)["index"].tolist() == [7]
    for tau in (0.8, 0.7 + 0.1):
        assert mine_curriculum_negatives(ANCHOR, cands, none, tau)["index"].tolist() == [8]


def test_mining_anchor_without_allowed_candidates_is_not_valid():
    mined = mine_curriculum_negatives(ANCHOR, CANDIDATES, torch.ones(1, 5, dtype=torch.bool), 0.5)
    assert mined["valid"].tolist() == [False] and mined["count"].tolist() == [0]


def test_mining_is_not_differentiated():
    anchors = ANCHOR.clone().requires_grad_()
    mined = mine_curriculum_negatives(anchors, CANDIDATES, EXCLUDED, 0.5)
    assert not mined["index"].requires_grad


# ------------------------------------------------------------------ in-batch pairs


def batch_of(labels, q_ids, g_ids, k):
    B = len(labels)
    gallery = torch.zeros(B, k, 1, 2, 2) if k > 1 else torch.zeros(B, 1, 2, 2)
    return Batch(torch.zeros(B, 1, 2, 2), gallery, torch.tensor(labels), "a2v", q_ids, g_ids)


def test_same_identity_from_names_and_own_positive():
    # tuple 0: query a, gallery [a, c], positive 0; tuple 1: query b, gallery [d, b], positive 1.
    # gallery flattened: [a, c, d, b] (tuple j, position g at 2j + g)
    b = batch_of([0, 1], ["a", "b"], [["a", "c"], ["d", "b"]], k=2)
    assert same_identity(b).tolist() == [[True, False, False, False], [False, False, False, True]]
    rows, index = positive_pairs(b)
    assert rows.tolist() == [0, 1] and index.tolist() == [0, 1]
    # tuple 1's query is also in tuple 0's gallery (position 1): never its negative
    b = batch_of([0, 1], ["a", "c"], [["a", "c"], ["d", "c"]], k=2)
    assert same_identity(b).tolist() == [[True, False, False, False], [False, True, False, True]]


def test_same_identity_without_names_keeps_only_own_positives():
    # tuple 0's positive at position 1 (column 0 * 2 + 1), tuple 1's at 0 (column 1 * 2 + 0); other
    # tuples' items count as other people, as in Learnable PINs' unlabelled training
    b = batch_of([1, 0], ["", ""], [["", ""], ["", ""]], k=2)
    assert same_identity(b).tolist() == [[False, True, False, False], [False, False, True, False]]


def test_verification_pairs_are_the_same_person_tuples():
    # k = 1: label 1 = same person (a positive at index 0), label 0 = two people (no positive)
    b = batch_of([1, 0, 1], ["a", "b", "c"], [["a"], ["x"], ["c"]], k=1)
    assert positive_index(b).tolist() == [0, -1, 0]
    rows, index = positive_pairs(b)
    assert rows.tolist() == [0, 2] and index.tolist() == [0, 0]
    assert same_identity(b).tolist() == [[True, False, False], [False, False, False], [False, False, True]]


# ------------------------------------------------------------------ orthogonal projection


# f0 (1,0) and f1 (0.6,0.8) of class 0; f2 (0,2) -> (0,1) and f3 (-1,0) of class 1. Cosines:
#   f0.f1 = 0.6   f0.f2 = 0   f0.f3 = -1   f1.f2 = 0.8   f1.f3 = -0.6   f2.f3 = 0
# same class, both orders: (0,1) (1,0): 0.6; (2,3) (3,2): 0       -> s = 1.2 / 4 = 0.3
# different class: |0| + |-1| + |0.8| + |-0.6| = 2.4, both orders -> d = 4.8 / 8 = 0.6
FEATS = t([1.0, 0.0], [0.6, 0.8], [0.0, 2.0], [-1.0, 0.0])
CLASSES = torch.tensor([0, 0, 1, 1])


def test_opl_by_hand():
    out = orthogonal_projection_loss(FEATS, CLASSES, gamma=0.7)
    assert out["positive_mean"].item() == pytest.approx(0.3)
    assert out["negative_mean"].item() == pytest.approx(0.6)
    # L = (1 - 0.3) + 0.7 * 0.6 = 0.7 + 0.42 = 1.12
    assert out["loss"].item() == pytest.approx(1.12)
    assert out["cos"][1, 2].item() == pytest.approx(0.8)
    assert int(out["same_pair"].sum()) == 4 and int(out["different_pair"].sum()) == 8
    # OPL's own weight: 0.7 + 0.5 * 0.6 = 1.0
    assert orthogonal_projection_loss(FEATS, CLASSES, gamma=0.5)["loss"].item() == pytest.approx(1.0)


def test_opl_unknown_class_takes_part_in_no_pair():
    feats = torch.cat([FEATS, t([1.0, 0.0])])  # a copy of f0 of class -1: would make s and d move
    out = orthogonal_projection_loss(feats, torch.tensor([0, 0, 1, 1, -1]), gamma=0.7)
    assert out["loss"].item() == pytest.approx(1.12)


def test_opl_without_same_class_pairs():
    # f0 (1,0) class 0, f2 (0,1) class 1, f3 (-1,0) class 2: no same-class pair, s = 0;
    # different: |0| + |-1| + |0|, both orders -> d = 2 / 6 = 1/3; L = 1 + 0.7 / 3 = 1.2333333
    out = orthogonal_projection_loss(FEATS[[0, 2, 3]], torch.tensor([0, 1, 2]), gamma=0.7)
    assert out["positive_mean"].item() == 0.0
    assert out["loss"].item() == pytest.approx(1 + 0.7 / 3)
    assert not math.isnan(out["loss"].item())
