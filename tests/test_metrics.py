"""avtrain.evaluation.metrics against hand-worked cases, naive loops and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from avtrain.evaluation.metrics import (
    bootstrap_ci,
    bootstrap_ci_pairs,
    equal_error_rate,
    gather_scores,
    matching_accuracy,
    mean_pair_distance,
    retrieval_metrics,
    retrieval_per_query,
    roc_auc,
    roc_curve,
    summarise,
)

# ----------------------------------------------------------------------------- matching


def test_matching_accuracy_hand_case_with_ties():
    scores = np.array(
        [
            [0.9, 0.1, 0.0],  # label 0: unique max at 0 -> correct under every rule
            [0.2, 0.8, 0.1],  # label 0: max at 1 -> wrong
            [0.5, 0.5, 0.1],  # label 0: 2-way tie {0,1}: first -> 0 correct; wrong -> 0; 1/2
            [0.3, 0.3, 0.3],  # label 2: 3-way tie: first -> 0 wrong; wrong -> 0; 1/3
        ]
    )
    labels = np.array([0, 0, 0, 2])
    assert matching_accuracy(scores, labels) == pytest.approx(2 / 4)  # default "first"
    assert matching_accuracy(scores, labels, ties="first") == pytest.approx(2 / 4)
    assert matching_accuracy(scores, labels, ties="wrong") == pytest.approx(1 / 4)
    assert matching_accuracy(scores, labels, ties="fractional") == pytest.approx((1 + 0 + 1 / 2 + 1 / 3) / 4)


def test_matching_accuracy_rejects_bad_input():
    with pytest.raises(ValueError):
        matching_accuracy(np.array([[np.nan, 1.0]]), np.array([0]))
    with pytest.raises(IndexError):
        matching_accuracy(np.array([[0.0, 1.0]]), np.array([2]))
    with pytest.raises(ValueError):
        matching_accuracy(np.array([[0.0, 1.0]]), np.array([0]), ties="random")


@pytest.mark.parametrize("kind", ["neg_l2", "cosine"])
def test_gather_scores_equals_naive_loop(kind):
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(7, 5)), rng.normal(size=(11, 5))
    qi = rng.integers(0, 7, size=23)
    gi = rng.integers(0, 11, size=(23, 4))
    naive = np.empty((23, 4))
    for t in range(23):
        for j in range(4):
            a, b = q[qi[t]], g[gi[t, j]]
            naive[t, j] = (
                -np.linalg.norm(a - b)
                if kind == "neg_l2"
                else a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            )
    for chunk in (1, 5, 4096):
        np.testing.assert_allclose(
            gather_scores(q, g, qi, gi, kind=kind, chunk=chunk), naive, rtol=1e-12, atol=1e-12
        )


def test_gather_scores_feeds_matching_accuracy():
    # query at 0; gallery items at distance 1 (item 0) and 2 (item 1), 1-D embeddings
    q = np.array([[0.0]])
    g = np.array([[1.0], [2.0]])
    s = gather_scores(q, g, np.array([0, 0]), np.array([[0, 1], [1, 0]]))
    np.testing.assert_array_equal(s, [[-1.0, -2.0], [-2.0, -1.0]])
    assert matching_accuracy(s, np.array([0, 1])) == 1.0
    with pytest.raises(ValueError):
        gather_scores(q, g, np.array([0]), np.array([[0, 1]]), kind="dot")
    with pytest.raises(IndexError):
        gather_scores(q, g, np.array([0]), np.array([[0, 2]]))


# ----------------------------------------------------------------------------- verification


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_roc_auc_is_the_pairwise_win_rate_with_ties(seed):
    # AUC = P(positive score > negative score) + 1/2 P(tie), counted over every pair by brute force
    rng = np.random.default_rng(seed)
    n = 500
    labels = rng.integers(0, 2, size=n)
    scores = np.round(rng.normal(size=n) + 0.7 * labels, 1)  # heavy ties
    pos, neg = scores[labels == 1][:, None], scores[labels == 0][None, :]
    pairwise = ((pos > neg) + 0.5 * (pos == neg)).mean()
    assert roc_auc(scores, labels) == pytest.approx(pairwise, abs=1e-12)
    assert roc_auc(scores, labels.astype(bool)) == pytest.approx(pairwise, abs=1e-12)


def test_roc_auc_hand_case_and_errors():
    # positives {0.35, 0.8} vs negatives {0.1, 0.4}: 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3/4
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)  # a tie counts 1/2
    with pytest.raises(ValueError):
        roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError):
        roc_auc([0.1, 0.2], [0, 2])


@pytest.mark.parametrize("seed", [0, 1])
def test_roc_curve_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=200)
    scores = np.round(rng.normal(size=200) + labels, 1)
    fpr, tpr, thr = roc_curve(scores, labels)
    sfpr, stpr, sthr = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sfpr)
    np.testing.assert_allclose(tpr, stpr)
    assert thr[0] == np.inf
    np.testing.assert_allclose(thr[1:], sthr[1:])
    trapezoid_area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)
    assert trapezoid_area == pytest.approx(roc_auc(scores, labels))


def _eer_from_sklearn(scores, labels):
    """Independent EER: intersect sklearn's (default, thinned) ROC polyline with tpr = 1 - fpr."""
    fpr, tpr, _ = skm.roc_curve(labels, scores)
    for (x0, y0), (x1, y1) in zip(zip(fpr[:-1], tpr[:-1]), zip(fpr[1:], tpr[1:])):
        # g(t) = fpr(t) + tpr(t) - 1 along the segment, t in [0, 1]
        g0, g1 = x0 + y0 - 1, x1 + y1 - 1
        if g0 <= 0 <= g1 and g1 != g0:
            t = -g0 / (g1 - g0)
            return x0 + t * (x1 - x0)
    raise AssertionError("no crossing")


