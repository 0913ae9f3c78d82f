"""Evaluation metrics for face-voice association (plain numpy, torch-free).

Every item (voice clip or face) is embedded once; tuples, pairs and retrieval queries
are then scored by gathering embedding rows by index, so the cost grows with the number
of items, not with tuples x k. Scores follow one convention throughout: **higher score =
more likely the same identity**. The default score is the negative Euclidean distance
(``kind="neg_l2"``; AML is a metric-learning model); ``kind="cosine"`` gives cosine
similarity instead.

Metrics (see docs/aml-spec.md, "Protocols"):

* matching (k-way, A->V or V->A): :func:`gather_scores` + :func:`matching_accuracy`;
* verification: :func:`roc_auc` and :func:`roc_curve` (scikit-learn's, behind one input check)
  and :func:`equal_error_rate` (a small wrapper over the ROC polyline);
* retrieval: :func:`retrieval_metrics` (R@1/5/10, mAP) and :func:`retrieval_per_query`
  (per-query values for the bootstrap);
* confidence intervals: :func:`bootstrap_ci` (per-item values, e.g. per-tuple
  correctness or per-query AP) and :func:`bootstrap_ci_pairs` (AUC/EER, resampling
  (score, label) pairs); :func:`summarise` formats ``{"value", "ci95"}`` for JSON;
* :func:`mean_pair_distance`: mean audio-face distance over same-identity pairs
  (the paper's Fig. 8, before/after the generator).

All metric values are fractions in [0, 1] (not percentages).
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import numpy as np

__all__ = [
    "ScoreKind",
    "gather_scores",
    "matching_accuracy",
    "roc_auc",
    "roc_curve",
    "equal_error_rate",
    "retrieval_per_query",
    "retrieval_metrics",
    "bootstrap_ci",
    "bootstrap_ci_pairs",
    "summarise",
    "mean_pair_distance",
]

ScoreKind = Literal["neg_l2", "cosine"]
_KINDS = ("neg_l2", "cosine")

# Bound on the elements of any temporary (T,k,D) / (B,Ng) / (n_boot,n) block: 2**22
# float64 = 32 MiB.
_BLOCK_ELEMS = 1 << 22
_EPS = 1e-12


# --------------------------------------------------------------------------- helpers


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")


def _as_emb(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _labelled_pair(x_emb, y_emb, x_ids, y_ids, x_name: str, y_name: str):
    """Two embedding sets of one dimension, each with one identity label per row."""
    x = _as_emb(x_emb, f"{x_name}_emb")
    y = _as_emb(y_emb, f"{y_name}_emb")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"embedding dims differ: {x.shape[1]} vs {y.shape[1]}")
    xids, yids = np.asarray(x_ids), np.asarray(y_ids)
    if xids.shape != (x.shape[0],) or yids.shape != (y.shape[0],):
        raise ValueError(f"{x_name}_ids / {y_name}_ids must be 1-D and match the embedding rows")
    return x, y, xids, yids


def _as_index(x: np.ndarray, name: str, n: int, ndim: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    if x.size and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {x.dtype}")
    x = x.astype(np.intp, copy=False)
    if x.size and (x.min() < 0 or x.max() >= n):
        raise IndexError(f"{name} has indices outside [0, {n})")
    return x


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)


def _id_codes(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer identity codes shared by two id arrays (ints, strings, ...)."""
    try:
        both = np.concatenate([a, b])
    except (TypeError, ValueError):  # incompatible dtypes (e.g. int and str in numpy 2)
        both = np.concatenate([a.astype(object), b.astype(object)])
    _, codes = np.unique(both, return_inverse=True)
    codes = codes.ravel()
    return codes[: a.size], codes[a.size :]


