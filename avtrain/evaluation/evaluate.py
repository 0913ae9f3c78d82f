"""avtrain evaluate: score a trained run on the fixed evaluation lists of a tuple directory.

Every item (voice window or face) referenced by the index files ``DIR/index/*.jsonl`` is
read once from the item shards (explicit decoders, never unpickled), normalised as in
training and embedded once, in batches; tuples, pairs and retrieval queries are then
scored by gathering embedding rows (:mod:`avtrain.evaluation.metrics`). The cost of the forward
passes grows with the number of distinct items, not with tuples x k. Tuple shards
(``DIR/shards``) are never read.

Scoring rules (``--score``, default: the method's :attr:`~avtrain.methods.base.Method.default_score`):

* ``l2``: score = -Euclidean distance between the embeddings of the voice and the face;
* ``cosine``: their cosine similarity;
* ``head``: the method's learned head (:meth:`~avtrain.methods.base.Method.head_scores`) on every
  list it has a head for: matching at the k and direction it was trained for, verification,
  retrieval (the head ranks the whole gallery for each query). A list without a head is not
  scored and is recorded under ``not_scored`` with the reason, never scored by another rule.

Under l2 and cosine, a list the method has a matching or verification head for also gets the
head's accuracy (``"head"``) or AUC (``"head_auc"``) beside, never instead.

Results (``metrics.json``, sorted keys, deterministic for the same inputs and seed):
see docs/evaluation.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from avdata.io import atomic_write_text
from avtrain.evaluation import metrics as M
from avtrain.evaluation.diagnostics import (
    EMBEDDINGS_FILE,
    pair_distance_report,
    sample_keys,
    save_embedding_sample,
)
from avtrain.evaluation.embeddings import Embeddings, decode_items, embed_items, load_items
from avtrain.evaluation.outcomes import OUTCOMES_FILE, save_outcomes
from avtrain.evaluation.results import SCORE_KIND_OF_RULE, format_table, scoring_block, write_tensorboard
from avtrain.evaluation.tuple_lists import (
    MODALITY_OF_ROLE,
    EvaluationError,
    TupleList,
    read_tuple_lists,
    without_items,
)
from avtrain.methods.base import SCORE_RULES
from avtrain.run.checkpoint import load_run, pick_device

SCORE_KIND = SCORE_KIND_OF_RULE["l2"]  # the rule of avtrain score / match (avtrain.serve)
ROC_POINTS = 201  # ROC polyline points kept in metrics.json for the report
HEAD_ROWS = 4096  # tuples or pairs per head_scores call
# (queries, gallery, D) elements per retrieval head_scores call: the head sees every
# query-gallery difference, so a block of queries against the whole gallery is bounded here
HEAD_RETRIEVAL_ELEMS = 1 << 22


# --------------------------------------------------------------------------- metrics


def _summary(value: float, ci: tuple[float, float] | None) -> dict:
    if ci is None:
        return {"value": float(value), "ci95": None}
    return M.summarise(value, *ci)


def _ci_pairs(scores, labels, fn, n_boot, seed):
    try:
        return M.bootstrap_ci_pairs(scores, labels, fn, n_boot=n_boot, seed=seed)
    except ValueError:  # too few pairs for resamples with both classes
        return None


def _subsample_curve(fpr: np.ndarray, tpr: np.ndarray, n: int = ROC_POINTS) -> dict:
    if fpr.size > n:
        idx = np.unique(np.round(np.linspace(0, fpr.size - 1, n)).astype(int))
        fpr, tpr = fpr[idx], tpr[idx]
    return {"fpr": [round(float(v), 6) for v in fpr], "tpr": [round(float(v), 6) for v in tpr]}


def _qg(direction: str) -> tuple[str, str]:
    return MODALITY_OF_ROLE[direction, "query"], MODALITY_OF_ROLE[direction, "gallery"]


# --------------------------------------------------------------------------- learned heads


def has_head(model, task: str, k: int, direction: str) -> bool:
    """Whether ``model`` has a head for a ``task`` list of gallery size ``k`` and ``direction``:
    its head_scores on one all-zero query (and gallery) is not None. Run in eval mode (dropout
    draws no random numbers) without gradients; the model's mode is restored."""
    d = model.embed_dim
    shapes = {"matching": ((1, d), (1, k, d)), "verification": ((1, d), (1, d))}
    q_shape, g_shape = shapes.get(task, ((1, 1, d), (1, k, d)))  # retrieval: (Q, 1, D), (1, G, D)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model.head_scores(
                task, k, direction, torch.zeros(q_shape, device=device), torch.zeros(g_shape, device=device)
            )
    finally:
        model.train(was_training)
    return out is not None


