"""build-shards: reader -> extractor -> writer -> distributor (after img2dataset).

* reader      :func:`plan_shards` turns the sorted media table into a fixed list of
              shard specs (split, modality, index, input rows). The plan depends only
              on the inputs and the config, never on the worker count.
* extractor   :class:`avdata.extract.Extractor` makes samples from one row.
* writer      :func:`write_shard` streams samples into ``SPLIT/MODALITY-NNNNNN.tar``
              under a temporary name, renames it when complete, then writes the
              shard's stats file (``.stats.json``), the done marker.
* distributor :func:`build_shards` skips shards whose marker exists, hands the rest
              to ``-j`` processes (each owns whole shards), then writes ``sizes.json``,
              ``rejects.jsonl``, ``splits.csv`` and ``manifest.json``.

Tar members carry fixed mtime/owner/mode, arrays are encoded deterministically and
every worker runs torch with one thread, so the shards are byte-identical for any
``-j`` and after a killed build is resumed. See docs/shard-format.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import multiprocessing as mp
import os
import queue
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from avdata.errors import InputError
from avdata.extract import ExtractConfig, Extractor, Sample

MODALITIES = ("audio", "face")
# Which source rows feed each output modality (videos feed both).
SOURCES_FOR = {"audio": ("audio", "video"), "face": ("face", "video")}
ROOT_LABEL = {"audio": "audio", "face": "faces", "video": "videos"}
TAR_MTIME = 0  # fixed header fields: same bytes on every machine and run


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides the shard bytes; saved in manifest.json."""

    protocol: str = "matching"
    seed: int = 0
    shard_size: int = 500                    # input items (files) per shard
    seen_heard_fraction: float = 0.1         # pins: source videos held out per train identity
    extract: ExtractConfig = field(default_factory=ExtractConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ShardSpec:
    split: str
    modality: str
    index: int
    rows: list[dict]

    @property
    def name(self) -> str:
        return f"{self.split}/{self.modality}-{self.index:06d}"


# ---------------------------------------------------------------- reader

def plan_shards(media: pd.DataFrame, shard_size: int) -> list[ShardSpec]:
    """Fixed shard plan: per split and output modality, sorted rows chunked by shard_size."""
    if shard_size < 1:
        raise ValueError("shard size must be at least 1")
    specs = []
    placed = media[media["split"].notna()]
    for split in sorted(placed["split"].unique()):
        for modality in MODALITIES:
            rows = placed[(placed["split"] == split) & placed["modality"].isin(SOURCES_FOR[modality])]
            rows = rows.sort_values(["vox_id", "modality", "rel_path"], kind="mergesort")
            records = rows.to_dict("records")
            for i in range(0, len(records), shard_size):
                specs.append(ShardSpec(split, modality, i // shard_size, records[i:i + shard_size]))
    return specs


# ---------------------------------------------------------------- writer

def _encode(sample: Sample, cls: int, quality: int) -> list[tuple[str, bytes]]:
    """Members of one sample, in a fixed order. No pickles anywhere."""
    buf = io.BytesIO()
    if sample.modality == "audio":
        np.save(buf, np.ascontiguousarray(sample.array, dtype="<f4"), allow_pickle=False)
        payload = ("npy", buf.getvalue())
    else:
        from PIL import Image

        Image.fromarray(sample.array).save(buf, format="JPEG", quality=quality, subsampling=0)
        payload = ("jpg", buf.getvalue())
    meta = json.dumps(sample.meta | {"cls": cls}, sort_keys=True, separators=(",", ":")).encode()
    return [("cls", str(cls).encode()), ("json", meta), payload]


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


class _HashingWriter:
    """A write-only file object that hashes every byte passing through."""

    def __init__(self, raw):
        self.raw, self.sha256 = raw, hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.raw.tell()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stats_path(out: Path, name: str) -> Path:
    return out / f"{name}.stats.json"


def shard_done(out: Path, name: str) -> dict | None:
    """The stats of a complete shard, or None if it must be (re)built."""
    sp, tp = stats_path(out, name), out / f"{name}.tar"
    if not (sp.is_file() and tp.is_file()):
        return None
    try:
        stats = json.loads(sp.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    return stats if stats.get("bytes") == tp.stat().st_size else None


def write_shard(spec: ShardSpec, extractor: Extractor, out: Path, class_of: dict[str, int],
                fail_fast: bool = False, on_item=None) -> dict:
    """Write one shard atomically and return its stats (also saved as the done marker)."""
    final = out / f"{spec.name}.tar"
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    rejects, n_samples, identities = [], 0, set()
    inputs_hash = hashlib.sha256()
    with open(tmp, "wb") as raw:
        f = _HashingWriter(raw)  # the shard's sha256 as it is written, not by reading it back
        with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for row in spec.rows:
                if os.path.isfile(row["path"]):
                    inputs_hash.update(f"{row['rel_path']}\t{_sha256_file(Path(row['path']))}\n".encode())
                result = extractor.extract(row, spec.modality)
                for rej in result.rejects:
                    rej = {"root": ROOT_LABEL[row["modality"]], "source": row["rel_path"],
                           "modality": spec.modality, "reason": rej["reason"], "stage": "extract"}
                    if fail_fast:
                        tmp.unlink(missing_ok=True)
                        raise InputError(row["path"], rej["reason"])
                    rejects.append(rej)
                for sample in result.samples:
                    for ext, data in _encode(sample, class_of[row["vox_id"]], extractor.config.jpeg_quality):
                        _add_member(tar, f"{sample.key}.{ext}", data)
                    n_samples += 1
                    identities.add(row["vox_id"])
                if on_item:
                    on_item(len(result.rejects))
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, final)  # readers never see a partial tar under the final name
    stats = {"shard": f"{spec.name}.tar", "split": spec.split, "modality": spec.modality,
             "items": len(spec.rows), "samples": n_samples, "bytes": final.stat().st_size,
             "sha256": f.sha256.hexdigest(), "inputs_sha256": inputs_hash.hexdigest(),
             "identities": sorted(identities), "rejects": rejects}
    sp = stats_path(out, spec.name)
    tmp_stats = sp.with_name(f".{sp.name}.tmp{os.getpid()}")
    tmp_stats.write_text(json.dumps(stats, sort_keys=True, indent=1))
    os.replace(tmp_stats, sp)  # written last: marks the shard done
    return stats


# ---------------------------------------------------------------- distributor

_worker: dict = {}


# One torch thread per worker: fastest for MTCNN on few cores, and the same numerics for any -j.
TORCH_THREADS = 1


_extractors: dict = {}  # per process: one Extractor (its MTCNN) per extract config


def build_shard_task(spec: ShardSpec, config: BuildConfig, out: str | Path, class_of: dict[str, int],
                     fail_fast: bool = False, on_item=None) -> dict:
    """Build one shard in the calling process and return its stats: the unit of work that every
    distributor (multiprocessing, Dask) runs. Its arguments pickle; the Extractor is made once
    per process and config."""
    key = repr(config.extract)
    if key not in _extractors:
        _extractors[key] = Extractor(config.extract, torch_threads=TORCH_THREADS)
    return write_shard(spec, _extractors[key], Path(out), class_of, fail_fast, on_item=on_item)


def _init_worker(progress_queue, config: BuildConfig, out: str, class_of: dict, fail_fast: bool):
    _worker.update(queue=progress_queue, config=config, out=out, class_of=class_of, fail_fast=fail_fast)


def _build_in_worker(spec: ShardSpec) -> dict:
    w = _worker
    return build_shard_task(spec, w["config"], w["out"], w["class_of"], w["fail_fast"],
                            on_item=lambda n_rej: w["queue"].put(n_rej))


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="item", disable=not enabled, dynamic_ncols=True, desc="build-shards")


def _run_specs(todo: list[ShardSpec], config: BuildConfig, out: Path, class_of: dict, jobs: int,
               fail_fast: bool, progress: bool) -> None:
    total_items = sum(len(s.rows) for s in todo)
    rejected = 0
    bar = _progress_bar(total_items, progress)

    def tick(n_rej: int):
        nonlocal rejected
        rejected += n_rej
        bar.update(1)
        bar.set_postfix(rejects=rejected, refresh=False)

    try:
        if jobs <= 1:
            import torch

            threads = torch.get_num_threads()
            try:
                extractor = Extractor(config.extract, torch_threads=TORCH_THREADS)
                for spec in todo:
                    write_shard(spec, extractor, out, class_of, fail_fast, on_item=tick)
            finally:
                torch.set_num_threads(threads)  # leave the caller's setting as it was
            return
        # fork is fast and safe while this process has not started torch's thread pools;
        # otherwise spawn, so no forked OpenMP state reaches the workers
        ctx = mp.get_context("fork" if "torch" not in sys.modules else "spawn")
        q = ctx.Queue()
        with ctx.Pool(jobs, initializer=_init_worker, initargs=(q, config, str(out), class_of, fail_fast)) as pool:
            pending = [pool.apply_async(_build_in_worker, (spec,)) for spec in todo]
            while pending:
                try:
                    while True:
                        tick(q.get(timeout=0.2))
                except queue.Empty:
                    pass
                for r in [r for r in pending if r.ready()]:
                    r.get()  # re-raises a worker's error (fail-fast) here
                    pending.remove(r)
            while True:  # drain the last progress messages
                try:
                    tick(q.get(timeout=0.05))
                except queue.Empty:
                    break
    finally:
        bar.close()


def _hash_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("avmatch", "numpy", "torch", "librosa", "soxr", "soundfile", "pillow", "facenet-pytorch",
                "webdataset", "imageio-ffmpeg", "pandas"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def build_shards(out: str | Path, meta: str | Path, audio: str | Path | None = None, faces: str | Path | None = None,
                 videos: str | Path | None = None, pins_splits: str | Path | None = None,
                 config: BuildConfig = BuildConfig(), jobs: int = 1, fail_fast: bool = False,
                 progress: bool = False, distributor: str = "multiprocessing", scheduler: str | None = None) -> dict:
    """Build (or resume) identity-split shards; returns the manifest dict.

    distributor "multiprocessing" runs ``jobs`` local processes; "dask" runs one task per shard
    on the Dask scheduler ``scheduler`` (address or scheduler file) or, without one, on a
    LocalCluster of ``jobs`` processes (avdata.distribute_dask). The shards are the same."""
    if distributor not in ("multiprocessing", "dask"):
        raise ValueError(f"unknown distributor {distributor!r}: choose multiprocessing or dask")
    if scheduler is not None and distributor != "dask":
        raise ValueError("a scheduler is only used with --distributor dask")
    from avdata.audio import SPEC_CONFIG
    from avdata.ingest import scan_all
    from avdata.splits import assign_media_splits, identity_splits, read_meta, split_counts

    out = Path(out)
    if audio is None and faces is None and videos is None:
        raise ValueError("give at least one of --audio, --faces, --videos")
    meta_df = read_meta(meta)
    splits = identity_splits(meta_df, config.protocol, pins_splits)
    scan = scan_all(meta_df, audio=audio, faces=faces, videos=videos)
    roots = {"audio": audio, "faces": faces, "videos": videos}
    rejects = []
    for p in scan.problems:  # scan-time problems, made relative to their root
        label, rel = _relative_to_roots(p["path"], roots)
        rejects.append({"root": label, "source": rel, "reason": p["reason"], "stage": "scan"})
    if fail_fast and rejects:
        raise InputError(scan.problems[0]["path"], scan.problems[0]["reason"])
    media = assign_media_splits(scan.media, splits, config.protocol, config.seed, config.seen_heard_fraction)
    for row in media[media["split"].isna()].itertuples():
        rej = {"root": ROOT_LABEL[row.modality], "source": row.rel_path, "stage": "split",
               "reason": f"identity {row.name} is not placed by the {config.protocol} protocol"}
        if fail_fast:
            raise InputError(row.path, rej["reason"])
        rejects.append(rej)
    class_of = {v: i for i, v in enumerate(meta_df["vox_id"])}  # stable for a given meta file
    specs = plan_shards(media, config.shard_size)

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*/.*.tmp*"):  # left by a killed build; never under a final name
        stale.unlink()
    todo = [s for s in specs if shard_done(out, s.name) is None]
    if distributor == "dask":
        from avdata.distribute_dask import run_specs_dask

        run_specs_dask(todo, config, out, class_of, jobs, fail_fast, progress, scheduler=scheduler)
    else:
        _run_specs(todo, config, out, class_of, jobs, fail_fast, progress)

    stats = [shard_done(out, s.name) for s in specs]
    missing = [s.name for s, st in zip(specs, stats) if st is None]
    if missing:
        raise RuntimeError(f"shards not complete after build: {missing[:3]}")
    for st in stats:
        rejects.extend(st["rejects"])

    # identity level, with the attributes make-tuples --constrain needs
    splits.merge(meta_df[["vox_id", "gender", "nationality"]], on="vox_id").to_csv(out / "splits.csv", index=False)
    sizes = {st["shard"]: st["samples"] for st in stats}
    (out / "sizes.json").write_text(json.dumps(sizes, indent=1, sort_keys=True) + "\n")
    with open(out / "rejects.jsonl", "w") as f:
        for rej in rejects:
            f.write(json.dumps(rej, sort_keys=True) + "\n")

    listing = "".join(f"{r.modality}\t{r.rel_path}\t{os.path.getsize(r.path)}\n" for r in scan.media.itertuples())
    per_split = {}
    for split in sorted(splits["split"].unique().tolist() + (["seen_heard"] if config.protocol == "pins" else [])):
        ids = splits[splits["split"] == split]["vox_id"] if split != "seen_heard" else splits[splits["split"] == "train"]["vox_id"]
        with_samples = sorted({i for st in stats if st["split"] == split for i in st["identities"]})
        per_split[split] = {
            "identities": int(len(ids)),
            "identities_sha256": _hash_text("\n".join(sorted(ids))),
            "identities_with_samples": len(with_samples),
            "samples": {m: sum(st["samples"] for st in stats if st["split"] == split and st["modality"] == m)
                        for m in MODALITIES},
        }
    manifest = {
        "kind": "avmatch.shards",
        "format_version": 1,
        "config": config.to_dict() | {"spectrogram": SPEC_CONFIG},
        "versions": library_versions(),
        "inputs": {
            "meta_sha256": _sha256_file(Path(meta)),
            "pins_splits_sha256": _sha256_file(Path(pins_splits)) if pins_splits else None,
            "listing_sha256": _hash_text(listing),
            "files": {m: int((scan.media["modality"] == m).sum()) for m in ("audio", "face", "video")},
        },
        "identity_splits": split_counts(splits),
        "splits": per_split,
        "shards": {st["shard"]: {"sha256": st["sha256"], "samples": st["samples"], "bytes": st["bytes"],
                                 "inputs_sha256": st["inputs_sha256"]} for st in stats},
        "rejects": len(rejects),
        "rejects_sha256": _sha256_file(out / "rejects.jsonl"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _relative_to_roots(path: str, roots: dict) -> tuple[str, str]:
    p = Path(path).resolve()
    for label, root in roots.items():
        if root is None:
            continue
        r = Path(root).resolve()
        if p == r or r in p.parents:
            return label, p.relative_to(r).as_posix() or "."
    return "", path
