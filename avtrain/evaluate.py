"""avtrain evaluate: score a trained AML run on the fixed evaluation lists of a tuple directory.

Every item (voice window or face) referenced by the index files ``DIR/index/*.jsonl`` is
read once from the item shards (explicit decoders, never unpickled), normalised as in
training and embedded once, in batches; tuples, pairs and retrieval queries are then
scored by gathering embedding rows (:mod:`avtrain.metrics`). The cost of the forward
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

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from avdata.errors import AvmatchError, InputError
from avdata.io import atomic_write_text
from avdata.tuples import index_lists
from avtrain import metrics as M
from avtrain.checkpoint import CheckpointError, DeviceError, load_run, pick_device  # noqa: F401 (re-exported)

SCORE_KIND = "neg_l2"
ROC_POINTS = 201  # ROC polyline points kept in metrics.json for the report
PAIR_SAMPLE = 1000  # items per modality for the before/after-generator distances
TSNE_IDENTITIES = 10  # identities in RUN/embeddings.npz
TSNE_MAX_ITEMS = 400  # items (both modalities) in RUN/embeddings.npz
EMBEDDINGS_FILE = "embeddings.npz"
MODALITY_OF_ROLE = {
    ("a2v", "query"): "audio",
    ("a2v", "gallery"): "face",
    ("v2a", "query"): "face",
    ("v2a", "gallery"): "audio",
}


class EvaluationError(AvmatchError, ValueError):
    """A problem with the inputs of an evaluation (one line, for the CLI)."""


# --------------------------------------------------------------------------- tuple lists


@dataclass
class TupleList:
    """One evaluation list of ``DIR/index``."""

    name: str  # file stem (retrieval: without _queries/_gallery)
    task: str  # matching | verification | retrieval
    split: str
    direction: str
    k: int = 0
    constraint: str = ""
    rows: list = field(default_factory=list)  # matching/verification tuples; retrieval queries
    gallery: list = field(default_factory=list)  # retrieval gallery lines


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise EvaluationError(f"{path}:{n}: not JSON ({exc.msg})") from None
    return rows


def read_tuple_lists(tuples_dir: str | Path) -> list[TupleList]:
    """Every non-empty list of a tuple directory, as its manifest.json records it (avdata.tuples
    owns the format), sorted by (task, name). Empty lists (a split with too few identities for
    that k) are left out."""
    try:
        indexed = index_lists(tuples_dir)
    except InputError as exc:
        raise EvaluationError(str(exc)) from None
    lists: list[TupleList] = []
    for il in indexed:
        rows = _read_jsonl(il.path)
        tl = TupleList(il.name, il.task, il.split, il.direction, il.k, il.constraint, rows)
        if il.task == "retrieval":
            tl.gallery = _read_jsonl(il.gallery)
            if bool(tl.rows) != bool(tl.gallery):
                raise EvaluationError(f"{il.path}: retrieval {il.name} needs both queries and a gallery")
        elif il.task == "verification" and rows:
            tl.split = rows[0].get("split", il.split)
        if not rows:
            continue
        if il.task == "matching":  # a tuple's gallery size must agree with its list's k
            bad = next((r for r in rows if len(r["gallery"]) != il.k), None)
            if bad is not None:
                raise EvaluationError(
                    f"{il.name}: tuple {bad.get('tuple_id')} has {len(bad['gallery'])} gallery items, expected {il.k}"
                )
        lists.append(tl)
    return lists


def needed_items(lists: list[TupleList]) -> dict[str, str]:
    """key -> modality ('audio' or 'face') of every item the lists reference."""
    need: dict[str, str] = {}

    def add(key: str, modality: str, where: str):
        if need.setdefault(key, modality) != modality:
            raise EvaluationError(f"{where}: item {key} is used both as audio and as face")

    for tl in lists:
        if tl.task == "retrieval":
            for r in tl.rows:
                add(r["query"], MODALITY_OF_ROLE[tl.direction, "query"], tl.name)
            for g in tl.gallery:
                add(g["key"], MODALITY_OF_ROLE[tl.direction, "gallery"], tl.name)
            continue
        for r in tl.rows:
            d = r.get("direction", tl.direction)
            add(r["query"], MODALITY_OF_ROLE[d, "query"], tl.name)
            for g in r["gallery"]:
                add(g, MODALITY_OF_ROLE[d, "gallery"], tl.name)
    return need


# --------------------------------------------------------------------------- model and items


@dataclass
class Embeddings:
    """Per modality: sorted keys, identities, 128-d h (float64), and 3200-d features of a subset."""

    keys: dict[str, list[str]]
    ids: dict[str, np.ndarray]
    h: dict[str, np.ndarray]
    row: dict[str, dict[str, int]]
    features: dict[str, dict[str, np.ndarray]]  # modality -> key -> (3200,) float32 (subset only)
    forward_rows: int = 0  # rows that went through a branch (== number of distinct items)


def _decode(modality: str, data: bytes, ext: str, key: str) -> np.ndarray:
    from avdata.reader import decode_jpg, decode_npy

    if modality == "audio":
        if ext != "npy":
            raise EvaluationError(f"{key}: audio item stored as .{ext}, expected .npy")
        x = decode_npy(data)
        if x.shape != (224, 125):
            raise EvaluationError(f"{key}: spectrogram of shape {x.shape}, expected (224, 125)")
        return x
    if ext != "jpg":
        raise EvaluationError(f"{key}: face item stored as .{ext}, expected .jpg")
    x = decode_jpg(data)
    if x.shape != (224, 224, 3):
        raise EvaluationError(f"{key}: face of shape {x.shape}, expected (224, 224, 3)")
    return x


def embed_items(
    model,
    items,
    shards_root: str | Path,
    batch_size: int,
    device: torch.device,
    keep_features: set[str],
    progress: Callable[[str], None] | None = None,
) -> Embeddings:
    """Embed every row of ``items`` (an index_items DataFrame, already restricted to the
    needed keys) exactly once; keep the 3200-d branch features of ``keep_features``."""
    from avdata.reader import read_member
    from avtrain.models import normalise_audio, normalise_face

    root = Path(shards_root)
    out = Embeddings({}, {}, {}, {}, {})
    for modality in ("audio", "face"):
        df = items[items["modality"] == modality].sort_values("key", kind="mergesort")
        keys = df["key"].tolist()
        out.keys[modality] = keys
        out.ids[modality] = df["vox_id"].to_numpy(dtype=str)
        out.row[modality] = {k: i for i, k in enumerate(keys)}
        out.features[modality] = {}
        h = np.zeros((len(keys), 128), dtype=np.float64)
        branch = model.audio_branch if modality == "audio" else model.visual_branch
        embed = model.embed_audio if modality == "audio" else model.embed_face
        captured: list[torch.Tensor] = []
        hook = branch.register_forward_hook(lambda _m, _i, o: captured.append(o.detach().flatten(1)))
        try:
            recs = df[["key", "tar", "data_ext", "data_offset", "data_size"]].to_records(index=False)
            for s in range(0, len(recs), batch_size):
                arrays = []
                for key, tar, ext, off, size in recs[s : s + batch_size]:
                    arrays.append(_decode(modality, read_member(root / tar, int(off), int(size)), ext, key))
                batch = np.stack(arrays)
                x = normalise_audio(batch) if modality == "audio" else normalise_face(batch)
                captured.clear()
                with torch.inference_mode():
                    hb = embed(x.to(device))
                out.forward_rows += x.shape[0]
                h[s : s + len(arrays)] = hb.double().cpu().numpy()
                feats = captured[0].float().cpu().numpy()
                for j, key in enumerate(recs["key"][s : s + batch_size]):
                    if key in keep_features:
                        out.features[modality][key] = feats[j].copy()
                if progress:
                    progress(f"{modality}: {min(s + batch_size, len(recs))}/{len(recs)}")
        finally:
            hook.remove()
        if not np.isfinite(h).all():
            raise EvaluationError(f"{modality}: the model produced NaN/inf embeddings")
        out.h[modality] = h
    return out


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


def _matching_entry(tl: TupleList, emb: Embeddings, model, cfg, device, n_boot: int, seed: int) -> dict:
    qm, gm = _qg(emb, tl.direction)
    qi = np.array([emb.row[qm][r["query"]] for r in tl.rows], dtype=np.intp)
    gi = np.array([[emb.row[gm][g] for g in r["gallery"]] for r in tl.rows], dtype=np.intp)
    labels = np.array([int(r["label"]) for r in tl.rows], dtype=np.intp)
    scores = M.gather_scores(emb.h[qm], emb.h[gm], qi, gi, kind=SCORE_KIND)
    correct = (np.argmax(scores, axis=1) == labels).astype(
        np.float64
    )  # ties: first index (matching_accuracy)
    acc = M.matching_accuracy(scores, labels)
    entry = _summary(acc, M.bootstrap_ci(correct, n_boot=n_boot, seed=seed))
    entry.update(n=int(len(tl.rows)), chance=1.0 / tl.k, split=tl.split, list=tl.name)
    if cfg.task == "matching" and cfg.k == tl.k and cfg.direction == tl.direction:
        # the learned head, applied to the same gathered embeddings (no extra branch passes)
        pred = np.empty(len(tl.rows), dtype=np.intp)
        with torch.inference_mode():
            for s in range(0, len(tl.rows), 4096):
                hq = torch.from_numpy(emb.h[qm][qi[s : s + 4096]]).float().to(device)
                hg = torch.from_numpy(emb.h[gm][gi[s : s + 4096]]).float().to(device)
                pred[s : s + 4096] = model.head(hq, hg).argmax(1).cpu().numpy()
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


def _verification_entry(tl: TupleList, emb: Embeddings, model, cfg, device, n_boot: int, seed: int) -> dict:
    scores, y, vi, fi = _verification_scores(tl, emb)
    if y.min() == y.max():
        raise EvaluationError(f"{tl.name}: verification needs both positive and negative pairs")
    auc, eer = M.roc_auc(scores, y), M.equal_error_rate(scores, y)
    fpr, tpr, _ = M.roc_curve(scores, y)
    entry = {
        "auc": _summary(auc, _ci_pairs(scores, y, M.roc_auc, n_boot, seed)),
        "eer": _summary(eer, _ci_pairs(scores, y, M.equal_error_rate, n_boot, seed)),
        "n": int(y.size),
        "n_pos": int(y.sum()),
        "n_neg": int(y.size - y.sum()),
        "split": tl.split,
        "list": tl.name,
        "roc": _subsample_curve(fpr, tpr),
    }
    if cfg.task == "verification":
        ha, hf = torch.from_numpy(emb.h["audio"][vi]).float(), torch.from_numpy(emb.h["face"][fi]).float()
        hq, hg = (ha, hf) if cfg.direction == "a2v" else (hf, ha)
        with torch.inference_mode():
            logits = model.head(hq.to(device), hg.to(device)).float().cpu().numpy()
        hs = logits[:, 1] - logits[:, 0]
        entry["head_auc"] = _summary(M.roc_auc(hs, y), _ci_pairs(hs, y, M.roc_auc, n_boot, seed))
    return entry


def _retrieval_entry(tl: TupleList, emb: Embeddings, n_boot: int, seed: int) -> dict:
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
        entry[name] = _summary(v.mean(), M.bootstrap_ci(v, n_boot=n_boot, seed=seed)) if v.size else None
    return entry


# --------------------------------------------------------------------------- distances / samples


def _distance_sums(a: np.ndarray, f: np.ndarray, aid: np.ndarray, fid: np.ndarray) -> tuple[float, int]:
    """(sum, count) of Euclidean distances over all different-identity (audio, face) pairs."""
    a64, f64 = a.astype(np.float64), f.astype(np.float64)
    f_sq = np.einsum("nd,nd->n", f64, f64)
    total, count = 0.0, 0
    rows = max(1, (1 << 22) // max(1, f64.shape[0]))
    for s in range(0, a64.shape[0], rows):
        ab = a64[s : s + rows]
        d2 = np.einsum("nd,nd->n", ab, ab)[:, None] + f_sq[None, :] - 2.0 * (ab @ f64.T)
        d = np.sqrt(np.maximum(d2, 0.0))
        mask = aid[s : s + rows, None] != fid[None, :]
        total += float(d[mask].sum())
        count += int(mask.sum())
    return total, count


def pair_distances(
    audio: dict[str, np.ndarray], face: dict[str, np.ndarray], a_ids: np.ndarray, f_ids: np.ndarray
) -> dict:
    """Same- and different-identity mean audio-face distances in one space, and their ratio."""
    same = M.mean_pair_distance(audio["x"], face["x"], a_ids, f_ids)
    total, count = _distance_sums(audio["x"], face["x"], a_ids, f_ids)
    diff = total / count if count else float("nan")
    return {
        "same": float(same),
        "different": float(diff),
        "normalised": float(same / diff) if count and diff > 0 else None,
    }


def _sample_keys(emb: Embeddings, seed: int) -> tuple[set[str], dict[str, list[str]]]:
    """Keys whose 3200-d features are kept: a seeded sample of up to PAIR_SAMPLE items per
    modality (pair distances) and the t-SNE sample (up to TSNE_IDENTITIES identities with
    both modalities, at most TSNE_MAX_ITEMS items)."""
    rng = np.random.default_rng([seed, 8])
    pair = {}
    for m in ("audio", "face"):
        keys = emb.keys[m]
        take = sorted(rng.choice(len(keys), size=min(PAIR_SAMPLE, len(keys)), replace=False)) if keys else []
        pair[m] = [keys[i] for i in take]
    both = sorted(set(emb.ids["audio"]) & set(emb.ids["face"]))
    chosen = (
        sorted(rng.choice(both, size=min(TSNE_IDENTITIES, len(both)), replace=False).tolist()) if both else []
    )
    per_identity = max(1, TSNE_MAX_ITEMS // (2 * max(1, len(chosen))))
    tsne: dict[str, list[str]] = {}
    for m in ("audio", "face"):
        keys, ids = emb.keys[m], emb.ids[m]
        tsne[m] = [k for v in chosen for k in [keys[i] for i in np.flatnonzero(ids == v)][:per_identity]]
    return set(pair["audio"]) | set(pair["face"]) | set(tsne["audio"]) | set(tsne["face"]), {
        "pair": pair,
        "tsne": tsne,
    }


def _rows(emb: Embeddings, modality: str, keys: list[str]) -> np.ndarray:
    return np.array([emb.row[modality][k] for k in keys], dtype=np.intp)


def _feature_stack(emb: Embeddings, modality: str, keys: list[str]) -> np.ndarray:
    if not keys:
        return np.zeros((0, 3200), dtype=np.float32)
    return np.stack([emb.features[modality][k] for k in keys])


def pair_distance_report(emb: Embeddings, samples: dict) -> dict:
    keys = samples["pair"]
    a_ids = emb.ids["audio"][_rows(emb, "audio", keys["audio"])]
    f_ids = emb.ids["face"][_rows(emb, "face", keys["face"])]
    out = {
        "n_audio": len(keys["audio"]),
        "n_face": len(keys["face"]),
        "n_identities_both": int(len(set(a_ids) & set(f_ids))),
    }
    if not out["n_identities_both"]:
        return out | {"before": None, "after": None}
    out["before"] = pair_distances(
        {"x": _feature_stack(emb, "audio", keys["audio"])},
        {"x": _feature_stack(emb, "face", keys["face"])},
        a_ids,
        f_ids,
    )
    out["after"] = pair_distances(
        {"x": emb.h["audio"][_rows(emb, "audio", keys["audio"])]},
        {"x": emb.h["face"][_rows(emb, "face", keys["face"])]},
        a_ids,
        f_ids,
    )
    out["dims"] = {"before": 3200, "after": 128}
    return out


def save_embedding_sample(emb: Embeddings, samples: dict, path: Path) -> dict:
    """RUN/embeddings.npz: plain arrays (loadable with allow_pickle=False)."""
    keys = samples["tsne"]
    arrays = {}
    for m in ("audio", "face"):
        r = _rows(emb, m, keys[m])
        arrays[f"{m}_keys"] = np.array(keys[m], dtype=str)
        arrays[f"{m}_ids"] = emb.ids[m][r].astype(str)
        arrays[f"{m}_before"] = _feature_stack(emb, m, keys[m]).astype(np.float32)
        arrays[f"{m}_after"] = emb.h[m][r].reshape(-1, 128).astype(np.float32)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return {
        "path": path.name,
        "audio": len(keys["audio"]),
        "face": len(keys["face"]),
        "identities": int(len(set(arrays["audio_ids"]) | set(arrays["face_ids"]))),
    }


# --------------------------------------------------------------------------- entry point


def _pick_device(name: str) -> torch.device:
    try:
        return pick_device(name)
    except DeviceError as exc:
        raise EvaluationError(f"--device: {exc}") from None


def load_items(lists: list[TupleList], shards: str | Path, tuples_dir: str | Path):
    """(needed key -> modality, index_items rows of exactly those keys), checked: every key
    present once, with the modality the lists use it as."""
    from avdata.reader import index_items

    need = needed_items(lists)
    try:
        items = index_items(shards)
    except FileNotFoundError as exc:
        raise EvaluationError(str(exc)) from None
    items = items[items["key"].isin(set(need))]
    dup = items["key"].duplicated()
    if dup.any():
        raise EvaluationError(f"{shards}: item {items['key'][dup].iloc[0]} occurs in more than one shard")
    missing = sorted(set(need) - set(items["key"]))
    if missing:
        raise EvaluationError(
            f"{len(missing)} item(s) referenced by {tuples_dir} are not in {shards}, e.g. {missing[0]}"
        )
    wrong = items[items["modality"] != items["key"].map(need)]
    if len(wrong):
        raise EvaluationError(
            f"{wrong['key'].iloc[0]}: is {wrong['modality'].iloc[0]} in the shards but used as {need[wrong['key'].iloc[0]]}"
        )
    return need, items


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
        self.need, self.items = load_items(self.lists, shards, tuples_dir)

    @staticmethod
    def metric_name(tl: TupleList) -> str:
        return "val_verification_auc" if tl.task == "verification" else f"val_matching_{tl.direction}_k{tl.k}"

    def score(self, model, device: torch.device) -> dict[str, float]:
        """Metric name -> value; the model is left in eval mode."""
        model.eval()
        emb = embed_items(model, self.items, self.shards, self.batch_size, device, set())
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
    dev = _pick_device(device)
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
    keep, samples = _sample_keys(pre, seed)
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
    for tl in sorted(matching_lists, key=lambda t: (t.direction, t.k, t.name)):
        entry = _matching_entry(tl, emb, model, cfg, dev, n_boot, seed)
        if tl.split == primary and not tl.constraint:
            matching.setdefault(tl.direction, {})[f"k{tl.k}"] = entry
        else:
            extra[tl.name] = entry
    result["matching"] = matching
    result["matching_split"] = primary
    result["matching_other"] = extra
    result["verification"] = {
        t.name[len("verification_") :]: _verification_entry(t, emb, model, cfg, dev, n_boot, seed)
        for t in lists
        if t.task == "verification"
    }
    retrieval: dict = {}
    for t in lists:
        if t.task == "retrieval":
            retrieval.setdefault(t.split, {})[t.direction] = _retrieval_entry(t, emb, n_boot, seed)
    result["retrieval"] = retrieval
    result["pair_distance"] = pair_distance_report(emb, samples)
    result["embeddings"] = save_embedding_sample(emb, samples, run / EMBEDDINGS_FILE)

    atomic_write_text(out, json.dumps(result, sort_keys=True, indent=1) + "\n")
    write_tensorboard(run / "tb", result)
    if echo:
        echo(format_table(result))
        echo(f"wrote {out}")
    return result


def headline(m: dict) -> dict[str, float]:
    """The metrics worth a TensorBoard scalar: matching accuracy per direction and k,
    verification AUC/EER per list, retrieval mAP and R@10 per split and direction."""
    out = {}
    for d, ks in m["matching"].items():
        for k, e in ks.items():
            out[f"eval/matching_{d}_{k}"] = e["value"]
    for name, e in m["verification"].items():
        out[f"eval/verification_{name}_auc"] = e["auc"]["value"]
        out[f"eval/verification_{name}_eer"] = e["eer"]["value"]
    for split, dirs in m["retrieval"].items():
        for d, e in dirs.items():
            for key in ("mAP", "R@10"):
                if e.get(key):
                    out[f"eval/retrieval_{split}_{d}_{key.replace('@', '_at_')}"] = e[key]["value"]
    return dict(sorted(out.items()))


def write_tensorboard(tb_dir: Path, m: dict) -> None:
    """Headline metrics as scalars at the checkpoint's step (skipped without tensorboard)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    with contextlib.closing(SummaryWriter(str(tb_dir))) as tb:
        for tag, value in headline(m).items():
            tb.add_scalar(tag, value, m["checkpoint_step"])