def _no_head(model, task: str, k: int, direction: str) -> str:
    """Why a list is not scored under --score head."""
    what = f"{task} k={k} {direction}" if task == "matching" else f"{task} {direction}"
    cfg = model.run_config
    trained = f"; the run trained {cfg.task} k={cfg.k} {cfg.direction}" if cfg is not None else ""
    return f"method {model.name} has no head for {what}{trained}"


def _head(model, task, k, direction, h_query: np.ndarray, h_gallery: np.ndarray, shape, device) -> np.ndarray:
    """model.head_scores on numpy embedding rows -> float64 numpy of ``shape``, in inference mode."""
    with torch.inference_mode():
        out = model.head_scores(
            task,
            k,
            direction,
            torch.from_numpy(h_query).float().to(device),
            torch.from_numpy(h_gallery).float().to(device),
        )
    if out is None or tuple(out.shape) != shape:
        got = None if out is None else tuple(out.shape)
        raise EvaluationError(f"method {model.name}: head_scores({task}) gave {got}, expected {shape}")
    return out.float().cpu().numpy().astype(np.float64)


def _head_rows(model, task, k, direction, h_query, h_gallery, device) -> np.ndarray:
    """Head scores of row-aligned queries (T, D) and galleries (T, k, D) or (T, D), HEAD_ROWS at a time."""
    n = len(h_query)
    shape = (lambda b: (b, k)) if task == "matching" else (lambda b: (b,))
    blocks = [
        _head(
            model,
            task,
            k,
            direction,
            h_query[s : s + HEAD_ROWS],
            h_gallery[s : s + HEAD_ROWS],
            shape(min(HEAD_ROWS, n - s)),
            device,
        )
        for s in range(0, n, HEAD_ROWS)
    ]
    return np.concatenate(blocks) if blocks else np.empty(shape(0))


# --------------------------------------------------------------------------- scores of a list


def _matching_rows(tl: TupleList, emb: Embeddings):
    """(query rows (T,), gallery rows (T, k), labels (T,)) of a matching list."""
    qm, gm = _qg(tl.direction)
    qi = np.array([emb.row[qm][r["query"]] for r in tl.rows], dtype=np.intp)
    gi = np.array([[emb.row[gm][g] for g in r["gallery"]] for r in tl.rows], dtype=np.intp)
    labels = np.array([int(r["label"]) for r in tl.rows], dtype=np.intp)
    return qi, gi, labels


def matching_scores(tl: TupleList, emb: Embeddings, rule: str, model, device) -> np.ndarray | None:
    """(T, k) scores of a matching list under ``rule``; None when rule is head and the method
    has no head for the list's k and direction."""
    qm, gm = _qg(tl.direction)
    qi, gi, _ = _matching_rows(tl, emb)
    if rule != "head":
        return M.gather_scores(emb.h[qm], emb.h[gm], qi, gi, kind=SCORE_KIND_OF_RULE[rule])
    if not has_head(model, "matching", tl.k, tl.direction):
        return None
    return _head_rows(model, "matching", tl.k, tl.direction, emb.h[qm][qi], emb.h[gm][gi], device)


