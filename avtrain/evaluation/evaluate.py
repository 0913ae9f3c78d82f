"""avtrain evaluate: score a trained AML run on the fixed evaluation lists of a tuple directory.

Every item (voice window or face) referenced by the index files ``DIR/index/*.jsonl`` is
read once from the item shards (explicit decoders, never unpickled), normalised as in
training and embedded once, in batches; tuples, pairs and retrieval queries are then
scored by gathering embedding rows (:mod:`avtrain.evaluation.metrics`). The cost of the forward
passes grows with the number of distinct items, not with tuples x k. Tuple shards
(``DIR/shards``) are never read.

Scoring rule: **score = -Euclidean distance** between the 128-d embeddings h of the voice
and the face (the model is trained with a metric loss on exactly that distance). The
learned matching head only exists for the k and direction the run was trained on; its
accuracy on those lists is reported beside (``"head"``), never instead.

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
from avtrain.evaluation.results import format_table, write_tensorboard
from avtrain.evaluation.tuple_lists import (
    MODALITY_OF_ROLE,
    EvaluationError,
    TupleList,
    read_tuple_lists,
)
from avtrain.run.checkpoint import load_run, pick_device

SCORE_KIND = "neg_l2"
ROC_POINTS = 201  # ROC polyline points kept in metrics.json for the report


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


def _qg(emb: Embeddings, direction: str) -> tuple[str, str]:
    return MODALITY_OF_ROLE[direction, "query"], MODALITY_OF_ROLE[direction, "gallery"]


def _matching_entry(
    tl: TupleList, emb: Embeddings, model, cfg, device, n_boot: int, seed: int, outcomes: dict
) -> dict:
    qm, gm = _qg(emb, tl.direction)
    qi = np.array([emb.row[qm][r["query"]] for r in tl.rows], dtype=np.intp)
    gi = np.array([[emb.row[gm][g] for g in r["gallery"]] for r in tl.rows], dtype=np.intp)
    labels = np.array([int(r["label"]) for r in tl.rows], dtype=np.intp)
    scores = M.gather_scores(emb.h[qm], emb.h[gm], qi, gi, kind=SCORE_KIND)
    correct = (np.argmax(scores, axis=1) == labels).astype(
        np.float64
    )  # ties: first index (matching_accuracy)
    acc = M.matching_accuracy(scores, labels)
    outcomes["correct"] = correct
    entry = _summary(acc, M.bootstrap_ci(correct, n_boot=n_boot, seed=seed))
    entry.update(n=int(len(tl.rows)), chance=1.0 / tl.k, split=tl.split, list=tl.name)
    # the method's learned head where it has one for this list (AML: C_M at the trained k and
    # direction), applied to the same gathered embeddings (no extra branch passes)
    pred = np.empty(len(tl.rows), dtype=np.intp)
    with torch.inference_mode():
        for s in range(0, len(tl.rows), 4096):
            hq = torch.from_numpy(emb.h[qm][qi[s : s + 4096]]).float().to(device)
            hg = torch.from_numpy(emb.h[gm][gi[s : s + 4096]]).float().to(device)
            head = model.head_scores("matching", tl.k, tl.direction, hq, hg)
            if head is None:
                break
            pred[s : s + 4096] = head.argmax(1).cpu().numpy()
        else:
            hc = (pred == labels).astype(np.float64)
            entry["head"] = _summary(hc.mean(), M.bootstrap_ci(hc, n_boot=n_boot, seed=seed))
    return entry


def _verification_scores(tl: TupleList, emb: Embeddings):
    """(−L2 scores, labels, voice rows, face rows) of a verification list."""
    voice, face, labels = [], [], []
    for r in tl.rows:
        d = r.get("direction", "a2v")
        q, g = r["query"], r["gallery"][0]
        a_key, f_key = (q, g) if d == "a2v" else (g, q)
        voice.append(emb.row["audio"][a_key])
        face.append(emb.row["face"][f_key])
        labels.append(int(r["label"]))
    vi, fi, y = np.array(voice, dtype=np.intp), np.array(face, dtype=np.intp), np.array(labels)
    scores = M.gather_scores(emb.h["audio"], emb.h["face"], vi, fi[:, None], kind=SCORE_KIND)[:, 0]
    return scores, y, vi, fi


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
    tl: TupleList, emb: Embeddings, model, cfg, device, n_boot: int, seed: int, outcomes: dict
) -> dict:
    scores, y, vi, fi = _verification_scores(tl, emb)
    outcomes.update(scores=scores, labels=y)
    if y.min() == y.max():
        raise EvaluationError(f"{tl.name}: verification needs both positive and negative pairs")
    fpr, tpr, _ = M.roc_curve(scores, y)
    entry = verification_metrics(scores, y, n_boot, seed) | {
        "split": tl.split,
        "list": tl.name,
        "roc": _subsample_curve(fpr, tpr),
    }
    ha, hf = torch.from_numpy(emb.h["audio"][vi]).float(), torch.from_numpy(emb.h["face"][fi]).float()
    hq, hg = (ha, hf) if cfg.direction == "a2v" else (hf, ha)
    with torch.inference_mode():  # the method's verification head, if it has one (AML: C_V)
        head = model.head_scores("verification", 1, cfg.direction, hq.to(device), hg.to(device))
    if head is not None:
        hs = head.float().cpu().numpy()
        entry["head_auc"] = _summary(M.roc_auc(hs, y), _ci_pairs(hs, y, M.roc_auc, n_boot, seed))
    return entry


def _retrieval_entry(tl: TupleList, emb: Embeddings, n_boot: int, seed: int, outcomes: dict) -> dict:
    qm, gm = _qg(emb, tl.direction)
    qi = np.array([emb.row[qm][r["query"]] for r in tl.rows], dtype=np.intp)
    gi = np.array([emb.row[gm][g["key"]] for g in tl.gallery], dtype=np.intp)
    q_ids = np.array([r["query_identity"] for r in tl.rows], dtype=str)
    g_ids = np.array([g["identity"] for g in tl.gallery], dtype=str)
    per = M.retrieval_per_query(emb.h[qm][qi], q_ids, emb.h[gm][gi], g_ids, ks=(1, 5, 10), kind=SCORE_KIND)
    has = per["has_relevant"]
    entry: dict = {
        "n": int(has.sum()),
        "queries_without_relevant": int(has.size - has.sum()),
        "gallery": int(gi.size),
        "split": tl.split,
        "list": tl.name,
    }
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
    direction, and verification if a val list exists; scored with the −L2 rule of
    :func:`evaluate` (same lists reader, item loader, embedding and metrics code).

    Metric names: ``val_matching_{direction}_k{k}`` (accuracy) and ``val_verification_auc``."""

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
    ):
        self.shards, self.batch_size = Path(shards), batch_size
        lists = read_tuple_lists(tuples_dir)
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

    def score(self, model, device: torch.device) -> dict[str, float]:
        """Metric name -> value; the model is left in eval mode."""
        model.eval()
        if self.decoded is None:
            self.decoded = decode_items(self.items, self.shards)
        emb = embed_items(
            model, self.items, self.shards, self.batch_size, device, set(), decoded=self.decoded
        )
        out = {}
        for tl in self.lists:
            if tl.task == "matching":
                qm, gm = _qg(emb, tl.direction)
                qi = np.array([emb.row[qm][r["query"]] for r in tl.rows], dtype=np.intp)
                gi = np.array([[emb.row[gm][g] for g in r["gallery"]] for r in tl.rows], dtype=np.intp)
                labels = np.array([int(r["label"]) for r in tl.rows], dtype=np.intp)
                out[self.metric_name(tl)] = float(
                    M.matching_accuracy(
                        M.gather_scores(emb.h[qm], emb.h[gm], qi, gi, kind=SCORE_KIND), labels
                    )
                )
            else:
                scores, y, _, _ = _verification_scores(tl, emb)
                if y.min() == y.max():
                    raise EvaluationError(f"{tl.name}: verification needs both positive and negative pairs")
                out[self.metric_name(tl)] = float(M.roc_auc(scores, y))
        return dict(sorted(out.items()))


