"""Reading shards back: explicit, pickle-free decoders only.

webdataset's default decoders unpickle ``.pyd/.pkl/.pth`` members, so a shard from
anywhere could run code on load. Here every member extension has an explicit
decoder, ``.npy`` is loaded with ``allow_pickle=False``, and a shard holding a
pickle-type member is refused with :class:`UnsafeShardError` before anything in it
is decoded.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

PICKLE_EXTS = frozenset({"pyd", "pkl", "pickle", "pth", "pt", "ckpt"})


class UnsafeShardError(ValueError):
    """A shard member that could only be decoded by unpickling, or is unknown."""


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def decode_jpg(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


SAFE_DECODERS = {
    "npy": decode_npy,
    "jpg": decode_jpg,
    "json": lambda b: json.loads(b.decode("utf-8")),
    "cls": lambda b: int(b.decode("ascii")),
}


def decode_sample(sample: dict) -> dict:
    """Decode one raw webdataset sample dict with SAFE_DECODERS; refuse pickles."""
    out = {}
    where = f"{sample.get('__url__', '?')}: {sample.get('__key__', '?')}"
    for name in sample:  # check every member before decoding any
        ext = name.rsplit(".", 1)[-1].lower()
        if not name.startswith("__") and ext in PICKLE_EXTS:
            raise UnsafeShardError(f"{where}.{name}: refusing a pickle-type member (.{ext}); nothing was unpickled")
    for name, value in sample.items():
        if name.startswith("__"):
            out[name] = value
            continue
        ext = name.rsplit(".", 1)[-1].lower()
        decoder = SAFE_DECODERS.get(ext)
        if decoder is None:
            raise UnsafeShardError(f"{where}.{name}: no explicit decoder for .{ext}")
        out[name] = decoder(value)
    return out


def shard_urls(root: str | Path, split: str, modality: str) -> list[str]:
    """Sorted shard paths of one split and modality."""
    return [str(p) for p in sorted((Path(root) / split).glob(f"{modality}-*.tar"))]


def iter_samples(urls: list[str]):
    """Decoded samples of the given shards, in order (webdataset tar reading)."""
    import webdataset as wds

    if not urls:  # a split with no shards of this modality
        return
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).map(decode_sample)
    yield from ds


DATA_EXTS = ("npy", "jpg")


def index_shard(tar_path: str | Path) -> list[dict]:
    """One row per sample of a built shard: key, metadata, and where its array member
    lies in the tar (offset, size), so later stages can copy arrays by seeking
    instead of decoding a whole shard. Refuses pickle-type members like decode_sample."""
    import tarfile

    rows: dict[str, dict] = {}
    with tarfile.open(tar_path) as tar:
        for m in tar:
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            if ext.lower() in PICKLE_EXTS:
                raise UnsafeShardError(f"{tar_path}: {m.name}: refusing a pickle-type member (.{ext})")
            row = rows.setdefault(key, {"key": key})
            if ext == "json":
                row["meta"] = json.loads(tar.extractfile(m).read().decode("utf-8"))
            elif ext in DATA_EXTS:
                row.update(data_ext=ext, data_offset=m.offset_data, data_size=m.size)
    return [r | {"tar": str(tar_path)} for r in rows.values()]


def read_member(tar_path: str | Path, offset: int, size: int) -> bytes:
    with open(tar_path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def index_items(shards_root: str | Path):
    """All samples of a shard directory as a DataFrame: split, modality, key, vox_id,
    name, source_id, source, cls, tar, data_ext, data_offset, data_size. Sorted by
    (split, modality, key), so downstream draws see one fixed order."""
    import pandas as pd

    root = Path(shards_root)
    sizes_file = root / "sizes.json"
    if not sizes_file.is_file():
        raise FileNotFoundError(f"{root}: not a shard directory (no sizes.json); run avdata build-shards first")
    records = []
    for shard in sorted(json.loads(sizes_file.read_text())):
        split, fname = shard.split("/")
        modality = fname.split("-")[0]
        for r in index_shard(root / shard):
            m = r.pop("meta")
            records.append({"split": split, "modality": modality, "key": r["key"], "vox_id": m["vox_id"],
                            "name": m["name"], "source_id": m["source_id"], "source": m["source"], "cls": m["cls"], "tar": shard,
                            "data_ext": r["data_ext"], "data_offset": r["data_offset"], "data_size": r["data_size"]})
    cols = ["split", "modality", "key", "vox_id", "name", "source_id", "source", "cls", "tar", "data_ext", "data_offset", "data_size"]
    df = pd.DataFrame(records, columns=cols)
    return df.sort_values(["split", "modality", "key"], kind="mergesort").reset_index(drop=True)