def _verification_rows(tl: TupleList, emb: Embeddings):
    """(voice rows, face rows, labels) of a verification list (its pairs are (voice, face))."""
    voice, face, labels = [], [], []
    for r in tl.rows:
        d = r.get("direction", "a2v")
        q, g = r["query"], r["gallery"][0]
        a_key, f_key = (q, g) if d == "a2v" else (g, q)
        voice.append(emb.row["audio"][a_key])
        face.append(emb.row["face"][f_key])
        labels.append(int(r["label"]))
    return np.array(voice, dtype=np.intp), np.array(face, dtype=np.intp), np.array(labels)


def verification_scores(
    tl: TupleList, emb: Embeddings, rule: str, model, direction: str, device
) -> tuple[np.ndarray | None, np.ndarray]:
    """(scores (n,), labels (n,)) of a verification list under ``rule``; scores None when rule is
    head and the method has no verification head. The head sees each (voice, face) pair as
    (query, gallery) of ``direction``, the run's."""
    vi, fi, y = _verification_rows(tl, emb)
    if rule != "head":
        kind = SCORE_KIND_OF_RULE[rule]
        return M.gather_scores(emb.h["audio"], emb.h["face"], vi, fi[:, None], kind=kind)[:, 0], y
    if not has_head(model, "verification", 1, direction):
        return None, y
    return _verification_head(model, emb, vi, fi, direction, device), y


def _verification_head(model, emb: Embeddings, vi, fi, direction: str, device) -> np.ndarray:
    ha, hf = emb.h["audio"][vi], emb.h["face"][fi]
    hq, hg = (ha, hf) if direction == "a2v" else (hf, ha)
    return _head_rows(model, "verification", 1, direction, hq, hg, device)