def test_eer_hand_cases():
    # perfectly separable: threshold between the classes gives FPR = FNR = 0
    assert equal_error_rate([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 0.0
    # scores [0.1, 0.4, 0.35, 0.8], labels [0, 0, 1, 1] (P = N = 2). Descending:
    # 0.8(+) 0.4(-) 0.35(+) 0.1(-). ROC points (fpr, tpr) per threshold:
    #   inf: (0, 0)   0.8: (0, .5)   0.4: (.5, .5)   0.35: (.5, 1)   0.1: (1, 1)
    # FNR - FPR = 1, .5, 0, -.5, -1 -> zero exactly at threshold 0.4: EER = 0.5.
    assert equal_error_rate([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.5)
    # interpolated case: positives {0.9, 0.4}, negatives {0.6, 0.3, 0.2} (P = 2, N = 3).
    # Descending 0.9(+) 0.6(-) 0.4(+) 0.3(-) 0.2(-); ROC points:
    #   (0,0) (0,.5) (1/3,.5) (1/3,1) (2/3,1) (1,1);  d = FNR - FPR = 1, .5, 1/6, -1/3, ...
    # sign change between (1/3,.5) [d=1/6] and (1/3,1) [d=-1/3]: t = (1/6)/(1/2) = 1/3,
    # FPR = 1/3 (vertical segment), FNR = .5 - t * .5 = 1/3 -> EER = 1/3.
    s, y = [0.9, 0.4, 0.6, 0.3, 0.2], [1, 1, 0, 0, 0]
    assert equal_error_rate(s, y) == pytest.approx(1 / 3)
    assert _eer_from_sklearn(np.array(s), np.array(y)) == pytest.approx(1 / 3)
    # completely inverted scores: every threshold errs -> EER = 1
    assert equal_error_rate([0.9, 0.8, 0.1, 0.2], [0, 0, 1, 1]) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_eer_matches_sklearn_roc(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=300)
    scores = rng.normal(size=300) + 1.2 * labels
    if seed % 2:
        scores = np.round(scores, 1)
    assert equal_error_rate(scores, labels) == pytest.approx(_eer_from_sklearn(scores, labels), abs=1e-12)


# ----------------------------------------------------------------------------- retrieval

# 1-D embeddings. Gallery: g0 = 0 (A), g1 = 1 (B), g2 = 3 (A), g3 = 6 (B).
GALLERY = np.array([[0.0], [1.0], [3.0], [6.0]])
GALLERY_IDS = np.array(["A", "B", "A", "B"])
# q0 = 0.75 (A): distances g0 .75, g1 .25, g2 2.25, g3 5.25 -> ranking g1 g0 g2 g3 = B A A B
#   relevant at ranks 2, 3: AP = (1/2 + 2/3) / 2 = 7/12; first relevant rank 2.
# q1 = 5 (B): distances g0 5, g1 4, g2 2, g3 1 -> ranking g3 g2 g1 g0 = B A B A
#   relevant at ranks 1, 3: AP = (1/1 + 2/3) / 2 = 5/6; first relevant rank 1.
# q2 = 2 (C): no C in the gallery -> excluded from R@k and mAP.
QUERIES = np.array([[0.75], [5.0], [2.0]])
QUERY_IDS = np.array(["A", "B", "C"])


def test_retrieval_hand_case():
    per = retrieval_per_query(QUERIES, QUERY_IDS, GALLERY, GALLERY_IDS, ks=(1, 2, 10))
    np.testing.assert_array_equal(per["has_relevant"], [True, True, False])
    np.testing.assert_array_equal(per["first_rank"], [2, 1, 0])
    np.testing.assert_array_equal(per["n_relevant"], [2, 2, 0])
    np.testing.assert_array_equal(per["hit@1"], [False, True, False])
    np.testing.assert_array_equal(per["hit@2"], [True, True, False])
    np.testing.assert_array_equal(per["hit@10"], [True, True, False])  # k > Ng = whole gallery
    np.testing.assert_allclose(per["ap"][:2], [7 / 12, 5 / 6])
    assert np.isnan(per["ap"][2])

    m = retrieval_metrics(QUERIES, QUERY_IDS, GALLERY, GALLERY_IDS, ks=(1, 2, 10))
    assert m["R@1"] == pytest.approx(1 / 2)
    assert m["R@2"] == pytest.approx(1.0)
    assert m["R@10"] == pytest.approx(1.0)
    assert m["mAP"] == pytest.approx((7 / 12 + 5 / 6) / 2)  # = 17/24
    assert m["n_queries"] == 2 and m["queries_without_relevant"] == 1
    assert set(retrieval_metrics(QUERIES, QUERY_IDS, GALLERY, GALLERY_IDS)) == {
        "R@1",
        "R@5",
        "R@10",
        "mAP",
        "n_queries",
        "queries_without_relevant",
    }


def test_retrieval_ties_are_stable():
    # q = 0.5 (B) is equidistant (0.5) from g0 (A) and g1 (B): the stable sort keeps gallery
    # order, so g0 ranks first. Ranking g0 g1 g2 g3 = A B A B: relevant at ranks 2 and 4,
    # AP = (1/2 + 2/4) / 2 = 1/2; R@1 = 0.
    per = retrieval_per_query(np.array([[0.5]]), np.array(["B"]), GALLERY, GALLERY_IDS, ks=(1, 2))
    assert per["first_rank"][0] == 2 and not per["hit@1"][0] and per["hit@2"][0]
    assert per["ap"][0] == pytest.approx(0.5)


def _naive_retrieval(q, qids, g, gids, ks, kind):
    hits = {k: [] for k in ks}
    aps = []
    for i in range(len(q)):
        if kind == "neg_l2":
            s = -np.linalg.norm(g - q[i], axis=1)
        else:
            s = g @ q[i] / (np.linalg.norm(g, axis=1) * np.linalg.norm(q[i]))
        rel = gids[np.argsort(-s, kind="stable")] == qids[i]
        if not rel.any():
            continue
        for k in ks:
            hits[k].append(rel[:k].any())
        ranks = np.flatnonzero(rel) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return {f"R@{k}": np.mean(hits[k]) for k in ks} | {"mAP": np.mean(aps)}


@pytest.mark.parametrize("kind", ["neg_l2", "cosine"])
def test_retrieval_chunked_equals_unchunked_and_naive(kind):
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(12, 8))
    qids, gids = rng.integers(0, 13, size=40), rng.integers(0, 12, size=60)  # id 12: no gallery
    q = np.r_[centers, rng.normal(size=(1, 8))][qids] + rng.normal(size=(40, 8))
    g = centers[gids] + rng.normal(size=(60, 8))
    full = retrieval_metrics(q, qids, g, gids, ks=(1, 5, 10), kind=kind, chunk=40)
    for chunk in (1, 3, 16, None):
        assert retrieval_metrics(q, qids, g, gids, ks=(1, 5, 10), kind=kind, chunk=chunk) == full
    per_a = retrieval_per_query(q, qids, g, gids, kind=kind, chunk=1)
    per_b = retrieval_per_query(q, qids, g, gids, kind=kind, chunk=40)
    for key in per_a:
        np.testing.assert_array_equal(per_a[key], per_b[key])
    naive = _naive_retrieval(q, qids, g, gids, (1, 5, 10), kind)
    for key, val in naive.items():
        assert full[key] == pytest.approx(val, abs=1e-12)
    assert full["queries_without_relevant"] == int((qids == 12).sum())


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_estimate_narrows_and_reproducible():
    rng = np.random.default_rng(0)
    small = (rng.random(200) < 0.7).astype(float)
    large = (rng.random(5000) < 0.7).astype(float)
    lo_s, hi_s = bootstrap_ci(small, n_boot=500, seed=3)
    lo_l, hi_l = bootstrap_ci(large, n_boot=500, seed=3)
    assert lo_s <= small.mean() <= hi_s
    assert lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 2  # width ~ 1/sqrt(n): 5x narrower expected
    assert bootstrap_ci(small, n_boot=500, seed=3) == (lo_s, hi_s)
    assert bootstrap_ci(small, n_boot=500, seed=4) != (lo_s, hi_s)
    # other statistics via axis=; a constant sample has a zero-width interval
    lo, hi = bootstrap_ci(small, statistic=np.median, n_boot=200)
    assert lo <= np.median(small) <= hi
    assert bootstrap_ci(np.full(50, 0.25)) == (0.25, 0.25)
    # booleans (hit@k) are accepted
    assert bootstrap_ci(small.astype(bool), n_boot=500, seed=3) == (lo_s, hi_s)


def test_bootstrap_ci_pairs():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=400)
    scores = rng.normal(size=400) + labels
    auc = roc_auc(scores, labels)
    lo, hi = bootstrap_ci_pairs(scores, labels, roc_auc, n_boot=200, seed=0)
    assert lo <= auc <= hi and hi - lo < 0.2
    assert bootstrap_ci_pairs(scores, labels, roc_auc, n_boot=200, seed=0) == (lo, hi)
    eer = equal_error_rate(scores, labels)
    lo, hi = bootstrap_ci_pairs(scores, labels, equal_error_rate, n_boot=200, seed=0)
    assert lo <= eer <= hi
    # 1 positive in 6 pairs: ~1/3 of the resamples lack it and are skipped, not failed
    lo, hi = bootstrap_ci_pairs([0.1, 0.2, 0.3, 0.4, 0.5, 0.9], [0, 0, 0, 0, 0, 1], roc_auc, n_boot=100)
    assert 0 <= lo <= hi <= 1
    with pytest.raises(ValueError):  # a single class never yields a usable resample
        bootstrap_ci_pairs([0.1, 0.2], [1, 1], roc_auc, n_boot=10)


def test_summarise_is_json_ready():
    out = summarise(np.float32(0.5), np.float64(0.25), 0.75)
    assert out == {"value": 0.5, "ci95": [0.25, 0.75]}
    assert all(type(v) is float for v in [out["value"], *out["ci95"]])


# ----------------------------------------------------------------------------- distances


def test_mean_pair_distance_by_hand():
    audio = np.array([[0.0, 0.0], [3.0, 0.0]])
    audio_ids = np.array([10, 20])
    faces = np.array([[0.0, 4.0], [3.0, 4.0], [0.0, 0.0], [9.0, 9.0]])
    face_ids = np.array([10, 10, 20, 30])
    # id 10: |(0,0)-(0,4)| = 4, |(0,0)-(3,4)| = 5; id 20: |(3,0)-(0,0)| = 3; id 30: no audio.
    # mean over the 3 same-identity pairs = (4 + 5 + 3) / 3 = 4
    assert mean_pair_distance(audio, faces, audio_ids, face_ids) == pytest.approx(4.0)
    assert mean_pair_distance(audio, faces, audio_ids.astype(str), face_ids.astype(str)) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        mean_pair_distance(audio, faces, np.array([1, 2]), face_ids)


def test_mean_pair_distance_matches_naive():
    rng = np.random.default_rng(2)
    a, f = rng.normal(size=(30, 4)), rng.normal(size=(25, 4))
    aid, fid = rng.integers(0, 6, size=30), rng.integers(0, 6, size=25)
    d = [np.linalg.norm(a[i] - f[j]) for i in range(30) for j in range(25) if aid[i] == fid[j]]
    assert mean_pair_distance(a, f, aid, fid) == pytest.approx(math.fsum(d) / len(d), rel=1e-12)
