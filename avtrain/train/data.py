"""Training input: tuple lists read by index, items read by key, well-mixed batches.

By index (the default)::

    the training list, by its exact name in the tuple directory's manifest.json ─ every row
      checked, kept as arrays of item rows (no list of dicts) ─ every item it names located in
      the item source and checked (present, of its role's modality, member type, size and
      header, inside its file), in the main process, before training
    ─ each epoch: one permutation of all tuples seeded by (seed, epoch); batch j of rank r is the
      (j·world + r)-th run of batch_size tuples ─ the loader makes batch numbers in order (a
      thread for an item store; else DataLoader worker processes, which take them round-robin
      and are returned in order), so the batches are the same for any number of workers and
      after a resume
    ─ a batch: the k+1 items of each tuple read by key from the item source ─ full batches only

Item sources (:func:`open_items`): a decoded item store (``avdata cache``: memory-mapped
decoded arrays, a batch is row copies), item shards (random access by offset, decoded per
read), or, for a directory given no ``--items``, its own tuple shards read the same way by
offset. All three give the same arrays for a key, so the same batches.

With ``tuple_shards`` (``fit --tuple-shards``) the tuple shards are streamed instead, as before
(for object storage, where random access is slow): shard list permuted by (seed, epoch) ─ split
by rank ─ by worker ─ tar reading ─ safe decode ─ seeded shuffle buffer ─ batches. Only the
shards of the exact list name are read.

Everything read is untrusted (docs/security.md): names in manifests and ``sizes.json`` are
plain relative paths inside their directory, files are opened by avmatch (never as
webdataset URLs), tar members checked, nothing unpickled. Arrays stay compact (faces uint8
HWC) through the workers; normalisation happens on the device (:func:`to_model_inputs`).
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from avdata.errors import AvmatchError, InputError
from avdata.items import HEAD_BYTES, ITEM_FORMATS, ItemError, ItemStore, decode_item, member_problem
from avdata.reader import MissingInputError, decode_sample, iter_tar_samples, read_sizes
from avdata.untrusted import UnsafeShardError, resolve_inside

ROLE_MODALITY = {"a2v": ("audio", "face"), "v2a": ("face", "audio")}  # (query, gallery)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of n things (tuples, or shards) in one epoch: a permutation seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def epoch_shards(urls: list[str], seed: int, epoch: int) -> list[str]:
    """The shard order of one epoch (tuple-shard streaming)."""
    return [urls[i] for i in epoch_order(len(urls), seed, epoch)]


def split_for(urls: list[str], index: int, count: int) -> list[str]:
    """Every count-th shard from index: disjoint and covering across the count parts."""
    return urls[index::count]


# --------------------------------------------------------------------------- the training list


@dataclass
class TrainingList:
    """One training list as arrays: per tuple its id, query and gallery item (indices into
    ``keys``), label, and query and gallery identities (indices into ``identities``)."""

    name: str
    path: Path
    direction: str
    k: int
    tuple_ids: np.ndarray  # (N,) str
    query: np.ndarray  # (N,) int32 -> keys
    gallery: np.ndarray  # (N, k) int32 -> keys
    label: np.ndarray  # (N,) int64
    query_identity: np.ndarray  # (N,) int32 -> identities
    gallery_identities: np.ndarray  # (N, k) int32 -> identities
    keys: list[str]  # every item key the list names, first use first
    identities: list[str]

    def __len__(self) -> int:
        return len(self.tuple_ids)

    def first_use(self, key_index: int) -> str:
        """The id of the first tuple that names item ``keys[key_index]`` (for error lines)."""
        hit = np.flatnonzero((self.query == key_index) | (self.gallery == key_index).any(1))
        return str(self.tuple_ids[hit[0]]) if hit.size else "?"


def read_training_list(tuples_dir: str | Path, name: str, task: str, k: int, direction: str) -> TrainingList:
    """Training list ``name`` of a tuple directory, by its exact name in the checked manifest.json
    (never by file-name prefix), each row checked as evaluation checks it
    (:func:`avtrain.evaluation.tuple_lists.iter_jsonl`, ``list_row_problem``) and kept as arrays.
    A list of another gallery size or direction than the run's is one line."""
    from avdata.tuples import index_lists
    from avtrain.evaluation.tuple_lists import EvaluationError, TupleList, iter_jsonl, list_row_problem

    root = Path(tuples_dir)
    try:
        lists = {il.name: il for il in index_lists(root) if il.task != "retrieval"}
    except InputError as exc:
        raise EvaluationError(str(exc)) from None
    il = lists.get(name)
    if il is None:
        raise MissingInputError(
            f"{root}: no list {name} in its manifest.json (lists there: "
            f"{', '.join(sorted(lists)[:6]) + (', ...' if len(lists) > 6 else '') or 'none'}); "
            "make it with avdata make-tuples or name one with --set tuples=NAME"
        )
    want_k = 1 if task == "verification" else k
    if il.k != want_k or (il.task == "matching" and il.direction != direction):
        raise EvaluationError(
            f"{il.path}: a {il.task} list of k={il.k} {il.direction}; this run trains "
            f"{task} k={want_k} {direction} (--task/--k/--direction, or --set tuples=NAME)"
        )
    tl = TupleList(il.name, il.task, il.split, il.direction, il.k)
    key_of: dict[str, int] = {}
    ident_of: dict[str, int] = {}
    ids, query, gallery, label, q_id, g_ids = [], [], [], [], [], []
    for n, row in iter_jsonl(root, il.path, il.task):
        problem = list_row_problem(tl, row)
        if problem:
            raise EvaluationError(f"{il.path}:{n}: {problem}")
        if row.get("direction", il.direction) != il.direction:
            raise EvaluationError(f"{il.path}:{n}: direction {row['direction']} in a {il.direction} list")
        ids.append(row["tuple_id"])
        query.append(key_of.setdefault(row["query"], len(key_of)))
        gallery.append([key_of.setdefault(g, len(key_of)) for g in row["gallery"]])
        label.append(row["label"])
        q_id.append(ident_of.setdefault(row["query_identity"], len(ident_of)))
        g_ids.append([ident_of.setdefault(g, len(ident_of)) for g in row["gallery_identities"]])
    if not ids:
        raise EvaluationError(f"{il.path}: the list is empty")
    return TrainingList(
        name=name,
        path=il.path,
        direction=il.direction,
        k=want_k,
        tuple_ids=np.array(ids),
        query=np.array(query, dtype=np.int32),
        gallery=np.array(gallery, dtype=np.int32).reshape(len(ids), want_k),
        label=np.array(label, dtype=np.int64),
        query_identity=np.array(q_id, dtype=np.int32),
        gallery_identities=np.array(g_ids, dtype=np.int32).reshape(len(ids), want_k),
        keys=list(key_of),
        identities=list(ident_of),
    )