def _retrieval_head_scorer(model, tl: TupleList, hq: np.ndarray, hg: np.ndarray, device):
    """scorer(s, e) for :func:`metrics.retrieval_per_query`: the head's (e - s, G) scores of queries
    s..e-1 against the whole gallery, and the queries per block that keep one call bounded."""
    n_g = len(hg)

    def scorer(s: int, e: int) -> np.ndarray:  # (Q, 1, D) against (1, G, D)
        return _head(model, "retrieval", n_g, tl.direction, hq[s:e, None], hg[None], (e - s, n_g), device)

    return scorer, max(1, HEAD_RETRIEVAL_ELEMS // (n_g * hg.shape[1]))


# --------------------------------------------------------------------------- entries of metrics.json


def _list_rows(tl: TupleList) -> np.ndarray:
    """outcomes' ``row``: each scored row's position in its index file (rows a frozen encoder's
    rejects left out leave gaps), what pairs two runs scored on different subsets of one list."""
    return np.asarray(tl.row_index or range(len(tl.rows)), dtype=np.int64)


def _matching_entry(
    tl: TupleList, emb: Embeddings, model, rule: str, device, n_boot: int, seed: int, outcomes: dict
):
    """The metrics.json entry of a matching list, or None (not scored: no head for it); its
    per-tuple outcomes go to ``outcomes``."""
    scores = matching_scores(tl, emb, rule, model, device)
    if scores is None:
        return None
    qi, gi, labels = _matching_rows(tl, emb)
    correct = (np.argmax(scores, axis=1) == labels).astype(np.float64)  # ties: first index
    outcomes.update(correct=correct, row=_list_rows(tl))
    acc = M.matching_accuracy(scores, labels)
    entry = _summary(acc, M.bootstrap_ci(correct, n_boot=n_boot, seed=seed))
    entry.update(n=int(len(tl.rows)), chance=1.0 / tl.k, split=tl.split, list=tl.name, list_sha256=tl.sha256)
    if rule != "head" and has_head(model, "matching", tl.k, tl.direction):
        # the learned head beside, on the same gathered embeddings (no extra branch passes)
        qm, gm = _qg(tl.direction)
        hs = _head_rows(model, "matching", tl.k, tl.direction, emb.h[qm][qi], emb.h[gm][gi], device)
        hc = (np.argmax(hs, axis=1) == labels).astype(np.float64)
        entry["head"] = _summary(hc.mean(), M.bootstrap_ci(hc, n_boot=n_boot, seed=seed))
    return entry


def verification_metrics(scores: np.ndarray, labels: np.ndarray, n_boot: int, seed: int) -> dict:
    """AUC and EER with their pair-bootstrap CIs and the pair counts: what evaluate reports for a
    verification list and avtrain score for a labelled pair list (the same numbers on the same pairs)."""
    return {
        "auc": _summary(M.roc_auc(scores, labels), _ci_pairs(scores, labels, M.roc_auc, n_boot, seed)),
        "eer": _summary(
            M.equal_error_rate(scores, labels), _ci_pairs(scores, labels, M.equal_error_rate, n_boot, seed)
        ),
        "n": int(labels.size),
        "n_pos": int(labels.sum()),
        "n_neg": int(labels.size - labels.sum()),
    }


def _verification_entry(
    tl: TupleList, emb: Embeddings, model, rule: str, direction: str, device, n_boot, seed, outcomes: dict
):
    """The metrics.json entry of a verification list, or None (not scored: no head for it); its
    pair scores and labels go to ``outcomes``."""
    scores, y = verification_scores(tl, emb, rule, model, direction, device)
    if y.min() == y.max():
        raise EvaluationError(f"{tl.name}: verification needs both positive and negative pairs")
    if scores is None:
        return None
    outcomes.update(scores=scores, labels=y, row=_list_rows(tl))
    fpr, tpr, _ = M.roc_curve(scores, y)
    entry = verification_metrics(scores, y, n_boot, seed) | {
        "split": tl.split,
        "list": tl.name,
        "list_sha256": tl.sha256,
        "roc": _subsample_curve(fpr, tpr),
    }
    if rule != "head" and has_head(model, "verification", 1, direction):
        vi, fi, _ = _verification_rows(tl, emb)
        hs = _verification_head(model, emb, vi, fi, direction, device)
        entry["head_auc"] = _summary(M.roc_auc(hs, y), _ci_pairs(hs, y, M.roc_auc, n_boot, seed))
    return entry


def _retrieval_entry(
    tl: TupleList, emb: Embeddings, model, rule: str, device, n_boot: int, seed: int, outcomes: dict
):
    """The metrics.json entry of a retrieval list, or None (not scored: no head for it); per query
    with a relevant item, its hits and AP go to ``outcomes``."""
    qm, gm = _qg(tl.direction)
    qi = np.array([emb.row[qm][r["query"]] for r in tl.rows], dtype=np.intp)
    gi = np.array([emb.row[gm][g["key"]] for g in tl.gallery], dtype=np.intp)
    q_ids = np.array([r["query_identity"] for r in tl.rows], dtype=str)
    g_ids = np.array([g["identity"] for g in tl.gallery], dtype=str)
    hq, hg = emb.h[qm][qi], emb.h[gm][gi]
    if rule == "head":
        if not has_head(model, "retrieval", len(gi), tl.direction):
            return None
        scorer, chunk = _retrieval_head_scorer(model, tl, hq, hg, device)
        per = M.retrieval_per_query(hq, q_ids, hg, g_ids, ks=(1, 5, 10), chunk=chunk, scorer=scorer)
    else:
        per = M.retrieval_per_query(hq, q_ids, hg, g_ids, ks=(1, 5, 10), kind=SCORE_KIND_OF_RULE[rule])
    has = per["has_relevant"]
    entry: dict = {
        "n": int(has.sum()),
        "queries_without_relevant": int(has.size - has.sum()),
        "gallery": int(gi.size),
        "split": tl.split,
        "list": tl.name,
        "list_sha256": tl.sha256,
    }
    outcomes["row"] = _list_rows(tl)[has]
    for name, values in (
        ("R@1", per["hit@1"]),
        ("R@5", per["hit@5"]),
        ("R@10", per["hit@10"]),
        ("mAP", per["ap"]),
    ):
        v = np.asarray(values, dtype=np.float64)[has]
        outcomes[name.replace("R@", "hit@").replace("mAP", "ap")] = v
        entry[name] = _summary(v.mean(), M.bootstrap_ci(v, n_boot=n_boot, seed=seed)) if v.size else None
    return entry


# --------------------------------------------------------------------------- entry point


class ValidationSet:
    """The val lists a run is validated on during ``fit``: matching for the trained k and
    direction, and verification if a val list exists; scored with the method's default rule
    (:attr:`~avtrain.methods.base.Method.default_score`) by the code of :func:`evaluate` (same lists
    reader, item loader, embedding and metrics code).

    Metric names (whatever the rule): ``val_matching_{direction}_k{k}`` (accuracy) and
    ``val_verification_auc``. Under the head rule a list the method has no head for gives no
    metric; :meth:`check` refuses, before training, a selection metric that would be missing."""

    def __init__(
        self,
        tuples_dir: str | Path,
        shards: str | Path,
        task: str,
        k: int,
        direction: str,
        select: str,
        split: str = "val",
        batch_size: int = 64,
        frozen=None,
    ):
        """``frozen`` (:class:`avtrain.train.features.FrozenInputs`): the frozen modalities' feature
        stores; rows naming an item their encoder rejected are left out (``self.skipped``)."""
        self.shards, self.batch_size, self.frozen = Path(shards), batch_size, frozen
        self.direction, self.select = direction, select
        lists = read_tuple_lists(tuples_dir)
        self.skipped: dict[str, int] = {}
        if frozen is not None:
            lists, self.skipped = without_items(lists, frozen.rejected_keys())
        want = f"matching_{split}_{direction}_k{k}"
        self.lists = [
            t
            for t in lists
            if (t.task == "matching" and t.name == want) or (t.task == "verification" and t.split == split)
        ]
        names = {self.metric_name(t) for t in self.lists}
        if not self.lists:
            raise EvaluationError(
                f"{tuples_dir}: no {split} lists ({want}.jsonl or verification_{split}.jsonl) in "
                f"index/; build them with avdata make-tuples --split {split}"
            )
        if select not in names:
            raise EvaluationError(
                f"{tuples_dir}: the selection metric {select} needs a list that is not there "
                f"(have {', '.join(sorted(names))})"
            )
        for t in self.lists:  # found now, not after the first epoch has trained
            if t.task == "verification" and len({r["label"] for r in t.rows}) < 2:
                raise EvaluationError(f"{t.name}: verification needs both positive and negative pairs")
        self.need, self.items = load_items(self.lists, shards, tuples_dir)
        self.decoded = None  # the items' arrays, decoded at the first validation and kept for the next

    @staticmethod
    def metric_name(tl: TupleList) -> str:
        return "val_verification_auc" if tl.task == "verification" else f"val_matching_{tl.direction}_k{tl.k}"

    def _scored(self, model, tl: TupleList) -> bool:
        if model.default_score != "head":
            return True
        k = tl.k if tl.task == "matching" else 1
        return has_head(model, tl.task, k, tl.direction if tl.task == "matching" else self.direction)

    def check(self, model) -> None:
        """Refuse (EvaluationError) a run whose selection metric its scoring rule cannot give:
        under the head rule, a selected list the method has no head for."""
        for tl in self.lists:
            if self.metric_name(tl) == self.select and not self._scored(model, tl):
                k, d = (tl.k, tl.direction) if tl.task == "matching" else (1, self.direction)
                raise EvaluationError(
                    f"the selection metric {self.select} cannot be scored: {model.name} scores with its "
                    f"head (default_score) and {_no_head(model, tl.task, k, d)}; choose another --select"
                )

    def score(self, model, device: torch.device) -> dict[str, float]:
        """Metric name -> value; the model is left in eval mode."""
        model.eval()
        rule = model.default_score
        if self.decoded is None:
            self.decoded = decode_items(self.items, self.shards, self.frozen)
        emb = embed_items(
            model,
            self.items,
            self.shards,
            self.batch_size,
            device,
            set(),
            decoded=self.decoded,
            frozen=self.frozen,
        )
        out = {}
        for tl in self.lists:
            if not self._scored(model, tl):
                continue
            if tl.task == "matching":
                scores = matching_scores(tl, emb, rule, model, device)
                out[self.metric_name(tl)] = float(M.matching_accuracy(scores, _matching_rows(tl, emb)[2]))
            else:
                scores, y = verification_scores(tl, emb, rule, model, self.direction, device)
                if y.min() == y.max():
                    raise EvaluationError(f"{tl.name}: verification needs both positive and negative pairs")
                out[self.metric_name(tl)] = float(M.roc_auc(scores, y))
        return dict(sorted(out.items()))


def evaluate(
    run: str | Path,
    shards: str | Path | None,
    tuples_dir: str | Path,
    out: str | Path | None = None,
    batch_size: int = 64,
    device: str = "auto",
    n_boot: int = 1000,
    seed: int = 0,
    echo: Callable[[str], None] | None = print,
    checkpoint: str = "last",
    score: str | None = None,
    features: list[str | Path] | tuple = (),
) -> dict:
    """Evaluate RUN's ``checkpoint`` (last, best or a path) on every list of tuples_dir/index,
    scored by ``score`` (l2, cosine or head; None: the method's default rule); write metrics.json
    (default RUN/metrics.json), RUN/embeddings.npz and the headline metrics into RUN/tb
    (TensorBoard); return the metrics dict. ``shards`` None: the item shards tuples_dir's lists
    were drawn from, found through its manifest (:func:`avtrain.run.data_record.locate_item_shards`).
    A run on frozen encoder features reads them from the feature stores it recorded (``features``:
    other stores of the same encoders and weights); rows naming an item the encoder rejected are left
    out and counted (``features.skipped``)."""
    run = Path(run)
    if shards is None:
        from avtrain.run.data_record import locate_item_shards

        shards, why = locate_item_shards(tuples_dir)
        if shards is None:
            raise EvaluationError(
                f"--tuples {tuples_dir}: cannot find the item shards its lists were drawn from ({why}); "
                "pass them with --shards"
            )
    out = Path(out) if out else run / "metrics.json"
    if batch_size < 1 or n_boot < 1:
        raise EvaluationError("--batch-size and --bootstrap must be >= 1")
    if score is not None and score not in SCORE_RULES:
        raise EvaluationError(f"--score must be one of {', '.join(SCORE_RULES)}, got {score!r}")
    dev = pick_device(device)  # an unknown device: one-line DeviceError
    model, state, cfg = load_run(run, dev, checkpoint)
    rule = score or model.default_score
    lists = read_tuple_lists(tuples_dir)
    if not lists:
        raise EvaluationError(
            f"{tuples_dir}: no non-empty matching, verification or retrieval list in index/"
        )
    from avtrain.train.features import print_leakage, recorded_features

    frozen = recorded_features(cfg, features, Path(shards))
    skipped_rows: dict[str, int] = {}
    if frozen is not None:
        print_leakage(cfg.model, Path(shards))
        lists, skipped_rows = without_items(lists, frozen.rejected_keys())
        if skipped_rows and echo:
            echo(
                f"{sum(skipped_rows.values())} rows of {len(skipped_rows)} list(s) left out: they name items "
                f"the frozen encoder rejected ({', '.join(f'{k}: {v}' for k, v in sorted(skipped_rows.items()))})"
            )
        if not lists:
            raise EvaluationError(f"{tuples_dir}: every list names only items the frozen encoder rejected")
    need, items = load_items(lists, shards, tuples_dir)

    # features are kept only for the sampled keys; the sample needs the key lists first
    keys_by_mod = {m: sorted(k for k, v in need.items() if v == m) for m in ("audio", "face")}
    id_of = dict(zip(items["key"], items["vox_id"]))
    pre = Embeddings(
        keys_by_mod,
        {m: np.array([id_of[k] for k in keys_by_mod[m]], dtype=str) for m in keys_by_mod},
        {},
        {},
        {},
    )
    keep, samples = sample_keys(pre, seed)
    emb = embed_items(model, items, shards, batch_size, dev, keep, frozen=frozen)

    result: dict = {
        "run": str(run),
        "checkpoint": str(checkpoint),
        "checkpoint_epoch": int(state.get("epoch", 0)),
        "checkpoint_step": int(state.get("step", 0)),
        "config": state["config"],
        "scoring": scoring_block(rule),
        "bootstrap": {"n": int(n_boot), "seed": int(seed), "ci": 0.95, "method": "percentile"},
        "shards": str(shards),
        "tuples": str(tuples_dir),
        "items": {
            "audio": len(emb.keys["audio"]),
            "face": len(emb.keys["face"]),
            "forward_rows": int(emb.forward_rows),
        },
    }
    if frozen is not None:
        result["features"] = {**frozen.record(), "skipped_rows": dict(sorted(skipped_rows.items()))}

    skipped: dict[str, str] = {}  # list -> why it is not scored (head rule, no head for it)
    # per-item outcomes of every list, for paired comparisons of runs (outcomes.py, compare.py)
    pending: list[tuple[str, dict]] = []

    def record(prefix: str) -> dict:
        got: dict = {}
        pending.append((prefix, got))
        return got

    matching_lists = [t for t in lists if t.task == "matching"]
    splits = sorted({t.split for t in matching_lists if not t.constraint})
    primary = "test" if "test" in splits else (splits[0] if splits else None)
    matching: dict = {}
    extra: dict = {}
    for tl in sorted(matching_lists, key=lambda t: (t.direction, t.k, t.name)):
        primary_list = tl.split == primary and not tl.constraint
        prefix = f"matching/{tl.direction}/k{tl.k}" if primary_list else f"matching_other/{tl.name}"
        entry = _matching_entry(tl, emb, model, rule, dev, n_boot, seed, record(prefix))
        if entry is None:
            skipped[tl.name] = _no_head(model, "matching", tl.k, tl.direction)
        elif primary_list:
            matching.setdefault(tl.direction, {})[f"k{tl.k}"] = entry
        else:
            extra[tl.name] = entry
    result["matching"] = matching
    result["matching_split"] = primary
    result["matching_other"] = extra
    verification: dict = {}
    for t in lists:
        if t.task == "verification":
            name = t.name[len("verification_") :]
            got = record(f"verification/{name}")
            entry = _verification_entry(t, emb, model, rule, cfg.direction, dev, n_boot, seed, got)
            if entry is None:
                skipped[t.name] = _no_head(model, "verification", 1, cfg.direction)
            else:
                verification[name] = entry
    result["verification"] = verification
    retrieval: dict = {}
    for t in lists:
        if t.task == "retrieval":
            got = record(f"retrieval/{t.split}/{t.direction}")
            entry = _retrieval_entry(t, emb, model, rule, dev, n_boot, seed, got)
            if entry is None:
                skipped[t.name] = _no_head(model, "retrieval", len(t.gallery), t.direction)
            else:
                retrieval.setdefault(t.split, {})[t.direction] = entry
    result["retrieval"] = retrieval
    result["not_scored"] = dict(sorted(skipped.items()))
    result["pair_distance"] = pair_distance_report(emb, samples)
    result["embeddings"] = save_embedding_sample(emb, samples, run / EMBEDDINGS_FILE)

    atomic_write_text(out, json.dumps(result, sort_keys=True, indent=1) + "\n")
    outcomes = {f"{prefix}/{k}": v for prefix, got in pending for k, v in got.items()}
    save_outcomes(out.with_name(OUTCOMES_FILE), outcomes)
    write_tensorboard(run / "tb", result)
    if echo:
        echo(format_table(result))
        echo(f"wrote {out}")
    return result
