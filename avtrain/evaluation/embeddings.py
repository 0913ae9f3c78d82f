"""Every item referenced by the evaluation lists, read once from the item shards (explicit
decoders, never unpickled), normalised as in training and embedded once, in batches. A modality of
a frozen encoder (``model.voice_encoder`` / ``face_encoder``) is read from its feature store
instead: the encoder's vectors, by key (``frozen``, :class:`avtrain.train.features.FrozenInputs`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from avtrain.evaluation.tuple_lists import EvaluationError, TupleList, needed_items


@dataclass
class Embeddings:
    """Per modality: sorted keys, identities, the method's embeddings h (N, D) float64, and the
    method's diagnostic features (AML: 3200-d before the generator) of a subset."""

    keys: dict[str, list[str]]
    ids: dict[str, np.ndarray]
    h: dict[str, np.ndarray]
    row: dict[str, dict[str, int]]
    features: dict[str, dict[str, np.ndarray]]  # modality -> key -> (F,) float32 (subset only)
    forward_rows: int = 0  # rows that went through a branch (== number of distinct items)


def _decode(modality: str, data: bytes, ext: str, key: str) -> np.ndarray:
    from avdata.errors import AvmatchError
    from avdata.items import decode_item

    try:
        return decode_item(modality, data, ext, key)
    except AvmatchError as exc:
        raise EvaluationError(str(exc)) from None


def _sorted_items(items, modality: str):
    """The rows of ``items`` of one modality in the order embeddings are kept (by key)."""
    return items[items["modality"] == modality].sort_values("key", kind="mergesort")


def decode_items(items, shards_root: str | Path, frozen=None) -> dict[str, np.ndarray]:
    """modality -> the decoded arrays of every row of ``items`` (an index_items DataFrame) of that
    modality, in :func:`embed_items`' order: read and decoded once, for callers that embed the
    same items again and again (``fit``'s validation, every epoch). (N, 224, 125) float32
    spectrograms and (N, 224, 224, 3) uint8 faces: 112 kB and 147 kB an item."""
    from avdata.reader import read_member

    root = Path(shards_root)
    out = {}
    for modality in ("audio", "face"):
        if frozen is not None and modality in frozen.modalities:
            out[modality] = frozen.vectors(modality, _sorted_items(items, modality)["key"].tolist())
            continue
        recs = _sorted_items(items, modality)[["key", "tar", "data_ext", "data_offset", "data_size"]]
        arrays = [
            _decode(modality, read_member(root / tar, int(off), int(size)), ext, key)
            for key, tar, ext, off, size in recs.itertuples(index=False)
        ]
        out[modality] = np.stack(arrays) if arrays else np.empty((0,))
    return out


def embed_items(
    model,
    items,
    shards_root: str | Path,
    batch_size: int,
    device: torch.device,
    keep_features: set[str],
    progress: Callable[[str], None] | None = None,
    decoded: dict[str, np.ndarray] | None = None,
    frozen=None,
) -> Embeddings:
    """Embed every row of ``items`` (an index_items DataFrame, already restricted to the
    needed keys) exactly once with ``model.embed`` (any method on the seam); keep the
    diagnostic features (``model.features``, where the method has them) of ``keep_features``.
    ``decoded`` (:func:`decode_items` of the same items): the arrays, instead of reading and
    decoding the items again. ``frozen``: the feature stores of the frozen modalities."""
    from avdata.reader import read_member
    from avtrain.methods.encoders import to_branch_input

    root = Path(shards_root)
    out = Embeddings({}, {}, {}, {}, {})
    for modality in ("audio", "face"):
        df = _sorted_items(items, modality)
        keys = df["key"].tolist()
        out.keys[modality] = keys
        out.ids[modality] = df["vox_id"].to_numpy(dtype=str)
        out.row[modality] = {k: i for i, k in enumerate(keys)}
        out.features[modality] = {}
        h = np.zeros((len(keys), model.embed_dim), dtype=np.float64)
        recs = df[["key", "tar", "data_ext", "data_offset", "data_size"]].to_records(index=False)
        is_frozen = frozen is not None and modality in frozen.modalities
        for s in range(0, len(recs), batch_size):
            if decoded is not None:
                batch = decoded[modality][s : s + batch_size]
            elif is_frozen:
                batch = frozen.vectors(modality, keys[s : s + batch_size])
            else:
                batch = np.stack(
                    [
                        _decode(modality, read_member(root / tar, int(off), int(size)), ext, key)
                        for key, tar, ext, off, size in recs[s : s + batch_size]
                    ]
                )
            x = to_branch_input(modality, batch, is_frozen)
            with torch.inference_mode():
                hb, fb = model.embed_with_features(modality, x.to(device))
            out.forward_rows += x.shape[0]
            h[s : s + len(batch)] = hb.double().cpu().numpy()
            if fb is not None:
                feats = fb.float().cpu().numpy()
                for j, key in enumerate(recs["key"][s : s + batch_size]):
                    if key in keep_features:
                        out.features[modality][key] = feats[j].copy()
            if progress:
                progress(f"{modality}: {min(s + batch_size, len(recs))}/{len(recs)}")
        if not np.isfinite(h).all():
            raise EvaluationError(f"{modality}: the model produced NaN/inf embeddings")
        out.h[modality] = h
    return out


def load_items(lists: list[TupleList], shards: str | Path, tuples_dir: str | Path):
    """(needed key -> modality, index_items rows of exactly those keys), checked: every key
    present once, with the modality the lists use it as."""
    from avdata.reader import index_items

    need = needed_items(lists)
    items = index_items(shards)  # a missing or unsafe shard dir: a one-line AvmatchError
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