# --------------------------------------------------------------------------- item sources


class TarItems:
    """Items read by random access from tar files (item shards, or a tuple directory's tuple
    shards): per modality, arrays of (file, data offset, size, extension) by row; each process
    opens the files itself, once, and reads a member with one ``pread``, then decodes it
    (:func:`avdata.items.decode_item`)."""

    def __init__(self, what: str, files: list[Path], table: dict[str, tuple[str, int, int, int, str]]):
        """table: key -> (modality, file index, data offset, size, ext)."""
        self.what, self.files = what, [str(f) for f in files]
        self.row_of: dict[str, tuple[str, int]] = {}
        cols: dict[str, list] = {"audio": [], "face": []}
        for key, (modality, f, off, size, ext) in table.items():
            self.row_of[key] = (modality, len(cols[modality]))
            cols[modality].append((f, off, size, ext, key))
        self.rows = {
            m: {
                "file": np.array([c[0] for c in v], dtype=np.int32),
                "offset": np.array([c[1] for c in v], dtype=np.int64),
                "size": np.array([c[2] for c in v], dtype=np.int64),
                "ext": np.array([c[3] for c in v] or [""]),
                "key": np.array([c[4] for c in v] or [""]),
            }
            for m, v in cols.items()
        }
        self._fds: dict[int, int] = {}
        self._pid = None

    def locate(self, key: str) -> tuple[str, int] | None:
        return self.row_of.get(key)

    def _fd(self, f: int) -> int:
        if self._pid != os.getpid():  # a forked worker opens the files itself
            self._fds, self._pid = {}, os.getpid()
        if f not in self._fds:
            self._fds[f] = os.open(self.files[f], os.O_RDONLY | os.O_CLOEXEC)
        return self._fds[f]

    def _member(self, modality: str, row: int, n: int | None = None) -> bytes:
        r = self.rows[modality]
        size = int(r["size"][row]) if n is None else min(n, int(r["size"][row]))
        return os.pread(self._fd(int(r["file"][row])), size, int(r["offset"][row]))

    def problem(self, modality: str, row: int) -> str | None:
        """Why the member at ``row`` cannot be a ``modality`` input (its extension, size and header,
        :func:`avdata.items.member_problem`; it must lie inside its file), or None."""
        r = self.rows[modality]
        f, off, size = int(r["file"][row]), int(r["offset"][row]), int(r["size"][row])
        end = os.fstat(self._fd(f)).st_size
        if off + size > end:
            return (
                f"its member lies past the end of {self.files[f]} (offset {off:,} + {size:,} > {end:,} bytes)"
            )
        ext = str(r["ext"][row])
        problem = member_problem(modality, ext, size, self._member(modality, row, HEAD_BYTES))
        if problem == "":  # the header lies further in: check the whole member
            problem = member_problem(modality, ext, size, self._member(modality, row))
        return problem

    def read(self, modality: str, rows: np.ndarray) -> np.ndarray:
        r = self.rows[modality]
        out = np.empty((len(rows), *ITEM_FORMATS[modality].shape), dtype=ITEM_FORMATS[modality].dtype)
        for i, row in enumerate(rows):
            where = f"{self.files[int(r['file'][row])]}: {r['key'][row]}"
            out[i] = decode_item(modality, self._member(modality, int(row)), str(r["ext"][row]), where)
        return out

    def __getstate__(self):  # workers open the files themselves
        return {k: v for k, v in self.__dict__.items() if k not in ("_fds", "_pid")} | {
            "_fds": {},
            "_pid": None,
        }