def _binary_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in length: {scores.shape} vs {labels.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    if labels.dtype != bool:
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("labels must be binary (0/1 or bool)")
        labels = labels.astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        raise ValueError("need both positive and negative labels")
    return scores, labels


# --------------------------------------------------------------------------- matching


def gather_scores(
    query_emb: np.ndarray,
    gallery_emb: np.ndarray,
    query_idx: np.ndarray,
    gallery_idx: np.ndarray,
    kind: ScoreKind = "neg_l2",
    chunk: int = 4096,
) -> np.ndarray:
    """Scores of k-way tuples from per-item embeddings, by gathering rows.

    Args:
        query_emb: (Nq, D) embeddings of the query modality (each item once).
        gallery_emb: (Ng, D) embeddings of the gallery modality.
        query_idx: (T,) row of ``query_emb`` for each tuple's query.
        gallery_idx: (T, k) rows of ``gallery_emb`` for each tuple's gallery.
        kind: ``"neg_l2"`` (score = -Euclidean distance) or ``"cosine"``.
        chunk: tuples per block; temporaries are at most (chunk, k, D) float64.

    Returns:
        (T, k) float64 scores, higher = more similar to the query.

    Distances are computed as the norm of the gathered difference (exact, no
    ``|a|^2 + |b|^2 - 2ab`` cancellation); only one (chunk, k, D) block exists at a time.
    """
    _check_kind(kind)
    q = _as_emb(query_emb, "query_emb")
    g = _as_emb(gallery_emb, "gallery_emb")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"embedding dims differ: {q.shape[1]} vs {g.shape[1]}")
    qi = _as_index(query_idx, "query_idx", q.shape[0], 1)
    gi = _as_index(gallery_idx, "gallery_idx", g.shape[0], 2)
    if qi.shape[0] != gi.shape[0]:
        raise ValueError(f"query_idx has {qi.shape[0]} tuples, gallery_idx {gi.shape[0]}")
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    if kind == "cosine":
        q, g = _normalise_rows(q), _normalise_rows(g)
    out = np.empty(gi.shape, dtype=np.float64)
    for s in range(0, qi.shape[0], chunk):
        qb = q[qi[s : s + chunk]]  # (B, D)
        gb = g[gi[s : s + chunk]]  # (B, k, D)
        if kind == "neg_l2":
            gb -= qb[:, None, :]
            out[s : s + chunk] = -np.sqrt(np.einsum("bkd,bkd->bk", gb, gb))
        else:
            out[s : s + chunk] = np.einsum("bkd,bd->bk", gb, qb)
    return out


