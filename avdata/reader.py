"""Reading shards back: local tar files opened by avmatch itself, explicit pickle-free
decoders only, every member checked before it is used.

* No URLs: webdataset's ``WebDataset(url)`` / ``gopen`` run ``pipe:CMD`` names as shell
  commands and fetch ``http:``/``s3:`` names, so shard paths are opened here with ``open``
  and read with :mod:`tarfile`; names read from a directory (``sizes.json`` keys) are
  checked by :mod:`avdata.untrusted` first.
* No pickles: webdataset's default decoders unpickle ``.pyd/.pkl/.pth`` members. Every
  member extension here has an explicit decoder, ``.npy`` is loaded with
  ``allow_pickle=False`` (object arrays are refused by their header), and a shard holding
  a pickle-type member is refused before anything in it is decoded.
* Members are plain files named ``KEY.EXT`` (keys hold no ``/`` or ``.``): absolute names,
  ``..``, directories, symlinks, hard links and devices are refused by name
  (:class:`UnsafeShardError`, one line).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from avdata.errors import AvmatchError, InputError
from avdata.untrusted import UnsafeShardError, check_local_path, read_inside, resolve_inside


class MissingInputError(AvmatchError, FileNotFoundError):
    """A directory lacks the file that makes it a shard or tuple directory (sizes.json).
    One line; also a FileNotFoundError for callers that catch that."""


PICKLE_EXTS = frozenset({"pyd", "pkl", "pickle", "pth", "pt", "ckpt"})


class NpyHeader(NamedTuple):
    """What a .npy header says: the array's shape, order, dtype, and where its data starts."""

    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype
    offset: int

    @property
    def file_bytes(self) -> int:
        """The size of a file holding exactly this array: header plus data."""
        return self.offset + self.dtype.itemsize * int(np.prod(self.shape))


def npy_header(f) -> NpyHeader:
    """The header of the .npy stream ``f`` (positioned at its start; left at the data), read
    without loading anything. ValueError saying why it is not a plain array that loads without
    pickle (the line :func:`npy_problem` returns)."""
    fmt = np.lib.format
    read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    try:
        version = fmt.read_magic(f)
        if version in read:
            shape, fortran, dtype = read[version](f)
    except (ValueError, EOFError, SyntaxError) as exc:
        raise ValueError(f"not a .npy array ({' '.join(str(exc).split())})") from None
    if version not in read:
        raise ValueError(f"unsupported .npy format version {version}")
    if dtype.hasobject:
        raise ValueError("an object array (a .npy holding pickled objects); nothing was unpickled")
    return NpyHeader(tuple(shape), fortran, dtype, f.tell())


def npy_problem(f) -> str | None:
    """Why the .npy stream ``f`` (positioned at its start) cannot be loaded without
    pickle, from its header alone; None if it is a plain array."""
    try:
        npy_header(f)
    except ValueError as exc:
        return str(exc)
    return None


def decode_npy(data: bytes) -> np.ndarray:
    problem = npy_problem(io.BytesIO(data))
    if problem:
        raise UnsafeShardError(f"refusing {problem}")
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

# KEY.EXT: keys hold no '.' or '/' (docs/shard-format.md); EXT may be several parts (q.npy)
_MEMBER = re.compile(r"^[A-Za-z0-9_+-]+\.[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")


def member_problem(m: tarfile.TarInfo) -> str | None:
    """Why a tar member cannot be part of an avmatch shard, or None."""
    name = m.name
    if name.startswith("/"):
        return "an absolute path"
    if ".." in name.split("/"):
        return "a '..' component (leaves the directory)"
    if m.issym():
        return f"a symlink (to {m.linkname!r})"
    if m.islnk():
        return f"a hard link (to {m.linkname!r})"
    if m.ischr() or m.isblk():
        return "a device file"
    if m.isfifo():
        return "a FIFO"
    if m.isdir():
        return "a directory"
    if not m.isreg():
        return "not a regular file"
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext in PICKLE_EXTS:
        return f"a pickle-type member (.{ext}); nothing was unpickled"
    if "/" in name:
        return "a path with '/' (sample keys hold none)"
    if not _MEMBER.match(name):
        return "not a KEY.EXT name of letters, digits, '_', '+' and '-'"
    if ext not in SAFE_DECODERS:
        return f"no explicit decoder for .{ext}"
    return None


def check_member(tar_path, m: tarfile.TarInfo) -> None:
    problem = member_problem(m)
    if problem:
        # "refusing a pickle-type member" is the wording tests and users grep for
        raise UnsafeShardError(f"{tar_path}: member {m.name!r}: refusing {problem}")


