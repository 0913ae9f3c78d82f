"""Items as model inputs: what an item's array member must be, and the decoded item store.

An item is one voice window (``.npy``, a (224, 125) float32 dB spectrogram) or one aligned
face (``.jpg``, 224×224 RGB) of an item shard (docs/shard-format.md). Training and evaluation
read items by key; this module owns what such a member must be (:data:`ITEM_FORMATS`), the
cheap check of a member from its first bytes (:func:`member_problem`, run on every item a
training list names before training starts) and the full decode (:func:`decode_item`).

**The decoded item store** (``avdata cache --shards SHARDS --out STORE``) holds every item of
the shards decoded once, as two ``.npy`` arrays a trainer memory-maps (``audio.npy``
(N, 224, 125) float32, ``face.npy`` (N, 224, 224, 3) uint8), ``items.jsonl`` (one line per item:
key, modality, row, vox_id, split) and ``manifest.json`` (written last: the source shards'
manifest sha256 and each file's sha256). A batch is then k+1 row copies, not k+1 JPEG decodes.
Spectrograms stay float32 (fp16 would halve them, but the faces are most of the bytes and the
rounding would make training inputs differ from what evaluation embeds); faces are the decoded
pixels of the JPEG, so a batch from the store is bit-identical to one decoded from the shards.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avdata.errors import AvmatchError


class ItemError(AvmatchError, ValueError):
    """An item or item store that cannot be used as a model input (one line)."""


@dataclass(frozen=True)
class ItemFormat:
    ext: str  # the member's extension in the item shards
    shape: tuple[int, ...]  # the decoded array's shape
    dtype: str  # the decoded (and stored) array's dtype
    max_bytes: int  # the largest member accepted (a header claiming more is refused unread)


ITEM_FORMATS = {
    "audio": ItemFormat("npy", (224, 125), "<f4", 1 << 20),  # 112,128 bytes as build-shards writes it
    "face": ItemFormat("jpg", (224, 224, 3), "|u1", 8 << 20),  # ~16 kB at quality 95
}
HEAD_BYTES = 4096  # what member_problem reads of a member: an .npy header, a JPEG's frame header


def member_problem(modality: str, ext: str, size: int, head: bytes) -> str | None:
    """Why an item member (extension, size, first bytes ``head``) cannot be a ``modality``
    input, or None. Cheap: the ``.npy`` header (shape, dtype, no objects, the size it implies)
    or the JPEG frame header (its size); nothing is decoded."""
    fmt = ITEM_FORMATS[modality]
    if ext != fmt.ext:
        return f"{modality} item stored as .{ext}, expected .{fmt.ext}"
    if size > fmt.max_bytes:
        return f"a .{ext} member of {size:,} bytes, above the {fmt.max_bytes:,} accepted"
    if ext == "npy":
        from avdata.reader import npy_header

        try:
            header = npy_header(io.BytesIO(head))
        except ValueError as exc:
            return str(exc)
        if header.shape != fmt.shape or header.dtype.str != fmt.dtype or header.fortran_order:
            return f"an array of shape {header.shape} {header.dtype.str}, expected {fmt.shape} {fmt.dtype}"
        if size != header.file_bytes:
            return f"a .npy of {size:,} bytes, not its header's {header.file_bytes:,}"
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(head)) as im:
            width, height = im.size
    except Exception:  # noqa: BLE001 - the frame header lies past HEAD_BYTES, or the bytes are no JPEG
        return "" if len(head) < size else "not a JPEG image"  # "": read the whole member and ask again
    if (height, width) != fmt.shape[:2]:
        return f"a {width}x{height} image, expected {fmt.shape[1]}x{fmt.shape[0]}"
    return None


def decode_item(modality: str, data: bytes, ext: str, where: str) -> np.ndarray:
    """The model-input array of an item member: a (224, 125) float32 spectrogram or a
    (224, 224, 3) uint8 face (explicit decoders, never unpickled). One line naming ``where``
    otherwise."""
    from avdata.reader import decode_jpg, decode_npy

    fmt = ITEM_FORMATS[modality]
    if ext != fmt.ext:
        raise ItemError(f"{where}: {modality} item stored as .{ext}, expected .{fmt.ext}")
    try:
        x = decode_npy(data) if ext == "npy" else decode_jpg(data)
    except AvmatchError as exc:
        raise ItemError(f"{where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure on untrusted bytes is a bad item
        raise ItemError(f"{where}: cannot decode .{ext} ({type(exc).__name__})") from None
    if x.shape != fmt.shape:
        raise ItemError(f"{where}: an array of shape {x.shape}, expected {fmt.shape}")
    return x.astype(fmt.dtype, copy=False)


# --------------------------------------------------------------------------- the item store

STORE_KIND = "avmatch.items"
STORE_FORMAT_VERSION = 1
STORE_ARRAYS = {"audio": "audio.npy", "face": "face.npy"}


def rebuild_hint(store) -> str:
    return f"rebuild it: avdata cache --shards SHARDS --out {store}"


def build_item_store(
    shards: str | Path, out: str | Path, splits: list[str] | None = None, progress=None
) -> dict:
    """Decode every item of ``shards`` (of ``splits``, default all) once into the store ``out``.
    Streams: one item in memory at a time. Each file is written atomically and
    ``manifest.json`` last, under ``out/.lock``. Returns {modality: items}."""
    from avdata.io import (
        atomic_output,
        check_output_dir,
        directory_lock,
        jsonl_text,
        sha256_text,
        write_json,
        write_jsonl,
    )
    from avdata.reader import index_items, read_member
    from avdata.tuples import SOURCE_SHARDS_KEY, check_out_dir, source_manifest_sha256, source_shards_link

    shards, out = Path(shards), Path(out)
    check_out_dir(shards, out)
    check_output_dir(out)
    source_sha = source_manifest_sha256(shards)
    items = index_items(shards)
    if splits:
        absent = sorted(set(splits) - set(items["split"]))
        if absent:
            raise ItemError(f"{shards}: no split {absent[0]}; splits present: {sorted(set(items['split']))}")
        items = items[items["split"].isin(splits)]
    files, lines, counts = {}, [], {}
    with directory_lock(out, "avdata cache"):
        for modality, name in STORE_ARRAYS.items():
            fmt = ITEM_FORMATS[modality]
            rows = items[items["modality"] == modality]
            counts[modality] = len(rows)
            digest = hashlib.sha256()
            with atomic_output(out / name) as f:
                header = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    header, {"descr": fmt.dtype, "fortran_order": False, "shape": (len(rows), *fmt.shape)}
                )
                f.write(header.getvalue())
                digest.update(header.getvalue())
                recs = rows[["key", "tar", "data_ext", "data_offset", "data_size", "vox_id", "split"]]
                for n, (key, tar, ext, off, size, vox_id, split) in enumerate(recs.itertuples(index=False)):
                    data = read_member(shards / tar, int(off), int(size))
                    x = decode_item(modality, data, ext, f"{shards / tar}: {key}")
                    chunk = np.ascontiguousarray(x).tobytes()
                    f.write(chunk)
                    digest.update(chunk)
                    lines.append(
                        {"key": key, "modality": modality, "row": n, "vox_id": vox_id, "split": split}
                    )
                    if progress and (n + 1) % 1000 == 0:
                        progress(f"{modality}: {n + 1}/{len(rows)}")
            files[name] = {"sha256": digest.hexdigest(), "shape": [len(rows), *fmt.shape], "dtype": fmt.dtype}
        write_jsonl(out / "items.jsonl", lines)
        files["items.jsonl"] = {"sha256": sha256_text(jsonl_text(lines)), "items": len(lines)}
        write_json(
            out / "manifest.json",
            {
                "kind": STORE_KIND,
                "format_version": STORE_FORMAT_VERSION,
                "source_shards_manifest_sha256": source_sha,
                SOURCE_SHARDS_KEY: source_shards_link(shards, out),
                "splits": sorted(set(items["split"])),
                "files": files,
            },
        )
    return counts


def stored_npy_header(root: Path, name: str, refuse):
    """(header, file size) of the .npy array file ``name`` that a store's manifest.json lists
    in ``root``: opened only as a regular file inside ``root``; not a plain array (or missing):
    ``refuse("NAME: why")``. The item store's and the feature store's (avtrain.encoders.store) arrays."""
    from avdata.reader import npy_header
    from avdata.untrusted import open_inside

    with open_inside(root, name, str(root / "manifest.json"), missing="listed but missing") as f:
        try:
            header = npy_header(f)
        except ValueError as exc:
            refuse(f"{name}: {exc}")
        return header, f.seek(0, io.SEEK_END)


@dataclass(frozen=True)
class StoredItem:
    modality: str
    row: int
    vox_id: str


class ItemStore:
    """A decoded item store, checked when opened (before training): its manifest (kind,
    version, fields), ``items.jsonl`` against the manifest's sha256, every line (a key once,
    a known modality, rows 0..N-1 in order) and each array's ``.npy`` header (no objects, the
    dtype and shape the manifest and the lines say) and size. Anything else is one line
    ending in how to rebuild the store. The arrays are memory-mapped lazily, once per
    process (each DataLoader worker maps them itself; the page cache is shared). The arrays'
    bytes are not re-hashed at every open (their sha256 are in the manifest, for
    ``sha256sum``): they can only hold wrong values of the right type."""

    def __init__(self, root: str | Path):
        from avdata.io import sha256_bytes
        from avdata.untrusted import MAX_INDEX_BYTES, read_inside

        self.root = Path(root)
        where = self.root / "manifest.json"

        def refuse(problem: str):
            raise ItemError(f"{self.root}: {problem}; {rebuild_hint(self.root)}")

        raw = read_inside(self.root, "manifest.json", missing="missing; not an item store from avdata cache")
        try:
            m = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            refuse("manifest.json is not JSON")
        if not (isinstance(m, dict) and m.get("kind") == STORE_KIND):
            refuse(f"{where.name} is not an item store's ({STORE_KIND}) manifest")
        if m.get("format_version") != STORE_FORMAT_VERSION:
            refuse(f"format_version {m.get('format_version')!r}, this avmatch reads {STORE_FORMAT_VERSION}")
        files = m.get("files")
        if not (
            isinstance(m.get("source_shards_manifest_sha256"), str)
            and isinstance(files, dict)
            and all(
                isinstance(files.get(n), dict) and isinstance(files[n].get("sha256"), str)
                for n in ("items.jsonl", *STORE_ARRAYS.values())
            )
        ):
            refuse("manifest.json lacks source_shards_manifest_sha256 or a file's sha256")
        self.source_sha = m["source_shards_manifest_sha256"]
        self.manifest = m  # its source_shards link: avdata.tuples.linked_source_shards
        data = read_inside(
            self.root, "items.jsonl", str(where), MAX_INDEX_BYTES, "listed in manifest.json but missing"
        )
        if sha256_bytes(data) != files["items.jsonl"]["sha256"]:
            refuse("items.jsonl differs from its sha256 in manifest.json")
        self.items: dict[str, StoredItem] = {}
        self.counts = {modality: 0 for modality in STORE_ARRAYS}
        for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            try:
                r = json.loads(line)
            except (ValueError, RecursionError):
                refuse(f"items.jsonl:{n}: not JSON")
            if not (
                isinstance(r, dict)
                and isinstance(r.get("key"), str)
                and r.get("modality") in STORE_ARRAYS
                and isinstance(r.get("vox_id"), str)
                and r.get("row") == self.counts.get(r.get("modality"))
            ):
                refuse(f"items.jsonl:{n}: not a key, modality, vox_id and the next row of its modality")
            if r["key"] in self.items:
                refuse(f"items.jsonl:{n}: item {r['key']} listed twice")
            self.items[r["key"]] = StoredItem(r["modality"], r["row"], r["vox_id"])
            self.counts[r["modality"]] += 1
        self._layout = {modality: self._check_array(modality, refuse) for modality in STORE_ARRAYS}
        self._arrays: dict[str, np.ndarray] = {}
        self._pid = None

    def _check_array(self, modality: str, refuse) -> tuple[int, tuple[int, ...], str]:
        """(data offset, shape, dtype) of one array file, from its header, checked."""
        name, fmt = STORE_ARRAYS[modality], ITEM_FORMATS[modality]
        header, size = stored_npy_header(self.root, name, refuse)
        want = (self.counts[modality], *fmt.shape)
        if header.shape != want or header.dtype.str != fmt.dtype or header.fortran_order:
            refuse(f"{name} holds {header.shape} {header.dtype.str}, items.jsonl needs {want} {fmt.dtype}")
        if size != header.file_bytes:
            refuse(f"{name} is {size:,} bytes, its header needs {header.file_bytes:,}")
        return header.offset, want, fmt.dtype

    def array(self, modality: str) -> np.ndarray:
        """The (N, ...) array of one modality, memory-mapped read-only (once per process)."""
        import os

        from avdata.untrusted import open_inside

        if self._pid != os.getpid():  # a forked worker maps the files itself
            self._arrays, self._pid = {}, os.getpid()
        if modality not in self._arrays:
            offset, shape, dtype = self._layout[modality]
            with open_inside(self.root, STORE_ARRAYS[modality]) as f:
                self._arrays[modality] = (
                    np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape)
                    if shape[0]
                    else np.empty(shape, dtype)
                )
        return self._arrays[modality]

    def __getstate__(self):  # a worker started by spawn maps the files itself, never a copy
        return {k: v for k, v in self.__dict__.items() if k not in ("_arrays", "_pid")} | {
            "_arrays": {},
            "_pid": None,
        }