class StoreItems:
    """Items of a decoded item store (:class:`avdata.items.ItemStore`): a read is a row copy."""

    def __init__(self, store: ItemStore):
        self.store, self.what = store, f"the item store {store.root}"

    def locate(self, key: str) -> tuple[str, int] | None:
        item = self.store.items.get(key)
        return None if item is None else (item.modality, item.row)

    def problem(self, modality: str, row: int) -> str | None:
        return None  # decoded and checked by avdata cache; shapes checked when the store was opened

    def read(self, modality: str, rows: np.ndarray) -> np.ndarray:
        return self.store.array(modality)[np.asarray(rows)]  # a copy (fancy indexing)


class FeatureItems:
    """The items of a run with frozen modalities: those modalities' items are rows of their feature
    stores (a frozen encoder's (dim,) float32 vectors; :mod:`avtrain.train.features`), the other
    modality's come from ``base`` (an item source above, or None when both are frozen)."""

    def __init__(self, frozen, base=None):
        self.frozen, self.base = frozen, base
        stores = ", ".join(f"the {m} features {s.root}" for m, s in sorted(frozen.stores.items()))
        self.what = stores if base is None else f"{stores} and {base.what}"

    def locate(self, key: str) -> tuple[str, int] | None:
        for modality, store in self.frozen.stores.items():
            row = store.locate(key)
            if row is not None:
                return modality, row
        return None if self.base is None else self.base.locate(key)

    def problem(self, modality: str, row: int) -> str | None:
        if modality in self.frozen.stores:
            return None  # checked with the store (avtrain.encoders.store.FeatureStore)
        return self.base.problem(modality, row)

    def read(self, modality: str, rows: np.ndarray) -> np.ndarray:
        if modality in self.frozen.stores:
            return np.asarray(self.frozen.stores[modality].array()[np.asarray(rows)], dtype=np.float32)
        return self.base.read(modality, rows)


def without_rejected(tl: TrainingList, frozen) -> tuple[TrainingList, str | None]:
    """The list without the tuples that name an item a frozen encoder rejected, and the line that
    counts them (None when there are none). A list left empty is one line."""
    rejected = frozen.rejected_keys()
    bad_key = np.array([k in rejected for k in tl.keys] or [False])
    drop = bad_key[tl.query] | bad_key[tl.gallery].any(1)
    if not drop.any():
        return tl, None
    used = {tl.keys[i] for i in np.flatnonzero(bad_key)}
    line = frozen.skipped_line(tl.name, int(drop.sum()), len(tl), used)
    if drop.all():
        raise ItemError(f"{line}; no tuple is left to train on")
    keep = ~drop
    old = np.concatenate([tl.query[keep], tl.gallery[keep].ravel()])
    order = np.unique(old, return_index=True)  # first use first, as read_training_list numbers them
    kept = order[0][np.argsort(order[1])]
    new_index = np.full(len(tl.keys), -1, dtype=np.int32)
    new_index[kept] = np.arange(len(kept), dtype=np.int32)
    return (
        TrainingList(
            name=tl.name,
            path=tl.path,
            direction=tl.direction,
            k=tl.k,
            tuple_ids=tl.tuple_ids[keep],
            query=new_index[tl.query[keep]],
            gallery=new_index[tl.gallery[keep]],
            label=tl.label[keep],
            query_identity=tl.query_identity[keep],
            gallery_identities=tl.gallery_identities[keep],
            keys=[tl.keys[i] for i in kept],
            identities=tl.identities,
        ),
        line,
    )


def _tuple_manifest_source(tuples_dir: Path) -> str | None:
    from avdata.tuples import read_tuple_manifest

    return read_tuple_manifest(tuples_dir, required=True).get("source_shards_manifest_sha256")


