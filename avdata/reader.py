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
