"""Training input: tuple shards streamed as an explicit list of stages.

    shard list ─ shuffled with (seed, epoch) ─ split by rank ─ split by DataLoader worker
      ─ tar reading (local files opened here, members checked) ─ safe decode (pickles refused)
      ─ seeded sample shuffle buffer ─ to uint8 / float32 arrays ─ batching (full batches only)

The tuple directory is untrusted (docs/security.md): :func:`load_sizes` checks every name in
``sizes.json`` (plain relative paths inside the directory, never URLs: webdataset would run
``pipe:`` names as shell commands) and every member of every tuple shard it picks, in the
main process, so a bad directory is one line before any worker starts. The shards are then
opened with ``open``/``tarfile`` by the workers themselves, never through a URL opener.

The epoch length is computed from ``sizes.json`` before anything is read: every rank
takes the same number of batches (the fewest any rank can fill), so DDP ranks never
wait on each other, and ranks and workers read disjoint shards. Arrays stay compact
(faces uint8 HWC) through the workers; normalisation happens on the device
(:func:`to_model_inputs`), so pinned host memory and copies stay small.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from avdata.errors import InputError
from avdata.reader import MissingInputError, decode_sample, iter_tar_samples, read_sizes
from avdata.untrusted import UnsafeShardError, resolve_inside


def epoch_shards(urls: list[str], seed: int, epoch: int) -> list[str]:
    """The shard order of one epoch: a permutation seeded by (seed, epoch)."""
    order = np.random.default_rng([seed, epoch]).permutation(len(urls))
    return [urls[i] for i in order]


def split_for(urls: list[str], index: int, count: int) -> list[str]:
    """Every count-th shard from index: disjoint and covering across the count parts."""
    return urls[index::count]


def batches_per_rank(
    urls: list[str], sizes: dict[str, int], batch_size: int, seed: int, epoch: int, world: int, workers: int
) -> int:
    """Batches every rank yields this epoch: the minimum over ranks of the full batches
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


class TupleStream(IterableDataset):
    """One rank's stream of batches of training tuples for one epoch (see set_epoch)."""

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


def full_batches(items, batch_size: int):
    """Collated batches of exactly batch_size items; a last partial batch is dropped."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield collate(batch)
            batch = []


# A user error inside a DataLoader worker reaches the main process as a re-raised copy whose
# message is the worker's whole traceback. Workers pass it on as an item instead, and
# LoaderWithErrors raises it again as the same one-line error.
_ERROR_ITEM = "__avmatch_error__"
_WORKER_ERRORS = {"InputError": InputError, "UnsafeShardError": UnsafeShardError}


def _errors_as_items(batches):
    try:
        yield from batches
    except UnsafeShardError as exc:
        yield {_ERROR_ITEM: ["UnsafeShardError", str(exc)]}
    except InputError as exc:
        yield {_ERROR_ITEM: ["InputError", exc.path, exc.reason]}


class LoaderWithErrors:
    """Iterates a DataLoader; an error item from a worker is raised as its one-line error."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __iter__(self):
        for batch in self.loader:
            if isinstance(batch, dict) and _ERROR_ITEM in batch:
                name, *args = batch[_ERROR_ITEM]
                raise _WORKER_ERRORS[name](*args)
            yield batch


def load_sizes(root: str | Path, prefix: str) -> tuple[list[str], dict[str, int]]:
    """Tuple-shard paths whose name starts with prefix, and their sizes, from sizes.json.

    Everything is checked here, in the calling (main) process, before any worker reads:
    every name in sizes.json is a plain relative path inside ``root`` (no URL schemes,
    ``pipe:``, ``..``, absolute paths or symlinks leading out), and every picked shard's
    members are safe (:func:`avdata.tuples.scan_tuple_shard`) and as many as sizes.json
    says. A refusal is an :class:`UnsafeShardError` naming the name or member."""
    from avdata.tuples import scan_tuple_shard

    root = Path(root)
    sizes_file = root / "sizes.json"
    if not os.path.lexists(sizes_file):  # anything else there is read_sizes' to refuse
        raise MissingInputError(f"{root}: no sizes.json; run avdata make-tuples first")
    sizes = read_sizes(sizes_file)
    for name in sorted(sizes):
        resolve_inside(root, name, str(sizes_file))
    picked = {str(root / k): v for k, v in sorted(sizes.items()) if Path(k).name.startswith(prefix)}
    if not picked:
        names = sorted({Path(k).name.rsplit("-", 1)[0] for k in sizes})
        raise MissingInputError(f"{root}: no tuple shards named {prefix}-*.tar; found {names}")
    for path, n in picked.items():
        if not Path(path).is_file():
            raise InputError(path, "listed in sizes.json but missing")
        held = len(scan_tuple_shard(path))
        if held != n:
            raise UnsafeShardError(f"{path}: holds {held} tuples, {sizes_file} says {n}")
    return list(picked), picked


def _worker_init(_):
    torch.set_num_threads(1)  # loader workers only decode; their cores belong to the trainer


def make_loader(stream: TupleStream, workers: int, pin_memory: bool) -> LoaderWithErrors:
    return LoaderWithErrors(
        DataLoader(
            stream,
            batch_size=None,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
            worker_init_fn=_worker_init if workers else None,
        )
    )


def to_model_inputs(
    batch: dict,
    direction: str,
    device: torch.device,
    train: bool,
    flip_generator: torch.Generator | None = None,
    channels_last: bool = False,
) -> tuple:
    """Move a batch to the device and normalise: spectrograms as the reference,
    faces to [-1, 1] CHW; random horizontal face flips for training only."""
    from avtrain.methods.encoders import normalise_audio, normalise_face

    q = batch["query"].to(device, non_blocking=True)
    g = batch["gallery"].to(device, non_blocking=True)
    label = batch["label"].to(device, non_blocking=True)
    audio, faces = (q, g) if direction == "a2v" else (g, q)
    audio = normalise_audio(audio)  # (B,224,125) -> (B,1,224,125); (B,k,...) -> (B,k,1,...)
    faces = normalise_face(faces)  # (..., 224, 224, 3) uint8 -> (..., 3, 224, 224) float
    if train and flip_generator is not None:
        flip = (torch.rand(faces.shape[:-3], generator=flip_generator) < 0.5).to(device)
        faces = torch.where(flip[..., None, None, None], faces.flip(-1), faces)
    query, gallery = (audio, faces) if direction == "a2v" else (faces, audio)
    if channels_last:
        query = query.contiguous(memory_format=torch.channels_last)
    return query, gallery, label


def label_space(tuples_dir: str | Path, name: str):
    """The classes of a method that classifies (Method.needs_labels), from training list ``name``
    of a tuple directory: ``identity``, the identities the list names (its index file, read from
    the directory's checked manifest); ``gender`` and ``nationality``, the values make-tuples
    recorded for those identities (:func:`avdata.tuples.list_attributes`, from the shards' meta
    file), with ``attributes[identity]`` each identity's values. A list recorded without
    attributes (made by an older make-tuples) gives identity classes only."""
    from avdata.tuples import ATTRIBUTES, list_attributes
    from avtrain.evaluation.tuple_lists import read_tuple_lists
    from avtrain.methods import LabelSpace

    lists = [t for t in read_tuple_lists(tuples_dir) if t.name == name]
    if not lists:
        raise MissingInputError(
            f"{tuples_dir}: no index/{name}.jsonl in its manifest; this method learns the training "
            "identities from the list (make-tuples writes it)"
        )
    ids = set()
    for row in lists[0].rows:
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