def open_items(tuples_dir: str | Path, items: str | Path | None, tl: TrainingList):
    """The item source of a run: ``items`` is a decoded item store (``avdata cache``) or an item
    shard directory (``avdata build-shards``), either of which must come from the shards the
    tuple directory was drawn from (manifest sha256s compared; a store from other shards is
    refused with how to rebuild it); without ``items``, the tuple directory's own tuple shards
    of the list (checked as by :func:`load_sizes`), with a note that a store is faster."""
    tuples_dir = Path(tuples_dir)
    drawn_from = _tuple_manifest_source(tuples_dir)
    if items is None:
        paths, _ = load_sizes(tuples_dir, tl.name, missing_hint=True)
        return _tuple_shard_items(paths, tl)
    items = Path(items)
    from avdata.untrusted import read_inside

    try:
        head = read_inside(items, "manifest.json", missing="missing")
        kind = json.loads(head).get("kind")
    except (AvmatchError, ValueError, AttributeError):
        kind = None
    if kind == "avmatch.items":
        store = ItemStore(items)
        if drawn_from and store.source_sha != drawn_from:
            raise ItemError(
                f"{items}: built from other item shards (manifest sha256 {store.source_sha[:12]}…) than "
                f"{tuples_dir} was drawn from ({drawn_from[:12]}…); rebuild it: avdata cache "
                f"--shards SHARDS --out {items}, SHARDS being the shards make-tuples read"
            )
        return StoreItems(store)
    from avdata.reader import index_items
    from avdata.tuples import source_manifest_sha256

    sha = source_manifest_sha256(items)  # a missing or malformed manifest: one line
    if drawn_from and sha != drawn_from:
        raise ItemError(
            f"{items}: not the item shards {tuples_dir} was drawn from (manifest sha256 {sha[:12]}… "
            f"vs {drawn_from[:12]}…); pass the shards make-tuples read, or their avdata cache store"
        )
    df = index_items(items)  # every shard name and member checked; a bad one is one line
    df = df[df["key"].isin(set(tl.keys))]  # only the list's items are kept (a key not there: refused)
    twice = df["key"][df["key"].duplicated()]
    if len(twice):
        raise ItemError(f"{items}: item {twice.iloc[0]} occurs in more than one shard")
    files = sorted(set(df["tar"]))
    file_of = {t: i for i, t in enumerate(files)}
    table = {
        key: (modality, file_of[tar], int(off), int(size), ext)
        for key, modality, tar, off, size, ext in df[
            ["key", "modality", "tar", "data_offset", "data_size", "data_ext"]
        ].itertuples(index=False)
    }
    return TarItems(f"the item shards {items}", [items / t for t in files], table)


def _tuple_shard_items(paths: list[str], tl: TrainingList) -> TarItems:
    """The items of a list's tuple shards: the query and gallery members of each tuple, under the
    keys the tuple's own ``.json`` member gives them (so an index line naming other items than its
    tuple shard holds finds them missing; a key held by several tuples: its first copy)."""
    from avdata.tuples import scan_tuple_shard

    q_mod, g_mod = ROLE_MODALITY[tl.direction]
    table: dict[str, tuple] = {}
    for f, path in enumerate(paths):
        with open(path, "rb") as fh:
            for tuple_id, members in scan_tuple_shard(path):
                off, size = members["json"]
                fh.seek(off)
                try:
                    meta = json.loads(fh.read(min(size, 1 << 20)))
                    keys = {"q": meta["query"], **{f"g{i}": g for i, g in enumerate(meta["gallery"])}}
                except (ValueError, KeyError, TypeError):
                    raise UnsafeShardError(
                        f"{path}: tuple {tuple_id!r}: its .json is not a tuple line"
                    ) from None
                for member, (off, size) in members.items():
                    role, _, ext = member.partition(".")
                    if role in keys and isinstance(keys[role], str):
                        table.setdefault(keys[role], (q_mod if role == "q" else g_mod, f, off, size, ext))
    return TarItems(f"the tuple shards of {tl.name}", [Path(p) for p in paths], table)


@dataclass
class LocatedList:
    """A training list with its items located in a source: item rows per tuple."""

    tl: TrainingList
    source: object
    query_rows: np.ndarray  # (N,) rows of the query modality
    gallery_rows: np.ndarray  # (N, k) rows of the gallery modality


def locate(tl: TrainingList, source) -> LocatedList:
    """Every item the list names, found in the source with its role's modality and checked
    (:meth:`TarItems.problem`), before training: a missing key, a member of another modality or
    type, or one past the end of its file is one line naming the list, the tuple and the key."""
    q_mod, g_mod = ROLE_MODALITY[tl.direction]
    as_query = np.zeros(len(tl.keys), dtype=bool)
    as_query[tl.query] = True
    as_gallery = np.zeros(len(tl.keys), dtype=bool)
    as_gallery[tl.gallery.ravel()] = True
    rows = np.empty(len(tl.keys), dtype=np.int64)
    for i, key in enumerate(tl.keys):

        def refuse(problem: str):
            raise ItemError(f"{tl.path}: tuple {tl.first_use(i)}: item {key}: {problem}")

        if as_query[i] and as_gallery[i]:
            refuse(f"used both as a query ({q_mod}) and in a gallery ({g_mod})")
        want = q_mod if as_query[i] else g_mod
        found = source.locate(key)
        if found is None:
            refuse(f"not in {source.what}")
        modality, row = found
        if modality != want:
            refuse(f"{modality} item used as {want}")
        problem = source.problem(modality, row)
        if problem:
            refuse(problem)
        rows[i] = row
    return LocatedList(tl, source, rows[tl.query], rows[tl.gallery])


def batches_in_epoch(n_tuples: int, batch_size: int, world: int) -> int:
    """Batches every rank takes in an epoch of a list read by index: the full batches of its
    share (every rank the same number, so DDP ranks never wait on each other)."""
    return n_tuples // (batch_size * world)