def matching_accuracy(
    scores: np.ndarray,
    labels: np.ndarray,
    ties: Literal["first", "wrong", "fractional"] = "first",
) -> float:
    """Fraction of k-way tuples whose highest-scoring gallery item is the labelled one.

    Args:
        scores: (T, k) scores, higher = better match (e.g. from :func:`gather_scores`).
        labels: (T,) index in [0, k) of the true match of each tuple.
        ties: how tied maxima are resolved, deterministically:
            ``"first"`` (default) - the lowest index among the tied maxima wins, exactly
            like ``np.argmax``; since avdata draws the positive's position uniformly this
            is unbiased in expectation, and a constant model scores chance.
            ``"wrong"`` - a tuple counts as correct only if the label is the *unique*
            maximum (pessimistic).
            ``"fractional"`` - credit 1/m when the label is among m tied maxima (the
            expected accuracy under random tie-breaking).

    Returns:
        Accuracy in [0, 1]. Raises ValueError on NaN scores or out-of-range labels.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 2:
        raise ValueError(f"scores must be (T, k), got shape {s.shape}")
    if y.shape != (s.shape[0],):
        raise ValueError(f"labels must be ({s.shape[0]},), got shape {y.shape}")
    if s.shape[0] == 0:
        raise ValueError("no tuples")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    y = _as_index(y, "labels", s.shape[1], 1)
    rows = np.arange(s.shape[0])
    if ties == "first":
        correct = np.argmax(s, axis=1) == y
        return float(correct.mean())
    is_max = s == s.max(axis=1, keepdims=True)
    n_max = is_max.sum(axis=1)
    label_is_max = is_max[rows, y]
    if ties == "wrong":
        return float((label_is_max & (n_max == 1)).mean())
    if ties == "fractional":
        return float(np.where(label_is_max, 1.0 / n_max, 0.0).mean())
    raise ValueError(f"ties must be 'first', 'wrong' or 'fractional', got {ties!r}")


# --------------------------------------------------------------------------- verification


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve for binary labels (positive = 1/True, higher score = positive):
    ``sklearn.metrics.roc_auc_score`` after the checks of :func:`_binary_labels` (one line
    ValueError for NaN scores, non-binary labels or a single class)."""
    from sklearn.metrics import roc_auc_score

    s, y = _binary_labels(scores, labels)
    return float(roc_auc_score(y, s))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: ``sklearn.metrics.roc_curve`` with every distinct threshold kept.

    Returns ``(fpr, tpr, thresholds)``: thresholds are the distinct scores in decreasing
    order, preceded by ``+inf`` (the point (0, 0)); a pair is called positive when its
    score >= threshold. ``drop_intermediate=False``: the EER below walks every point.
    The last point is always (1, 1).
    """
    from sklearn.metrics import roc_curve as sk_roc_curve

    s, y = _binary_labels(scores, labels)
    fpr, tpr, thresholds = sk_roc_curve(y, s, drop_intermediate=False)
    thresholds = np.asarray(thresholds, dtype=np.float64).copy()
    thresholds[0] = np.inf  # sklearn < 1.3 put max(score) + 1 there
    return fpr, tpr, thresholds


def equal_error_rate(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate: where the false-positive rate equals the miss rate (FPR = 1 - TPR).

    Walks the ROC polyline of :func:`roc_curve`. Along it d = FNR - FPR falls strictly
    from 1 at (0, 0) to -1 at (1, 1); the EER is the FPR (= FNR) where the segment on
    which d changes sign crosses d = 0, linearly interpolated between its two ROC points:
    with t = d0 / (d0 - d1), EER = fpr0 + t (fpr1 - fpr0). If d = 0 exactly at a ROC
    point, that point's FPR is returned. Perfectly separated scores give 0.
    """
    fpr, tpr, _ = roc_curve(scores, labels)
    d = (1.0 - tpr) - fpr
    i = int(np.argmax(d <= 0))  # first point with d <= 0 (exists: d[-1] = -1); i >= 1
    if d[i] == 0:
        return float(fpr[i])
    t = d[i - 1] / (d[i - 1] - d[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


# --------------------------------------------------------------------------- retrieval
# Hand-written ranking rather than sklearn's average_precision_score / top_k_accuracy: it needs
# per-query values for the bootstrap and scores the gallery in bounded blocks, one matrix product
# per block, instead of one library call per query.


def _block_scores(q: np.ndarray, g: np.ndarray, g_sq: np.ndarray, kind: str) -> np.ndarray:
    """(B, Ng) scores for a block of queries. neg_l2 returns -squared distance (same order)."""
    dots = q @ g.T
    if kind == "cosine":
        return dots  # rows already unit-normalised
    return -(np.einsum("bd,bd->b", q, q)[:, None] + g_sq[None, :] - 2.0 * dots)


def _given_block(scorer: Callable[[int, int], np.ndarray], s: int, e: int, n_g: int) -> np.ndarray:
    """A scorer's (e - s, Ng) block, checked."""
    block = np.asarray(scorer(s, e), dtype=np.float64)
    if block.shape != (e - s, n_g):
        raise ValueError(f"scorer({s}, {e}) gave shape {block.shape}, expected {(e - s, n_g)}")
    if np.isnan(block).any():
        raise ValueError("scores contain NaN")
    return block


def retrieval_per_query(
    query_emb: np.ndarray,
    query_ids: np.ndarray,
    gallery_emb: np.ndarray,
    gallery_ids: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    kind: ScoreKind = "neg_l2",
    chunk: int | None = None,
    scorer: Callable[[int, int], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Per-query retrieval results: each query ranked against the whole gallery.

    The gallery is ranked by decreasing score with a stable sort, so tied items keep
    gallery order (lower gallery index first): results are deterministic. A gallery item
    is relevant when its identity equals the query's.

    Args:
        query_emb, gallery_emb: (Nq, D), (Ng, D) embeddings.
        query_ids, gallery_ids: (Nq,), (Ng,) identity labels (any comparable dtype).
        ks: cut-offs for hit@k (k larger than Ng means the whole gallery).
        kind: ``"neg_l2"`` or ``"cosine"``.
        chunk: queries per block (default: so a (chunk, Ng) float64 block is ~32 MiB).
        scorer: scores computed elsewhere (a learned head), block by block instead of ``kind``:
            ``scorer(s, e)`` -> (e - s, Ng) scores of queries s..e-1 against the whole gallery,
            higher = more likely the same identity. Called once per block, in order, so the
            caller's memory stays bounded by ``chunk``.

    Returns:
        dict of (Nq,) arrays:
          ``"has_relevant"`` (bool) - the gallery holds at least one item of the identity;
          ``"first_rank"`` (int) - 1-based rank of the first relevant item, 0 if none;
          ``"n_relevant"`` (int) - number of relevant gallery items;
          ``"hit@k"`` (bool) for each k - a relevant item is among the top k;
          ``"ap"`` (float) - average precision over the full ranking: the mean, over
          the relevant items, of the precision at each relevant item's rank; NaN when
          the query has no relevant item.
    """
    _check_kind(kind)
    q, g, qids, gids = _labelled_pair(query_emb, gallery_emb, query_ids, gallery_ids, "query", "gallery")
    if g.shape[0] == 0:
        raise ValueError("empty gallery")
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive, got {ks}")
    n_q, n_g = q.shape[0], g.shape[0]
    if chunk is None:
        chunk = max(1, _BLOCK_ELEMS // n_g)
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    q_code, g_code = _id_codes(qids, gids)  # identities -> integer codes, once

    if kind == "cosine":
        q, g = _normalise_rows(q), _normalise_rows(g)
    g_sq = np.einsum("nd,nd->n", g, g)
    ranks_1 = np.arange(1, n_g + 1, dtype=np.float64)

    first_rank = np.zeros(n_q, dtype=np.int64)
    n_rel = np.zeros(n_q, dtype=np.int64)
    ap = np.full(n_q, np.nan)
    for s in range(0, n_q, chunk):
        e = min(s + chunk, n_q)
        scores = _block_scores(q[s:e], g, g_sq, kind) if scorer is None else _given_block(scorer, s, e, n_g)
        order = np.argsort(-scores, axis=1, kind="stable")
        rel = g_code[order] == q_code[s:e, None]  # (B, Ng) relevance in ranked order
        cnt = rel.sum(axis=1)
        has = cnt > 0
        n_rel[s:e] = cnt
        first_rank[s:e] = np.where(has, np.argmax(rel, axis=1) + 1, 0)
        prec = np.cumsum(rel, axis=1) / ranks_1  # precision at every rank
        ap_block = np.full(e - s, np.nan)
        ap_block[has] = (prec * rel).sum(axis=1)[has] / cnt[has]
        ap[s:e] = ap_block

    has_rel = n_rel > 0
    out: dict[str, np.ndarray] = {
        "has_relevant": has_rel,
        "first_rank": first_rank,
        "n_relevant": n_rel,
        "ap": ap,
    }
    for k in ks:
        out[f"hit@{k}"] = has_rel & (first_rank <= k)
    return out


def retrieval_metrics(
    query_emb: np.ndarray,
    query_ids: np.ndarray,
    gallery_emb: np.ndarray,
    gallery_ids: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    kind: ScoreKind = "neg_l2",
    chunk: int | None = None,
) -> dict[str, float | int]:
    """Retrieval summary: ``R@k`` for each k, ``mAP``, ``n_queries``, ``queries_without_relevant``.

    ``R@k`` is the fraction of queries with at least one same-identity gallery item in
    the top k; ``mAP`` is the mean of the per-query average precision (see
    :func:`retrieval_per_query`). Queries whose identity has no gallery item can neither
    hit nor have an AP: they are excluded from **both** R@k and mAP, and their number is
    reported as ``queries_without_relevant``; ``n_queries`` is the number evaluated.
    All-excluded gives NaN metrics.
    """
    per = retrieval_per_query(query_emb, query_ids, gallery_emb, gallery_ids, ks, kind, chunk)
    has = per["has_relevant"]
    n_eval = int(has.sum())
    out: dict[str, float | int] = {}
    for k in ks:
        out[f"R@{int(k)}"] = float(per[f"hit@{int(k)}"][has].mean()) if n_eval else float("nan")
    out["mAP"] = float(per["ap"][has].mean()) if n_eval else float("nan")
    out["n_queries"] = n_eval
    out["queries_without_relevant"] = int(has.size - n_eval)
    return out


# --------------------------------------------------------------------------- bootstrap
# Hand-written rather than scipy.stats.bootstrap: evaluate calls it once per list and metric, and
# scipy's percentile bootstrap takes 1.8-2.4x as long on 160-1,600 items (bench/metrics.py,
# docs/benchmarks.md); the same seed gives the same interval on every platform.


def bootstrap_ci(
    per_item_values: np.ndarray,
    statistic: Callable[..., np.ndarray] = np.mean,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic`` over independent items.

    Items (e.g. per-tuple correctness, per-query hit@k or AP) are resampled with
    replacement ``n_boot`` times using ``np.random.default_rng(seed)``; the interval is
    the (alpha/2, 1 - alpha/2) quantiles of the resampled statistic. Vectorised: resamples
    are drawn in blocks of bounded size and ``statistic`` is called as
    ``statistic(block, axis=1)`` (np.mean, np.median, np.nanmean, ... all work).
    Same inputs and seed give the same interval.
    """
    v = np.asarray(per_item_values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("no values")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError("need n_boot >= 1 and 0 < alpha < 1")
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMS // v.size)
    stats = np.empty(n_boot, dtype=np.float64)
    for s in range(0, n_boot, block):
        e = min(s + block, n_boot)
        idx = rng.integers(0, v.size, size=(e - s, v.size))
        stats[s:e] = statistic(v[idx], axis=1)
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_ci_pairs(
    scores: np.ndarray,
    labels: np.ndarray,
    metric_fn: Callable[[np.ndarray, np.ndarray], float] = roc_auc,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap CI of a pair-level metric (AUC, EER) by resampling pairs.

    Each resample draws len(scores) (score, label) pairs with replacement
    (``np.random.default_rng(seed)``) and evaluates ``metric_fn(scores, labels)``.
    Resamples containing a single class are skipped (the metric is undefined); a
    ValueError is raised if fewer than half of the resamples are usable.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape or s.size == 0:
        raise ValueError("scores and labels must be non-empty and of equal length")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError("need n_boot >= 1 and 0 < alpha < 1")
    yb = y.astype(bool)
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = rng.integers(0, s.size, size=s.size)
        n_pos = int(yb[idx].sum())
        if n_pos == 0 or n_pos == s.size:
            continue
        stats.append(metric_fn(s[idx], y[idx]))
    if 2 * len(stats) < n_boot:
        raise ValueError(f"only {len(stats)} of {n_boot} resamples had both classes")
    low, high = np.quantile(np.asarray(stats, dtype=np.float64), [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def summarise(value: float, low: float, high: float) -> dict:
    """JSON-ready ``{"value": value, "ci95": [low, high]}`` with plain Python floats."""
    return {"value": float(value), "ci95": [float(low), float(high)]}


# --------------------------------------------------------------------------- distances


def mean_pair_distance(
    audio_emb: np.ndarray,
    face_emb: np.ndarray,
    audio_ids: np.ndarray,
    face_ids: np.ndarray,
) -> float:
    """Mean Euclidean distance over all same-identity (audio item, face item) pairs.

    Every pair (i, j) with ``audio_ids[i] == face_ids[j]`` counts once, so identities
    with more items weigh more. Distances are exact (norm of the difference), computed
    per identity in bounded blocks. Raises ValueError if no identity occurs in both.
    """
    a, f, aid, fid = _labelled_pair(audio_emb, face_emb, audio_ids, face_ids, "audio", "face")
    a_code, f_code = _id_codes(aid, fid)
    a_order = np.argsort(a_code, kind="stable")
    f_order = np.argsort(f_code, kind="stable")
    a_sorted, f_sorted = a_code[a_order], f_code[f_order]
    total, n_pairs = 0.0, 0
    for c in np.intersect1d(a_sorted, f_sorted):
        ai = a_order[np.searchsorted(a_sorted, c, "left") : np.searchsorted(a_sorted, c, "right")]
        fi = f_order[np.searchsorted(f_sorted, c, "left") : np.searchsorted(f_sorted, c, "right")]
        fb = f[fi]  # (nf, D)
        rows = max(1, _BLOCK_ELEMS // (fb.size or 1))
        for s in range(0, ai.size, rows):
            diff = a[ai[s : s + rows], None, :] - fb[None, :, :]  # (r, nf, D)
            total += float(np.sqrt(np.einsum("rfd,rfd->rf", diff, diff)).sum())
        n_pairs += ai.size * fi.size
    if n_pairs == 0:
        raise ValueError("no identity has both audio and face embeddings")
    return total / n_pairs