# --------------------------------------------------------------------------- stdout table


def _fmt(e: dict | None) -> str:
    if not e:
        return "-"
    ci = e.get("ci95")
    return (
        f"{100 * e['value']:.1f} [{100 * ci[0]:.1f},{100 * ci[1]:.1f}]" if ci else f"{100 * e['value']:.1f}"
    )


def format_table(m: dict) -> str:
    """A compact plain-text summary of metrics.json (values in %, 95% CI in brackets)."""
    lines = [f"{m['run']} (epoch {m['checkpoint_epoch']}; score -L2; %, 95% bootstrap CI)"]
    if m["matching"]:
        lines.append(f"matching, split {m['matching_split']}:")
        ks = sorted({int(k[1:]) for d in m["matching"].values() for k in d})
        lines.append(f"  {'k':>3}  {'a2v':<20} {'v2a':<20}")
        for k in ks:
            row = [_fmt(m["matching"].get(d, {}).get(f"k{k}")) for d in ("a2v", "v2a")]
            lines.append(f"  {k:>3}  {row[0]:<20} {row[1]:<20}")
    for name, e in m.get("matching_other", {}).items():
        lines.append(f"matching {name}: {_fmt(e)}")
    for name, e in m["verification"].items():
        lines.append(f"verification {name}: AUC {_fmt(e['auc'])}  EER {_fmt(e['eer'])}  (n={e['n']})")
    for split, dirs in m["retrieval"].items():
        for d, e in dirs.items():
            vals = "  ".join(f"{k} {_fmt(e[k])}" for k in ("R@1", "R@5", "R@10", "mAP"))
            lines.append(f"retrieval {split} {d}: {vals}  (queries={e['n']})")
    pd_ = m["pair_distance"]
    if pd_.get("before"):
        lines.append(
            "same-identity audio-face distance (raw / normalised by different-identity): "
            f"before G {pd_['before']['same']:.3f} / {pd_['before']['normalised']:.3f}, "
            f"after G {pd_['after']['same']:.3f} / {pd_['after']['normalised']:.3f}"
        )
    return "\n".join(lines)