class IndexedBatches(Dataset):
    """One rank's batches of one epoch of a located list: item ``j`` is the whole batch j (see
    the module doc), computed from (seed, epoch, rank, j) alone, so any worker can make it."""

    def __init__(self, located: LocatedList, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        self.located, self.batch_size, self.seed, self.rank, self.world = (
            located,
            batch_size,
            seed,
            rank,
            world,
        )
        self.epoch = 0
        self._order: tuple[int, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return batches_in_epoch(len(self.located.tl), self.batch_size, self.world)

    def tuples_of(self, j: int, epoch: int | None = None) -> np.ndarray:
        """The tuple indices of batch j of this rank in ``epoch`` (default: the set epoch)."""
        epoch = self.epoch if epoch is None else epoch
        order = self._order  # one read: another thread may replace it
        if order is None or order[0] != epoch:
            order = self._order = (epoch, epoch_order(len(self.located.tl), self.seed, epoch))
        start = (j * self.world + self.rank) * self.batch_size
        return order[1][start : start + self.batch_size]

    def batch(self, epoch: int, j: int) -> dict:
        """Batch j of ``epoch`` (a pure function of them: safe from any thread or process)."""
        return self._batch(self.tuples_of(j, epoch))

    def __getitem__(self, index) -> dict:
        """Batch ``j`` of the set epoch, or ``(epoch, j)``: batch j of that epoch."""
        epoch, j = index if isinstance(index, tuple) else (self.epoch, index)
        try:
            return self.batch(epoch, j)
        except (AvmatchError, UnsafeShardError) as exc:
            if get_worker_info() is None:
                raise
            return _error_item(exc)

    def _batch(self, idx: np.ndarray) -> dict:
        lo, tl, src = self.located, self.located.tl, self.located.source
        q_mod, g_mod = ROLE_MODALITY[tl.direction]
        query = src.read(q_mod, lo.query_rows[idx])
        gallery = src.read(g_mod, lo.gallery_rows[idx].ravel())
        ident = tl.identities
        return {
            "query": torch.from_numpy(query),
            "gallery": torch.from_numpy(gallery.reshape(len(idx), tl.k, *gallery.shape[1:])),
            "label": torch.from_numpy(tl.label[idx].copy()),
            "keys": [str(t) for t in tl.tuple_ids[idx]],
            "query_identities": [ident[i] for i in tl.query_identity[idx]],
            "gallery_identities": [[ident[i] for i in row] for row in tl.gallery_identities[idx]],
        }


def _array(sample: dict, role: str) -> np.ndarray:
    for ext in ("npy", "jpg"):
        if f"{role}.{ext}" in sample:
            return sample[f"{role}.{ext}"]
    raise UnsafeShardError(
        f"{sample.get('__url__')}: {sample.get('__key__')}: no {role}.npy or {role}.jpg member"
    )


def to_arrays(sample: dict) -> tuple[np.ndarray, np.ndarray, int, str, str, list[str]]:
    """(query array, stacked gallery arrays, label, tuple id, query identity, gallery identities)
    from a decoded tuple sample (identities "" where the sample's .json does not name them)."""
    where = f"{sample.get('__url__')}: {sample.get('__key__')}"
    meta = sample.get("json")
    if not isinstance(meta, dict) or not isinstance(meta.get("gallery"), list) or "cls" not in sample:
        raise UnsafeShardError(f"{where}: not a tuple sample (needs .cls and a .json with a gallery list)")
    k = len(meta["gallery"])
    arrays = [_array(sample, f"g{i}") for i in range(k)]
    if len({a.shape for a in arrays}) > 1:
        raise InputError(
            sample.get("__url__"),
            f"{sample.get('__key__')}: gallery arrays of different shapes "
            f"{sorted({a.shape for a in arrays})}",
        )
    q_id = meta.get("query_identity", "")
    g_ids = meta.get("gallery_identities") or [""] * k
    if not isinstance(q_id, str) or not (
        isinstance(g_ids, list) and len(g_ids) == k and all(isinstance(g, str) for g in g_ids)
    ):
        raise UnsafeShardError(f"{where}: query_identity / gallery_identities are not names of its {k} items")
    return _array(sample, "q"), np.stack(arrays), int(sample["cls"]), sample["__key__"], q_id, g_ids


def collate(batch) -> dict:
    queries, galleries, labels, keys, q_ids, g_ids = zip(*batch)
    return {
        "query": torch.from_numpy(np.stack(queries)),
        "gallery": torch.from_numpy(np.stack(galleries)),
        "label": torch.tensor(labels, dtype=torch.long),
        "keys": list(keys),
        "query_identities": list(q_ids),
        "gallery_identities": [list(g) for g in g_ids],
    }


def full_batches(items, batch_size: int):
    """Collated batches of exactly batch_size items; a last partial batch is dropped."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield collate(batch)
            batch = []


# --------------------------------------------------------------------------- tuple-shard streaming


class TupleStream(IterableDataset):
    """One rank's stream of batches of training tuples for one epoch (see set_epoch), read
    sequentially from tuple shards (``fit --tuple-shards``)."""

    def __init__(
        self,
        urls: list[str],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        shuffle_size: int = 200,
    ):
        self.urls, self.batch_size, self.seed = sorted(urls), batch_size, seed
        self.rank, self.world, self.shuffle_size = rank, world, shuffle_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        shards = split_for(
            split_for(epoch_shards(self.urls, self.seed, self.epoch), self.rank, self.world), worker, workers
        )
        if not shards:
            return iter(())
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}")
        # already ordered by (seed, epoch) and split above; each path opened here, never as a URL
        samples = (decode_sample(s) for path in shards for s in iter_tar_samples(path))
        tuples = map(to_arrays, shuffle_buffer(samples, self.shuffle_size, rng))
        batches = full_batches(tuples, self.batch_size)
        return _errors_as_items(batches) if info else batches


def batches_per_rank(
    urls: list[str], sizes: dict[str, int], batch_size: int, seed: int, epoch: int, world: int, workers: int
) -> int:
    """Batches every rank streams this epoch: the minimum over ranks of the full batches
    its workers can fill (each worker batches only its own shards)."""
    order = epoch_shards(urls, seed, epoch)
    per_rank = []
    for rank in range(world):
        mine = split_for(order, rank, world)
        per_rank.append(
            sum(
                sum(sizes[u] for u in split_for(mine, w, max(1, workers))) // batch_size
                for w in range(max(1, workers))
            )
        )
    return min(per_rank)


def shuffle_buffer(samples, size: int, rng: random.Random):
    """Reservoir-style shuffle with a fixed RNG (order depends only on the seed)."""
    buf = []
    for s in samples:
        buf.append(s)
        if len(buf) >= size:
            yield buf.pop(rng.randrange(len(buf)))
    while buf:
        yield buf.pop(rng.randrange(len(buf)))


# A user error inside a DataLoader worker reaches the main process as a re-raised copy whose
# message is the worker's whole traceback. Workers pass it on as an item instead, and
# LoaderWithErrors raises it again as the same one-line error.
_ERROR_ITEM = "__avmatch_error__"
_WORKER_ERRORS = {"InputError": InputError, "UnsafeShardError": UnsafeShardError, "ItemError": ItemError}


def _error_item(exc: Exception) -> dict:
    if isinstance(exc, InputError):
        return {_ERROR_ITEM: ["InputError", exc.path, exc.reason]}
    name = type(exc).__name__
    return {_ERROR_ITEM: [name if name in _WORKER_ERRORS else "ItemError", str(exc)]}


def _errors_as_items(batches):
    try:
        yield from batches
    except (AvmatchError, UnsafeShardError) as exc:
        yield _error_item(exc)


class LoaderWithErrors:
    """Iterates a DataLoader; an error item from a worker is raised as its one-line error."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __iter__(self):
        # a DataLoader draws its workers' base seed from torch's global RNG when an iteration
        # starts; drawn on a fork of it, the training's random stream (dropout, init) is the same
        # for any number of workers, persistent or not, and after a resume
        with torch.random.fork_rng(devices=[]):
            batches = iter(self.loader)
        for batch in batches:
            if isinstance(batch, dict) and _ERROR_ITEM in batch:
                name, *args = batch[_ERROR_ITEM]
                raise _WORKER_ERRORS[name](*args)
            yield batch


_TUPLE_SHARD_NAME = re.compile(r"^shards/(.+)-[0-9]{6}\.tar$")  # avdata.tuples' layout


def load_sizes(root: str | Path, name: str, missing_hint: bool = False) -> tuple[list[str], dict[str, int]]:
    """The tuple shards of list ``name`` (``shards/NAME-NNNNNN.tar``, the exact name: never
    another list whose name starts with it) and their sizes, from sizes.json.

    Everything is checked here, in the calling (main) process, before any worker reads:
    every name in sizes.json is a plain relative path inside ``root`` (no URL schemes,
    ``pipe:``, ``..``, absolute paths or symlinks leading out), and every picked shard's
    members are safe (:func:`avdata.tuples.scan_tuple_shard`) and as many as sizes.json
    says. A refusal is an :class:`UnsafeShardError` naming the name or member.
    ``missing_hint``: a directory without them is told to pass ``--items`` (fit by index)."""
    from avdata.tuples import scan_tuple_shard

    root = Path(root)
    sizes_file = root / "sizes.json"
    hint = (
        f"{root}: no tuple shards of {name} to read items from; pass --items SHARDS (the item shards "
        "make-tuples drew it from) or --items STORE (their avdata cache store)"
    )
    if not os.path.lexists(sizes_file):  # anything else there is read_sizes' to refuse
        raise MissingInputError(
            hint if missing_hint else f"{root}: no sizes.json; run avdata make-tuples first"
        )
    sizes = read_sizes(sizes_file)
    for shard in sorted(sizes):
        resolve_inside(root, shard, str(sizes_file))
    picked = {}
    for shard, n in sorted(sizes.items()):
        match = _TUPLE_SHARD_NAME.match(shard)
        if match and match.group(1) == name:
            picked[str(root / shard)] = n
    if not picked:
        if missing_hint:
            raise MissingInputError(hint)
        names = sorted({m.group(1) for m in map(_TUPLE_SHARD_NAME.match, sizes) if m})
        raise MissingInputError(f"{root}: no tuple shards named {name}-*.tar; found {names}")
    for path, n in picked.items():
        if not Path(path).is_file():
            raise InputError(path, "listed in sizes.json but missing")
        held = len(scan_tuple_shard(path))
        if held != n:
            raise UnsafeShardError(f"{path}: holds {held} tuples, {sizes_file} says {n}")
    return list(picked), picked


def _worker_init(_):
    from avdata.io import close_inherited_locks

    close_inherited_locks()  # a killed fit's workers must not keep RUN/.lock (forked copies)
    torch.set_num_threads(1)  # loader workers only decode; their cores belong to the trainer


class EpochSampler(Sampler):
    """The batch numbers of one epoch of an :class:`IndexedBatches`, as (epoch, j): iterated in the
    main process, so a loader's persistent workers are told the epoch with every batch."""

    def __init__(self, batches: int):
        self.batches, self.epoch = batches, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        return iter([(self.epoch, j) for j in range(self.batches)])


def make_loader(dataset, workers: int, pin_memory: bool, sampler: Sampler | None = None) -> LoaderWithErrors:
    """A DataLoader over whole batches (an :class:`IndexedBatches` or a :class:`TupleStream`): with
    IndexedBatches, workers take batch numbers round-robin and the loader keeps their order; with
    a ``sampler`` (:class:`EpochSampler`) its workers persist from epoch to epoch (they keep their
    open files and mapped pages)."""
    return LoaderWithErrors(
        DataLoader(
            dataset,
            batch_size=None,
            shuffle=False,
            sampler=sampler,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=sampler is not None and workers > 0,
            prefetch_factor=4 if workers else None,
            worker_init_fn=_worker_init if workers else None,
        )
    )


class ThreadedBatches:
    """The batches of one epoch of an :class:`IndexedBatches` over an item store, made in order by
    one thread of the trainer's process, ``ahead`` batches ahead. A store's batch is row copies
    (numpy releases the GIL while it copies), bound by memory bandwidth: worker processes would
    add a copy of every batch into shared memory and its page faults, and a second thread only
    competes for the same bandwidth (both measured slower: docs/benchmarks.md). Pinned (for CUDA)
    in the thread that made it."""

    def __init__(self, dataset: IndexedBatches, ahead: int, pin_memory: bool):
        self.dataset, self.ahead, self.pin_memory, self.epoch = dataset, max(2, ahead), pin_memory, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _make(self, epoch: int, j: int) -> dict:
        batch = self.dataset.batch(epoch, j)
        if self.pin_memory:
            batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}
        return batch

    def __iter__(self):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        epoch, n = self.epoch, len(self.dataset)
        pool = ThreadPoolExecutor(1, thread_name_prefix="avtrain-batches")
        pending, j = deque(), 0
        try:
            while pending or j < n:
                while j < n and len(pending) < self.ahead:
                    pending.append(pool.submit(self._make, epoch, j))
                    j += 1
                yield pending.popleft().result()
        finally:  # also when the consumer stops early (max_steps_per_epoch)
            pool.shutdown(wait=True, cancel_futures=True)


def _row_copies(source) -> bool:
    """Whether a batch of ``source`` is row copies of memory-mapped arrays (an item store, feature
    stores): made by one thread (:class:`ThreadedBatches`), not worker processes."""
    if isinstance(source, FeatureItems):
        return source.base is None or _row_copies(source.base)
    return isinstance(source, StoreItems)


class TrainingInput:
    """What ``fit`` trains on, every part checked in the calling process before training:
    by index (the list, its items located and checked in ``items`` or the tuple shards; see
    the module doc) or, with ``tuple_shards``, the tuple shards streamed."""

    def __init__(
        self,
        tuples_dir: str | Path,
        name: str,
        task: str,
        k: int,
        direction: str,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        items: str | Path | None = None,
        tuple_shards: bool = False,
        shuffle_size: int = 200,
        frozen=None,
    ):
        """``frozen`` (:class:`avtrain.train.features.FrozenInputs`): the modalities read as a frozen
        encoder's vectors from feature stores; tuples naming an item the encoder rejected are
        skipped (``self.skipped``: the line that counts them, or None)."""
        self.batch_size, self.seed, self.world, self.workers = batch_size, seed, world, workers
        self.streaming = tuple_shards
        self.skipped = None
        self._loader = None
        if tuple_shards and frozen is not None:
            raise ItemError(
                "--tuple-shards streams the tuple shards' decoded items; a run on frozen encoder "
                "features reads its tuples by index: drop --tuple-shards"
            )
        if tuple_shards:
            if items is not None:
                raise ItemError(
                    "--tuple-shards streams the tuple shards, which carry the items: drop --items"
                )
            self.urls, self.sizes = load_sizes(tuples_dir, name)
            self.n_tuples = sum(self.sizes.values())
            self.dataset = TupleStream(self.urls, batch_size, seed, rank, world, shuffle_size)
            self.source = f"{len(self.urls)} tuple shard(s), streamed"
        else:
            tl = read_training_list(tuples_dir, name, task, k, direction)
            if frozen is not None:
                tl, self.skipped = without_rejected(tl, frozen)
            # a tuple holds both modalities: with both frozen, no decoded item is read
            both_frozen = frozen is not None and len(frozen.modalities) == 2
            source = None if both_frozen else open_items(tuples_dir, items, tl)
            if frozen is not None:
                source = FeatureItems(frozen, source)
            self.dataset = IndexedBatches(locate(tl, source), batch_size, seed, rank, world)
            self.n_tuples = len(tl)
            self.source = f"by index from {source.what}"

    def steps(self, epoch: int) -> int:
        """Full batches this rank takes in ``epoch``."""
        if self.streaming:
            return batches_per_rank(
                self.urls, self.sizes, self.batch_size, self.seed, epoch, self.world, self.workers
            )
        return len(self.dataset)

    def loader(self, epoch: int, pin_memory: bool = False) -> LoaderWithErrors:
        """The loader of ``epoch``'s batches. Read by index, one loader serves every epoch: from an
        item store one thread, 2 x ``workers`` batches ahead (:class:`ThreadedBatches`), else
        ``workers`` persistent DataLoader worker processes; a stream's loader (and its workers)
        is made again each epoch."""
        if self.streaming:
            self.dataset.set_epoch(epoch)
            return make_loader(self.dataset, self.workers, pin_memory)
        if self._loader is None:
            if _row_copies(self.dataset.located.source):
                self._sampler = self._loader = ThreadedBatches(self.dataset, 2 * self.workers, pin_memory)
            else:
                self._sampler = EpochSampler(len(self.dataset))
                self._loader = make_loader(self.dataset, self.workers, pin_memory, self._sampler)
        self._sampler.set_epoch(epoch)
        return self._loader


def to_model_inputs(
    batch: dict,
    direction: str,
    device: torch.device,
    train: bool,
    flip_generator: torch.Generator | None = None,
    channels_last: bool = False,
    frozen: frozenset[str] | set[str] = frozenset(),
) -> tuple:
    """Move a batch to the device and normalise: spectrograms as the reference,
    faces to [-1, 1] CHW; random horizontal face flips for training only. ``frozen``: the
    modalities whose items are a frozen encoder's vectors (taken as they are, never flipped)."""
    from avtrain.methods.encoders import to_branch_input

    q = batch["query"].to(device, non_blocking=True)
    g = batch["gallery"].to(device, non_blocking=True)
    label = batch["label"].to(device, non_blocking=True)
    audio, faces = (q, g) if direction == "a2v" else (g, q)
    # spectrograms (B,224,125) -> (B,1,224,125), (B,k,...) -> (B,k,1,...); faces (..., 224, 224, 3)
    # uint8 -> (..., 3, 224, 224) float
    audio = to_branch_input("audio", audio, "audio" in frozen)
    faces = to_branch_input("face", faces, "face" in frozen)
    if train and flip_generator is not None and "face" not in frozen:
        flip = (torch.rand(faces.shape[:-3], generator=flip_generator) < 0.5).to(device)
        faces = torch.where(flip[..., None, None, None], faces.flip(-1), faces)
    query, gallery = (audio, faces) if direction == "a2v" else (faces, audio)
    if channels_last and query.dim() == 4:
        query = query.contiguous(memory_format=torch.channels_last)
    return query, gallery, label


def label_space(tuples_dir: str | Path, name: str):
    """The classes of a method that classifies (Method.needs_labels), from training list ``name``
    of a tuple directory: ``identity``, the identities the list names (its index file, read from
    the directory's checked manifest); ``gender`` and ``nationality``, the values make-tuples
    recorded for those identities (:func:`avdata.tuples.list_attributes`, from the shards' meta
    file), with ``attributes[identity]`` each identity's values. A list recorded without
    attributes (made by an older make-tuples) gives identity classes only."""
    from avdata.tuples import ATTRIBUTES, index_lists, list_attributes
    from avtrain.evaluation.tuple_lists import iter_jsonl
    from avtrain.methods import LabelSpace

    lists = [il for il in index_lists(tuples_dir) if il.name == name and il.task != "retrieval"]
    if not lists:
        raise MissingInputError(
            f"{tuples_dir}: no index/{name}.jsonl in its manifest; this method learns the training "
            "identities from the list (make-tuples writes it)"
        )
    ids = set()
    for _, row in iter_jsonl(Path(tuples_dir), lists[0].path, lists[0].task):
        ids.add(row["query_identity"])
        ids.update(row.get("gallery_identities", ()))
    recorded = list_attributes(tuples_dir, name) or {}
    attributes = {i: dict(recorded[i]) for i in sorted(ids) if i in recorded}
    classes = {"identity": sorted(ids)}
    for attribute in ATTRIBUTES:
        values = sorted({a[attribute] for a in attributes.values() if attribute in a})
        if values:
            classes[attribute] = values
    return LabelSpace(classes, attributes)
