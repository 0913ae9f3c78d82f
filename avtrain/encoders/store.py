"""The feature store: one frozen encoder's embedding of every item of some item shards, computed once.

``avtrain features --shards SHARDS --encoder NAME [--audio ROOT] [--videos ROOT]`` writes
STORE (default SHARDS/features/NAME):

* ``features.npy``  (N, dim) float32, one row per embedded item, in the shards' item order
* ``items.jsonl``   one line per row: key, row, vox_id, split, modality
* ``rejects.jsonl`` the items the encoder could not embed: key, source, reason
* ``manifest.json`` (last): kind, the encoder's card, weights_sha256, modality, dim, the shards'
  extraction settings and their manifest's sha256, each file's sha256, counts

Voice items are embedded from their whole source file (every window of a clip shares the clip's
embedding, computed once): the item's ``source`` under the --audio root, or under the --videos
root (the video's audio track) when its ``source_modality`` is ``video``, so shards built from
both take both roots; face items from the aligned crop in the shard (a root given is not used:
a note says so). The store is built in ``STORE.tmp-PID`` and renamed when complete, so a
failed or killed build leaves no STORE (a dead builder's temp directory is removed by the next
build). The encoder runs on one torch thread, so the same inputs give byte-identical files (on one
kind of CPU; another CPU's kernels may change a last bit of facenet's floats). An existing STORE
built from the same shards, settings and weights is reused; one built from others is refused (one
line), never overwritten.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avdata.errors import AvmatchError, InputError
from avtrain.encoders.base import one_torch_thread

STORE_KIND = "avmatch-feature-store-v1"
DATA_FILES = ("features.npy", "items.jsonl", "rejects.jsonl")
FACE_BATCH = 32  # crops per embed_faces call: bounds memory, not results (each crop is embedded alone)
ROOT_FLAGS = {"audio": "--audio", "video": "--videos"}  # source_modality -> the root that holds it
# what must be equal for a store to stand for these shards embedded by this encoder
IDENTITY_FIELDS = ("encoder_name", "weights_sha256", "extract", "shards_manifest_sha256")


class FeatureStoreError(AvmatchError):
    """A feature store that cannot be used or built as asked (one line)."""


def default_store(shards: str | Path, encoder: str) -> Path:
    return Path(shards) / "features" / encoder


def shards_corpus(shards: str | Path) -> str:
    """The corpus the item shards were built as (their manifest's config.corpus; build-shards
    records it only when it is not voxceleb1, its default)."""
    from avdata.untrusted import read_inside

    config = json.loads(read_inside(Path(shards), "manifest.json")).get("config")
    corpus = config.get("corpus", "voxceleb1") if isinstance(config, dict) else "voxceleb1"
    return corpus if isinstance(corpus, str) else "voxceleb1"


def shards_identity(shards: str | Path) -> tuple[dict, str]:
    """(extraction settings, sha256 of the manifest) of an item shard directory: what a feature
    store of it records and is checked against."""
    from avdata.tuples import source_manifest_sha256
    from avdata.untrusted import read_inside

    shards = Path(shards)
    sha = source_manifest_sha256(shards)  # a readable JSON object, else one line
    manifest = json.loads(read_inside(shards, "manifest.json"))
    extract = (
        (manifest.get("config") or {}).get("extract") if isinstance(manifest.get("config"), dict) else None
    )
    if not isinstance(extract, dict):
        raise InputError(
            shards / "manifest.json",
            "no config.extract (extraction settings); rebuild the shards with avdata build-shards",
        )
    return extract, sha


def _text(v) -> bool:
    """A string without control characters: what the store's lines hold, and safe to print in a
    one-line message or a note (a newline or a terminal escape from a store made elsewhere is not)."""
    return isinstance(v, str) and not any(ord(c) < 32 or ord(c) == 127 for c in v)


def _rebuild_hint(store: Path) -> str:
    return f"remove it and run avtrain features again (--out {store})"


class FeatureStore:
    """A feature store, checked when opened: its manifest (kind, fields), ``items.jsonl`` and
    ``rejects.jsonl`` against their sha256, every line of items.jsonl (a key once, rows 0..N-1 in
    order) and the ``features.npy`` header (float32, (N, dim), no objects), size and values (finite:
    the builder writes a reject for a non-finite embedding). Every file is a regular file inside the
    store (:func:`avdata.untrusted.open_inside`). The array is memory-mapped, once per process.
    Anything else is one line (:class:`FeatureStoreError`)."""

    def __init__(self, root: str | Path):
        try:
            self._open(root)
        except FeatureStoreError:
            raise
        except AvmatchError as exc:  # a file that is a FIFO, a symlink out, missing: its own line
            raise FeatureStoreError(str(exc)) from None

    def _open(self, root: str | Path) -> None:
        from avdata.io import sha256_bytes
        from avdata.untrusted import MAX_INDEX_BYTES, read_inside

        self.root = Path(root)

        def refuse(problem: str):
            raise FeatureStoreError(f"{self.root}: {problem}; {_rebuild_hint(self.root)}")

        raw = read_inside(
            self.root, "manifest.json", missing="missing; not a feature store from avtrain features"
        )
        try:
            m = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            refuse("manifest.json is not JSON")
        if not (isinstance(m, dict) and m.get("kind") == STORE_KIND):
            refuse(f"manifest.json is not a feature store's ({STORE_KIND})")
        card, files = m.get("encoder"), m.get("files")
        if not (
            isinstance(card, dict)
            and isinstance(card.get("name"), str)
            and m.get("modality") in ("audio", "face")
            and type(m.get("dim")) is int  # not a bool
            and m["dim"] > 0
            and isinstance(m.get("weights_sha256"), str)
            and isinstance(m.get("extract"), dict)
            and isinstance(m.get("shards_manifest_sha256"), str)
            and isinstance(files, dict)
            and all(isinstance(files.get(n), str) for n in DATA_FILES)
        ):
            refuse(
                "manifest.json lacks the encoder, modality, dim, weights_sha256, extract, shards sha256 or a file's sha256"
            )
        counts = m.get("counts", {})
        if not (isinstance(counts, dict) and all(type(v) is int and v >= 0 for v in counts.values())):
            refuse("manifest.json: counts is not an object of non-negative integers")
        self.manifest = m
        self.card: dict = card
        self.encoder: str = card["name"]
        self.modality: str = m["modality"]
        self.dim: int = m["dim"]
        self.weights_sha256: str = m["weights_sha256"]
        self.extract: dict = m["extract"]
        self.shards_manifest_sha256: str = m["shards_manifest_sha256"]
        texts = {}
        for name in ("items.jsonl", "rejects.jsonl"):
            data = read_inside(
                self.root, name, str(self.root / "manifest.json"), MAX_INDEX_BYTES, "listed but missing"
            )
            if sha256_bytes(data) != files[name]:
                refuse(f"{name} differs from its sha256 in manifest.json")
            try:
                texts[name] = data.decode("utf-8")
            except UnicodeDecodeError:
                refuse(f"{name}: not UTF-8")
        self.rows: dict[str, int] = {}
        self.items: list[dict] = []
        for n, line in enumerate(texts["items.jsonl"].splitlines(), 1):
            try:
                r = json.loads(line)
            except (ValueError, RecursionError):
                refuse(f"items.jsonl:{n}: not JSON")
            if not (
                isinstance(r, dict)
                and _text(r.get("key"))
                and type(r.get("row")) is int  # not a bool (True == 1)
                and r["row"] == len(self.items)
                and r.get("modality") == self.modality
                and isinstance(r.get("vox_id"), str)
                and isinstance(r.get("split"), str)
            ):
                refuse(
                    f"items.jsonl:{n}: not a key, the next row, vox_id, split and modality {self.modality}"
                )
            if r["key"] in self.rows:
                refuse(f"items.jsonl:{n}: item {r['key']!r} listed twice")
            self.rows[r["key"]] = r["row"]
            self.items.append(r)
        self.rejects: list[dict] = []
        for n, line in enumerate(texts["rejects.jsonl"].splitlines(), 1):
            try:
                r = json.loads(line)
            except (ValueError, RecursionError):
                refuse(f"rejects.jsonl:{n}: not JSON")
            if not (isinstance(r, dict) and all(_text(r.get(k)) for k in ("key", "source", "reason"))):
                refuse(f"rejects.jsonl:{n}: not a key, source and reason")
            self.rejects.append(r)
        self._offset = self._check_array(refuse)
        self._array = None
        self._pid = None

    def _check_array(self, refuse) -> int:
        from avdata.items import stored_npy_header

        header, size = stored_npy_header(self.root, "features.npy", refuse)
        want = (len(self.items), self.dim)
        if header.shape != want or header.dtype.str != "<f4" or header.fortran_order:
            refuse(
                f"features.npy holds {header.shape} {header.dtype.str}, items.jsonl and dim need {want} <f4"
            )
        offset = header.offset
        if size != header.file_bytes:
            refuse(f"features.npy is {size:,} bytes, its header needs {header.file_bytes:,}")
        self._check_finite(offset, refuse)
        return offset

    def _check_finite(self, offset: int, refuse) -> None:
        """Every value finite, read in blocks of rows (bounded memory, one pass over the file)."""
        from avdata.untrusted import open_inside

        n, dim = len(self.items), self.dim
        block = max(1, (16 << 20) // (4 * dim))
        with open_inside(self.root, "features.npy") as f:
            for start in range(0, n, block):
                rows = min(block, n - start)
                f.seek(offset + 4 * start * dim)
                values = np.frombuffer(f.read(4 * rows * dim), dtype="<f4").reshape(rows, dim)
                bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
                if bad.size:
                    row = start + int(bad[0])
                    refuse(f"features.npy: row {row} (item {self.items[row]['key']}) is not finite")

    def __len__(self) -> int:
        return len(self.items)

    def locate(self, key: str) -> int | None:
        """The row of item ``key``, or None (rejected by the encoder, or not in the shards)."""
        return self.rows.get(key)

    def array(self) -> np.ndarray:
        """The (N, dim) float32 features, memory-mapped read-only (once per process)."""
        from avdata.untrusted import open_inside

        if self._pid != os.getpid() or self._array is None:
            shape = (len(self.items), self.dim)
            with open_inside(self.root, "features.npy") as f:
                self._array = (
                    np.memmap(f, dtype="<f4", mode="r", offset=self._offset, shape=shape)
                    if shape[0]
                    else np.empty(shape, "<f4")
                )
            self._pid = os.getpid()
        return self._array

    def identity(self) -> dict:
        return {
            "encoder_name": self.encoder,
            "weights_sha256": self.weights_sha256,
            "extract": self.extract,
            "shards_manifest_sha256": self.shards_manifest_sha256,
        }

    def check_matches(self, shards_dir: str | Path) -> None:
        """One line (:class:`FeatureStoreError`) when this store was not built from ``shards_dir``
        as it is now (its manifest's sha256) with its extraction settings."""
        extract, sha = shards_identity(shards_dir)
        if sha != self.shards_manifest_sha256:
            raise FeatureStoreError(
                f"{self.root}: built from other item shards than {shards_dir} (their manifest.json "
                f"sha256 {sha[:12]}, the store's {self.shards_manifest_sha256[:12]}); {_rebuild_hint(self.root)}"
            )
        if extract != self.extract:
            changed = sorted(
                k for k in set(extract) | set(self.extract) if extract.get(k) != self.extract.get(k)
            )
            raise FeatureStoreError(
                f"{self.root}: built with other extraction settings than {shards_dir} "
                f"({', '.join(changed)}); {_rebuild_hint(self.root)}"
            )

    def __getstate__(self):  # a worker maps the file itself, never a pickled copy of the array
        return {k: v for k, v in self.__dict__.items() if k not in ("_array", "_pid")} | {
            "_array": None,
            "_pid": None,
        }


@dataclass
class FeatureBuild:
    store: Path
    reused: bool
    counts: dict = field(default_factory=dict)
    leakage: str | None = None  # avtrain.encoders.leakage_warning for the shards' corpus
    notes: list[str] = field(default_factory=list)  # one line each: a media root given but not used


def _remove_dead_temps(out: Path) -> None:
    """STORE.tmp-PID directories whose builder no longer runs (killed mid-build)."""
    from avdata.io import _pid_alive

    if not out.parent.is_dir():
        return
    for entry in out.parent.glob(f"{out.name}.tmp-*"):
        pid = entry.name.rsplit("-", 1)[-1]
        if pid.isdigit() and entry.is_dir() and not entry.is_symlink() and not _pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _differences(old: dict, new: dict) -> list[str]:
    return [k for k in IDENTITY_FIELDS if old.get(k) != new.get(k)]


def build_feature_store(
    shards: str | Path,
    encoder: str,
    out: str | Path | None = None,
    audio_root: str | Path | None = None,
    videos_root: str | Path | None = None,
    weights: str | Path | None = None,
    allow_download: bool = False,
    progress=None,
) -> FeatureBuild:
    """Embed every item of ``shards`` of the encoder's modality with ``encoder`` into ``out``
    (default SHARDS/features/ENCODER); reuse an identical existing store, refuse another one.
    ``audio_root`` / ``videos_root``: the --audio / --videos roots the shards were built from,
    where the voice items' ``source`` paths lie (by each item's ``source_modality``; voice
    encoders only: a face encoder's build notes a root given as not used)."""

    from avdata.reader import index_items
    from avtrain.encoders import encoder_class, leakage_warning, load_encoder

    shards = Path(shards)
    cls = encoder_class(encoder)  # an unknown name, a missing extra: one line, before anything is read
    cls.check_installed()
    card = cls.card
    out = Path(out) if out is not None else default_store(shards, encoder)
    if out.resolve() == shards.resolve():
        raise FeatureStoreError(
            f"--out {out} is the shard directory; choose a directory for the feature store"
        )
    extract, shards_sha = shards_identity(shards)
    leakage = leakage_warning(encoder, shards_corpus(shards))
    roots = {kind: Path(r) for kind, r in (("audio", audio_root), ("video", videos_root)) if r is not None}
    notes = []
    if card.modality == "audio":
        if not roots:
            raise FeatureStoreError(
                f"encoder {encoder} embeds each voice's whole source file: give --audio ROOT (or --videos ROOT), "
                f"the media root {shards} was built from (both, for shards built from both)"
            )
        for root in roots.values():
            if not root.is_dir():
                raise FeatureStoreError(f"{root}: no such media directory")
    else:
        notes += [
            f"note: {ROOT_FLAGS[kind]} {root} not used: {encoder} embeds the face crops stored in the shards"
            for kind, root in roots.items()
        ]
    enc = load_encoder(
        encoder, weights=weights, allow_download=allow_download, face_margin=extract.get("face_margin")
    )
    identity = {
        "encoder_name": encoder,
        "weights_sha256": enc.weights_sha256,
        "extract": extract,
        "shards_manifest_sha256": shards_sha,
    }
    if os.path.lexists(out):
        if not os.path.lexists(out / "manifest.json"):
            raise FeatureStoreError(
                f"{out} exists and is not a feature store; remove it or choose another --out"
            )
        old = FeatureStore(out)
        changed = _differences(old.identity(), identity)
        if changed:
            raise FeatureStoreError(
                f"{out} was built from other {' / '.join(changed)} than asked now; remove it or choose "
                f"another --out (a store is never overwritten)"
            )
        return FeatureBuild(out, True, old.manifest.get("counts", {}), leakage, notes)

    items = index_items(shards)
    items = items[items["modality"] == card.modality]
    _remove_dead_temps(out)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        with one_torch_thread():  # byte-identical stores
            if card.modality == "audio":
                vectors, lines, rejects, counts = _embed_voices(enc, items, shards, roots, notes, progress)
            else:
                vectors, lines, rejects, counts = _embed_faces(enc, items, shards, progress)
        counts = {"items": len(items), "embedded": len(lines), "rejected": len(rejects)} | counts
        _write_store(tmp, enc, identity, vectors, lines, rejects, counts)
        try:
            os.rename(tmp, out)
        except OSError as exc:
            raise FeatureStoreError(
                f"cannot move the finished store to {out} ({exc.strerror or exc})"
            ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FeatureBuild(out, False, counts, leakage, notes)


def _line(row, n: int) -> dict:
    return {"key": row.key, "row": n, "vox_id": row.vox_id, "split": row.split, "modality": row.modality}


def _one_line(text: str) -> str:
    """``text`` with control characters (a decoder's multi-line message) as spaces: a reject's
    fields must pass the reader's check (:func:`_text`)."""
    return "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in str(text))


def _reject(row, reason: str) -> dict:
    return {"key": _one_line(row.key), "source": _one_line(row.source), "reason": _one_line(reason)}


def _checked(vector: np.ndarray, dim: int) -> np.ndarray | str:
    vector = np.asarray(vector, dtype=np.float32)
    if vector.shape != (dim,):
        return f"embedding of shape {vector.shape}, expected ({dim},)"
    if not np.all(np.isfinite(vector)):
        return "non-finite embedding"
    return vector


def _voice_root(kind: str, roots: dict[str, Path]) -> tuple[Path | None, str | None]:
    """(root, None) where a voice item whose source is a ``kind`` file lies, or (None, the reject
    reason) when that root was not given."""
    if kind in ROOT_FLAGS:
        if kind in roots:
            return roots[kind], None
        return None, (
            f"its source is a {kind} file (source_modality {kind}): give {ROOT_FLAGS[kind]} ROOT, the "
            f"{kind} root the shards were built from"
        )
    if len(roots) == 1:  # shards without source_modality: the one root given
        return next(iter(roots.values())), None
    return (
        None,
        "its .json has no source_modality (audio or video): give only the root the shards were built from",
    )


def _embed_voices(enc, items, shards: Path, roots: dict[str, Path], notes: list[str], progress):
    """Each source file once (every window of a clip shares its embedding), under the root of its
    ``source_modality``."""
    from avdata.media import decode_audio
    from avdata.untrusted import resolve_inside
    from avtrain.encoders.base import SAMPLE_RATE, ItemRejected

    kinds = [k if isinstance(k, str) else "" for k in items["source_modality"]]
    sources = sorted(set(zip(kinds, items["source"])))
    by_source: dict[tuple[str, str], np.ndarray | str] = {}
    used: dict[Path, int] = {}  # root -> its source files
    missing: dict[Path, int] = {}  # root -> its source files not under it
    for n, (kind, source) in enumerate(sources):
        root, reason = _voice_root(kind, roots)
        if root is None:
            by_source[kind, source] = reason
            continue
        used[root] = used.get(root, 0) + 1
        try:
            path = resolve_inside(root, source, f"{shards}: item source")
        except AvmatchError as exc:
            by_source[kind, source] = f"source {source!r} refused: {exc}"
            continue
        if not path.is_file():
            by_source[kind, source] = f"source file not found under {root}"
            missing[root] = missing.get(root, 0) + 1
            continue
        try:
            by_source[kind, source] = _checked(enc.embed_audio(decode_audio(path, SAMPLE_RATE)), enc.card.dim)
        except InputError as exc:
            by_source[kind, source] = exc.reason
        except ItemRejected as exc:
            by_source[kind, source] = str(exc)
        if progress and (n + 1) % 100 == 0:
            progress(f"{n + 1}/{len(sources)} voice files")
    for kind, root in roots.items():
        flag = ROOT_FLAGS[kind]
        if used.get(root, 0) and missing.get(root, 0) == used[root]:
            raise FeatureStoreError(
                f"none of the {used[root]} voice source files of {shards} from {kind} files is under "
                f"{root}: give the {flag} root the shards were built from"
            )
        if not used.get(root, 0):
            notes.append(f"note: {flag} {root} not used: no voice item of {shards} comes from a {kind} file")
    if sources and not used:
        raise FeatureStoreError(f"no voice item of {shards} can be embedded: {by_source[sources[0]]}")
    vectors, lines, rejects = [], [], []
    for row, kind in zip(items.itertuples(index=False), kinds):
        got = by_source[kind, row.source]
        if isinstance(got, str):
            rejects.append(_reject(row, got))
        else:
            lines.append(_line(row, len(vectors)))
            vectors.append(got)
    embedded = sum(not isinstance(v, str) for v in by_source.values())
    return vectors, lines, rejects, {"source_files": len(by_source), "source_files_embedded": embedded}


def _embed_faces(enc, items, shards: Path, progress):
    from avdata.items import ItemError, decode_item
    from avdata.reader import read_member
    from avtrain.encoders.base import ItemRejected

    vectors, lines, rejects = [], [], []
    rows = list(items.itertuples(index=False))
    for start in range(0, len(rows), FACE_BATCH):
        batch, crops = [], []
        for row in rows[start : start + FACE_BATCH]:
            data = read_member(shards / row.tar, int(row.data_offset), int(row.data_size))
            try:
                crops.append(decode_item("face", data, row.data_ext, f"{shards / row.tar}: {row.key}"))
                batch.append(row)
            except ItemError as exc:
                rejects.append(_reject(row, str(exc)))
        results = enc.embed_faces(np.stack(crops)) if crops else []
        for row, got in zip(batch, results):
            got = str(got) if isinstance(got, ItemRejected) else _checked(got, enc.card.dim)
            if isinstance(got, str):
                rejects.append(_reject(row, got))
            else:
                lines.append(_line(row, len(vectors)))
                vectors.append(got)
        if progress:
            progress(f"{min(start + FACE_BATCH, len(rows))}/{len(rows)} faces")
    rejects.sort(key=lambda r: r["key"])
    return vectors, lines, rejects, {}


def _write_store(tmp: Path, enc, identity: dict, vectors, lines, rejects, counts) -> None:
    from avdata.io import jsonl_text, sha256_bytes, write_json

    dim = enc.card.dim
    array = np.stack(vectors).astype("<f4") if vectors else np.zeros((0, dim), "<f4")
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), version=(1, 0), allow_pickle=False)
    blobs = {
        "features.npy": buf.getvalue(),
        "items.jsonl": jsonl_text(lines).encode(),
        "rejects.jsonl": jsonl_text(rejects).encode(),
    }
    for name, data in blobs.items():
        with open(tmp / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    write_json(
        tmp / "manifest.json",
        {
            "kind": STORE_KIND,
            "encoder": enc.card.to_dict(),
            "weights_sha256": identity["weights_sha256"],
            "modality": enc.card.modality,
            "dim": dim,
            "extract": identity["extract"],
            "shards_manifest_sha256": identity["shards_manifest_sha256"],
            "files": {name: sha256_bytes(data) for name, data in blobs.items()},
            "counts": counts,
        },
    )
