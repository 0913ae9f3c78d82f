"""Diagnostics beside the metrics: the same-identity audio–face distance before and after the
generator (the paper's Fig. 8) and the embedding sample behind the report's t-SNE plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avdata.io import atomic_output
from avtrain.evaluation import metrics as M
from avtrain.evaluation.embeddings import Embeddings

PAIR_SAMPLE = 1000  # items per modality for the before/after-generator distances
TSNE_IDENTITIES = 10  # identities in RUN/embeddings.npz
TSNE_MAX_ITEMS = 400  # items (both modalities) in RUN/embeddings.npz
EMBEDDINGS_FILE = "embeddings.npz"


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


def sample_keys(emb: Embeddings, seed: int) -> tuple[set[str], dict[str, list[str]]]:
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
    """(n, F) diagnostic features of ``keys``; (n, 0) for a method without features."""
    have = emb.features.get(modality, {})
    if not keys or not all(k in have for k in keys):
        width = next((v.shape[0] for v in have.values()), 0) if keys and have else 0
        return np.zeros((len(keys) if not have else 0, width), dtype=np.float32)
    return np.stack([have[k] for k in keys])


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
    before_a, before_f = (
        _feature_stack(emb, "audio", keys["audio"]),
        _feature_stack(emb, "face", keys["face"]),
    )
    has_before = before_a.shape[1] > 0 and before_f.shape[1] > 0
    out["before"] = pair_distances({"x": before_a}, {"x": before_f}, a_ids, f_ids) if has_before else None
    out["after"] = pair_distances(
        {"x": emb.h["audio"][_rows(emb, "audio", keys["audio"])]},
        {"x": emb.h["face"][_rows(emb, "face", keys["face"])]},
        a_ids,
        f_ids,
    )
    out["dims"] = {"before": int(before_a.shape[1]), "after": int(emb.h["audio"].shape[1])}
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
        arrays[f"{m}_after"] = emb.h[m][r].reshape(len(r), -1).astype(np.float32)
    with atomic_output(path) as f:  # np.savez to a file object adds no .npz suffix
        np.savez(f, **arrays)
    return {
        "path": path.name,
        "audio": len(keys["audio"]),
        "face": len(keys["face"]),
        "identities": int(len(set(arrays["audio_ids"]) | set(arrays["face_ids"]))),
    }