def decode_sample(sample: dict) -> dict:
    """Decode one raw sample dict (``__key__``, ``__url__``, EXT -> bytes) with
    SAFE_DECODERS; refuse pickles before decoding anything. A member that does not decode
    is a one-line error naming the shard, key and member."""
    out = {}
    url, key = sample.get("__url__", "?"), sample.get("__key__", "?")
    where = f"{url}: {key}"
    for name in sample:  # check every member before decoding any
        ext = name.rsplit(".", 1)[-1].lower()
        if not name.startswith("__") and ext in PICKLE_EXTS:
            raise UnsafeShardError(
                f"{where}.{name}: refusing a pickle-type member (.{ext}); nothing was unpickled"
            )
    for name, value in sample.items():
        if name.startswith("__"):
            out[name] = value
            continue
        ext = name.rsplit(".", 1)[-1].lower()
        decoder = SAFE_DECODERS.get(ext)
        if decoder is None:
            raise UnsafeShardError(f"{where}.{name}: no explicit decoder for .{ext}")
        try:
            out[name] = decoder(value)
        except UnsafeShardError as exc:
            raise UnsafeShardError(f"{where}.{name}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any decoder failure on untrusted bytes is a bad file
            raise InputError(
                url, f"{key}.{name}: cannot decode .{ext} ({type(exc).__name__}: {exc})"
            ) from None
    return out


def _open_tar_error(path, exc) -> InputError:
    return InputError(path, f"not a readable uncompressed tar ({type(exc).__name__}: {exc})")


def iter_tar_samples(path: str | Path):
    """Raw samples (``__key__``, ``__url__``, EXT -> bytes) of one local tar, in order,
    streamed; every member is checked (:func:`member_problem`) before it is read."""
    path = check_local_path(path)
    sample: dict | None = None
    seen: set[str] = set()
    try:
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for m in tar:
                check_member(path, m)
                key, _, ext = m.name.partition(".")
                if sample is None or sample["__key__"] != key:
                    if sample is not None:
                        yield sample
                    if key in seen:
                        raise UnsafeShardError(
                            f"{path}: sample {key!r} occurs twice (its members are not adjacent)"
                        )
                    seen.add(key)
                    sample = {"__key__": key, "__url__": str(path)}
                if ext in sample:
                    raise UnsafeShardError(f"{path}: member {m.name!r} occurs twice")
                sample[ext] = tar.extractfile(m).read()
                tar.members = []  # streaming: keep no member list
    except (tarfile.TarError, EOFError) as exc:
        raise _open_tar_error(path, exc) from None
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    if sample is not None:
        yield sample


def iter_samples(urls: list[str]):
    """Decoded samples of the given local shard files, in order (no URLs: see module doc)."""
    for url in urls:
        for sample in iter_tar_samples(url):
            yield decode_sample(sample)


def shard_urls(root: str | Path, split: str, modality: str) -> list[str]:
    """Sorted shard paths of one split and modality (each checked to stay inside root)."""
    root = Path(root)
    return [
        str(resolve_inside(root, p.relative_to(root).as_posix(), str(root)))
        for p in sorted((root / split).glob(f"{modality}-*.tar"))
    ]


def read_sizes(sizes_file: Path) -> dict[str, int]:
    """sizes.json as {name: count}: a JSON object of non-negative integers, else one line. Read
    as a regular file inside its directory, of at most MAX_METADATA_BYTES (:func:`read_inside`)."""
    sizes_file = Path(sizes_file)
    data = read_inside(sizes_file.parent, sizes_file.name, missing="missing")
    try:
        sizes = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsafeShardError(f"{sizes_file}: not valid JSON ({type(exc).__name__})") from None
    if not isinstance(sizes, dict):
        raise UnsafeShardError(f"{sizes_file}: not a JSON object of shard name -> count")
    for name, n in sizes.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise UnsafeShardError(f"{sizes_file}: {name!r}: count {n!r} is not a non-negative integer")
    return sizes


DATA_EXTS = ("npy", "jpg")


def index_shard(tar_path: str | Path) -> list[dict]:
    """One row per sample of a built shard: key, metadata, and where its array member
    lies in the tar (offset, size), so later stages can copy arrays by seeking instead of
    decoding a whole shard. Every member is checked first (names, types, no pickles, no
    object arrays); a sample without its .json or array member is refused by name."""
    tar_path = check_local_path(tar_path)
    rows: dict[str, dict] = {}
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            for m in tar:
                check_member(tar_path, m)
                key, _, ext = m.name.partition(".")
                row = rows.setdefault(key, {"key": key})
                if ext in row.get("_exts", ()):
                    raise UnsafeShardError(f"{tar_path}: member {m.name!r} occurs twice")
                row.setdefault("_exts", set()).add(ext)
                if ext == "json":
                    try:
                        row["meta"] = json.loads(tar.extractfile(m).read().decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                        raise InputError(
                            tar_path, f"{m.name}: not UTF-8 JSON ({type(exc).__name__})"
                        ) from None
                elif ext in DATA_EXTS:
                    if "data_ext" in row:
                        raise UnsafeShardError(f"{tar_path}: sample {key!r} has two array members")
                    if ext == "npy":
                        problem = npy_problem(tar.extractfile(m))
                        if problem:
                            raise UnsafeShardError(f"{tar_path}: member {m.name!r}: refusing {problem}")
                    row.update(data_ext=ext, data_offset=m.offset_data, data_size=m.size)
    except (tarfile.TarError, EOFError) as exc:
        raise _open_tar_error(tar_path, exc) from None
    for key, row in rows.items():
        row.pop("_exts")
        if not isinstance(row.get("meta"), dict):
            raise UnsafeShardError(f"{tar_path}: sample {key!r} has no {key}.json metadata object")
        if "data_ext" not in row:
            raise UnsafeShardError(f"{tar_path}: sample {key!r} has no {key}.npy or {key}.jpg member")
    return [r | {"tar": str(tar_path)} for r in rows.values()]


def read_member(tar_path: str | Path, offset: int, size: int) -> bytes:
    with open(tar_path, "rb") as f:
        f.seek(offset)
        return f.read(size)


# an item shard listed in sizes.json: SPLIT/{audio,face}-NNNNNN.tar
_ITEM_SHARD = re.compile(r"^[A-Za-z0-9_]+/(audio|face)-[0-9]+\.tar$")
META_FIELDS = ("vox_id", "name", "source_id", "source", "cls")


def index_items(shards_root: str | Path):
    """All samples of a shard directory as a DataFrame: split, modality, key, vox_id,
    name, source_id, source, cls, tar, data_ext, data_offset, data_size, source_modality
    (the kind of file ``source`` is: audio, face or video; None in shards that lack it). Sorted by
    (split, modality, key), so downstream draws see one fixed order. Every shard name in
    sizes.json is checked to be a SPLIT/{audio,face}-N.tar path inside the directory, and
    every shard's sample count against sizes.json."""
    import pandas as pd

    root = Path(shards_root)
    sizes_file = root / "sizes.json"
    if not os.path.lexists(sizes_file):  # anything else there is read_sizes' to refuse
        raise MissingInputError(
            f"{root}: not a shard directory (no sizes.json); run avdata build-shards first"
        )
    sizes = read_sizes(sizes_file)
    paths = {}
    for shard in sorted(sizes):
        path = resolve_inside(root, shard, str(sizes_file))
        if not _ITEM_SHARD.match(shard):
            raise UnsafeShardError(
                f"{sizes_file}: refusing the name {shard!r}: not a SPLIT/audio-N.tar or "
                f"SPLIT/face-N.tar shard name"
            )
        if not path.is_file():
            raise InputError(path, "listed in sizes.json but missing")
        paths[shard] = path
    records = []
    for shard, path in paths.items():
        split, fname = shard.split("/")
        modality = fname.split("-")[0]
        rows = index_shard(path)
        if len(rows) != sizes[shard]:
            raise UnsafeShardError(f"{path}: holds {len(rows)} samples, sizes.json says {sizes[shard]}")
        for r in rows:
            m = r["meta"]
            missing = [f for f in META_FIELDS if f not in m]
            if missing:
                raise UnsafeShardError(f"{path}: sample {r['key']!r}: metadata lacks {', '.join(missing)}")
            records.append(
                {
                    "split": split,
                    "modality": modality,
                    "key": r["key"],
                    "vox_id": m["vox_id"],
                    "name": m["name"],
                    "source_id": m["source_id"],
                    "source": m["source"],
                    "cls": m["cls"],
                    "tar": shard,
                    "data_ext": r["data_ext"],
                    "data_offset": r["data_offset"],
                    "data_size": r["data_size"],
                    "source_modality": m.get("source_modality"),
                }
            )
    cols = [
        "split",
        "modality",
        "key",
        "vox_id",
        "name",
        "source_id",
        "source",
        "cls",
        "tar",
        "data_ext",
        "data_offset",
        "data_size",
        "source_modality",
    ]
    df = pd.DataFrame(records, columns=cols)
    return df.sort_values(["split", "modality", "key"], kind="mergesort").reset_index(drop=True)