def evaluate(
    run: str | Path,
    shards: str | Path,
    tuples_dir: str | Path,
    out: str | Path | None = None,
    batch_size: int = 64,
    device: str = "auto",
    n_boot: int = 1000,
    seed: int = 0,
    echo: Callable[[str], None] | None = print,
    checkpoint: str = "last",
) -> dict:
    """Evaluate RUN's ``checkpoint`` (last, best or a path) on every list of tuples_dir/index;
    write metrics.json (default RUN/metrics.json), RUN/embeddings.npz and the headline metrics
    into RUN/tb (TensorBoard); return the metrics dict."""
    run = Path(run)
    out = Path(out) if out else run / "metrics.json"
    if batch_size < 1 or n_boot < 1:
        raise EvaluationError("--batch-size and --bootstrap must be >= 1")
    dev = pick_device(device)  # an unknown device: one-line DeviceError
    model, state, cfg = load_run(run, dev, checkpoint)
    lists = read_tuple_lists(tuples_dir)
    if not lists:
        raise EvaluationError(
            f"{tuples_dir}: no non-empty matching, verification or retrieval list in index/"
        )
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
    emb = embed_items(model, items, shards, batch_size, dev, keep)

    result: dict = {
        "run": str(run),
        "checkpoint": str(checkpoint),
        "checkpoint_epoch": int(state.get("epoch", 0)),
        "checkpoint_step": int(state.get("step", 0)),
        "config": state["config"],
        "scoring": {"kind": SCORE_KIND, "rule": "score = -Euclidean distance between 128-d embeddings"},
        "bootstrap": {"n": int(n_boot), "seed": int(seed), "ci": 0.95, "method": "percentile"},
        "shards": str(shards),
        "tuples": str(tuples_dir),
        "items": {
            "audio": len(emb.keys["audio"]),
            "face": len(emb.keys["face"]),
            "forward_rows": int(emb.forward_rows),
        },
    }

    matching_lists = [t for t in lists if t.task == "matching"]
    splits = sorted({t.split for t in matching_lists if not t.constraint})
    primary = "test" if "test" in splits else (splits[0] if splits else None)
    matching: dict = {}
    extra: dict = {}
    # per item outcomes of every list, for paired comparisons of runs (outcomes.py, compare.py)
    pending: list[tuple[str, dict]] = []

    def record(prefix: str) -> dict:
        got: dict = {}
        pending.append((prefix, got))
        return got

    for tl in sorted(matching_lists, key=lambda t: (t.direction, t.k, t.name)):
        primary_list = tl.split == primary and not tl.constraint
        prefix = f"matching/{tl.direction}/k{tl.k}" if primary_list else f"matching_other/{tl.name}"
        entry = _matching_entry(tl, emb, model, cfg, dev, n_boot, seed, record(prefix))
        if primary_list:
            matching.setdefault(tl.direction, {})[f"k{tl.k}"] = entry
        else:
            extra[tl.name] = entry
    result["matching"] = matching
    result["matching_split"] = primary
    result["matching_other"] = extra
    result["verification"] = {}
    for t in lists:
        if t.task == "verification":
            name = t.name[len("verification_") :]
            got = record(f"verification/{name}")
            result["verification"][name] = _verification_entry(t, emb, model, cfg, dev, n_boot, seed, got)
    retrieval: dict = {}
    for t in lists:
        if t.task == "retrieval":
            got = record(f"retrieval/{t.split}/{t.direction}")
            retrieval.setdefault(t.split, {})[t.direction] = _retrieval_entry(t, emb, n_boot, seed, got)
    result["retrieval"] = retrieval
    outcomes = {f"{prefix}/{k}": v for prefix, got in pending for k, v in got.items()}
    result["pair_distance"] = pair_distance_report(emb, samples)
    result["embeddings"] = save_embedding_sample(emb, samples, run / EMBEDDINGS_FILE)

    atomic_write_text(out, json.dumps(result, sort_keys=True, indent=1) + "\n")
    save_outcomes(out.with_name(OUTCOMES_FILE), outcomes)
    write_tensorboard(run / "tb", result)
    if echo:
        echo(format_table(result))
        echo(f"wrote {out}")
    return result
