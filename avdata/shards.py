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
import re
import sys
import tarfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from avdata.ecosystem import write_ecosystem_files
from avdata.errors import AvmatchError, DecoderCrashError, InputError
from avdata.extract import ExtractConfig, Extractor, Sample, duplicate_keys, sample_key
from avdata.io import (
    add_tar_member,
    atomic_output,
    atomic_write_text,
    close_inherited_locks,
    directory_lock,
    make_output_dir,
    sha256_file,
    sha256_text,
    write_json,
    write_jsonl,
)

MODALITIES = ("audio", "face")
# Which source rows feed each output modality (videos feed both).
SOURCES_FOR = {"audio": ("audio", "video"), "face": ("face", "video")}
ROOT_LABEL = {"audio": "audio", "face": "faces", "video": "videos"}

_SHARD_FILE = re.compile(r"^(audio|face)-\d{6}(\.tar|\.stats\.json|\.detections\.jsonl)$")


class BuildError(AvmatchError, ValueError):
    """A build that cannot start or finish (bad arguments, a locked output directory, dead
    workers, a shard whose decoder crashed). One line; a ValueError too for older callers."""


class OutputLockedError(BuildError):
    """Another build holds OUT/.lock."""


class WorkerDiedError(BuildError):
    """A worker process was killed (signal, OOM killer) twice while building a shard."""


class ShardFailedError(BuildError):
    """A shard could not be built for a reason that is not its inputs' fault (decoder crash);
    it is left without a done marker so that a re-run rebuilds it."""


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides the shard bytes; saved in manifest.json."""

    protocol: str = "matching"
    corpus: str = "voxceleb1"  # avdata.corpora: its layout, meta reader and protocols
    languages: tuple[str, ...] = ()  # fame: (heard, unheard)
    seed: int = 0
    shard_size: int = 500  # input items (files) per shard
    seen_heard_fraction: float = 0.1  # pins: source videos held out per train identity
    device: str = "cpu"  # MTCNN device: cpu, cuda (worker i: cuda:(i mod n)) or auto
    extract: ExtractConfig = field(default_factory=ExtractConfig)

    def to_dict(self) -> dict:
        """The settings as manifest.json records them: ``corpus`` and ``languages`` only where they
        are not VoxCeleb1's defaults, so the manifests of builds from before corpora existed (and
        every voxceleb1 build since) stay as they were."""
        d = dataclasses.asdict(self)
        if d["corpus"] == "voxceleb1":
            del d["corpus"]
        if not d["languages"]:
            del d["languages"]
        else:
            d["languages"] = list(d["languages"])
        return d


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
                specs.append(ShardSpec(split, modality, i // shard_size, records[i : i + shard_size]))
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


class _HashingWriter:
    """A write-only file object that hashes every byte passing through."""

    def __init__(self, raw):
        self.raw, self.sha256 = raw, hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.raw.tell()


def stats_path(out: Path, name: str) -> Path:
    return out / f"{name}.stats.json"


def _shard_file_exts(modality: str) -> tuple[str, ...]:
    return (".tar", ".stats.json", ".detections.jsonl") if modality == "face" else (".tar", ".stats.json")


def detections_path(out: Path, name: str) -> Path:
    """A face shard's sidecar: one JSON line per sample (key, box, prob, n_faces), in shard order.
    Its floats come from MTCNN and move in the last bits between CPUs, so manifests list it by
    its sample count and never by its bytes (docs/reproducibility.md)."""
    return out / f"{name}.detections.jsonl"


def shard_build_sha256(spec: ShardSpec, extract: ExtractConfig, class_of: dict[str, int]) -> str:
    """What a shard's bytes depend on: the extraction settings and spectrogram recipe, the
    shard's name and, per input row, its identity, class, path, size and mtime. Stored in
    the done marker; a marker with another value (other settings, changed or moved inputs,
    another plan) is not done, so a re-run rebuilds that shard instead of keeping bytes the
    manifest would misdescribe. Size + mtime (not content) keep resuming cheap; the content
    hash of what was read is in the marker as ``inputs_sha256``."""
    from avdata.audio import SPEC_CONFIG

    rows = [
        [
            r["modality"],
            r["name"],
            r["vox_id"],
            r["source_id"],
            r["rel_path"],
            int(r["size"]),
            int(r["mtime_ns"]),
            int(class_of[r["vox_id"]]),
        ]
        for r in spec.rows
    ]
    recipe = {
        # 2: face samples record their integer crop; detection floats moved to a sidecar
        "marker_version": 2,
        "shard": spec.name,
        "extract": dataclasses.asdict(extract),
        "spectrogram": SPEC_CONFIG,
        "rows": rows,
    }
    return sha256_text(json.dumps(recipe, sort_keys=True, separators=(",", ":")))


def shard_done(out: Path, name: str, build_sha256: str | None = None) -> dict | None:
    """The stats of a complete shard, or None if it must be (re)built. With
    ``build_sha256`` (see :func:`shard_build_sha256`) a marker written for other settings
    or other inputs is not done."""
    sp, tp = stats_path(out, name), out / f"{name}.tar"
    if not (sp.is_file() and tp.is_file()):
        return None
    try:
        stats = json.loads(sp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    if not isinstance(stats, dict) or stats.get("bytes") != tp.stat().st_size:
        return None
    if build_sha256 is not None and stats.get("build_sha256") != build_sha256:
        return None
    if stats.get("modality") == "face" and not detections_path(out, name).is_file():
        return None
    return stats


def write_shard(
    spec: ShardSpec,
    extractor: Extractor,
    out: Path,
    class_of: dict[str, int],
    fail_fast: bool = False,
    on_item=None,
) -> dict:
    """Write one shard atomically and return its stats (also saved as the done marker).

    A bad input is a reject (or, with ``fail_fast``, an :class:`InputError`). A decoder
    crash (:class:`DecoderCrashError`) or a full disk (:class:`DiskFullError`) is not the
    input's fault: the temp tar is removed, no marker is written and the error propagates."""
    final = out / f"{spec.name}.tar"
    detections: list[dict] = []
    with atomic_output(final) as raw:  # readers never see a partial tar under the final name
        stats = _write_tar(spec, extractor, raw, class_of, fail_fast, on_item, detections)
    if spec.modality == "face":
        write_jsonl(detections_path(out, spec.name), detections)
    stats = {
        "shard": f"{spec.name}.tar",
        "split": spec.split,
        "modality": spec.modality,
        "items": len(spec.rows),
        "bytes": final.stat().st_size,
        "build_sha256": shard_build_sha256(spec, extractor.config, class_of),
    } | stats
    write_json(stats_path(out, spec.name), stats)  # written last: marks the shard done
    return stats


def _write_tar(
    spec: ShardSpec,
    extractor: Extractor,
    raw,
    class_of: dict[str, int],
    fail_fast: bool,
    on_item,
    detections: list[dict],
) -> dict:
    from avdata.manifest.content import ContentRecorder

    rejects, n_samples, identities = [], 0, set()
    inputs_hash = hashlib.sha256()
    content = ContentRecorder(digests=True)
    f = _HashingWriter(raw)  # the shard's sha256 as it is written, not by reading it back
    with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tar:
        # the batched face path (CUDA) extracts ahead in chunks; the per-image path on demand
        batched = (
            iter(extractor.extract_rows(spec.rows, spec.modality))
            if spec.modality == "face" and extractor.batch_faces
            else None
        )
        for row in spec.rows:
            samples, reasons = [], []
            ahead = next(batched) if batched is not None else None
            try:
                if os.path.isfile(row["path"]):
                    inputs_hash.update(f"{row['rel_path']}\t{sha256_file(row['path'])}\n".encode())
            except OSError as exc:  # permission denied, I/O error: a bad input like any other
                reasons = [f"cannot read file ({exc.strerror or exc})"]
            else:
                result = ahead if ahead is not None else extractor.extract(row, spec.modality)
                samples, reasons = result.samples, [r["reason"] for r in result.rejects]
            for reason in reasons:
                rej = {
                    "root": ROOT_LABEL[row["modality"]],
                    "source": row["rel_path"],
                    "modality": spec.modality,
                    "reason": reason,
                    "stage": "extract",
                }
                if fail_fast:
                    raise InputError(row["path"], reason)
                rejects.append(rej)
            for sample in samples:
                members = _encode(sample, class_of[row["vox_id"]], extractor.config.jpeg_quality)
                for ext, data in members:
                    add_tar_member(tar, f"{sample.key}.{ext}", data)
                content.add(sample.key, members)
                if sample.detection is not None:
                    detections.append(sample.detection)
                n_samples += 1
                identities.add(row["vox_id"])
            if on_item:
                on_item(len(reasons))
    return {
        "samples": n_samples,
        "sha256": f.sha256.hexdigest(),
        "inputs_sha256": inputs_hash.hexdigest(),
        "content": content.result(),
        "identities": sorted(identities),
        "rejects": rejects,
    }


# ---------------------------------------------------------------- distributor

_worker: dict = {}


# One torch thread per worker: fastest for MTCNN on few cores, and the same numerics for any -j.
TORCH_THREADS = 1


_extractors: dict = {}  # per process: one Extractor (its MTCNN) per extract config


def build_shard_task(
    spec: ShardSpec,
    config: BuildConfig,
    out: str | Path,
    class_of: dict[str, int],
    fail_fast: bool = False,
    on_item=None,
) -> dict:
    """Build one shard in the calling process and return its stats: the unit of work that every
    distributor (multiprocessing, Dask) runs. Its arguments pickle, and so does every error it
    raises (InputError with fail_fast, DecoderCrashError, DiskFullError); the Extractor is made
    once per process and config."""
    key = repr((config.extract, config.device))
    if key not in _extractors:
        from avdata.kernels import pin_build_kernels

        pin_build_kernels()  # a Dask worker's first task: before its first face detection

        _extractors[key] = Extractor(
            config.extract, device=_worker_device(config.device), torch_threads=TORCH_THREADS
        )
    return write_shard(spec, _extractors[key], Path(out), class_of, fail_fast, on_item=on_item)


def _worker_device(device: str) -> str:
    """The torch device of this process: pool worker i (1-based identity) gets cuda:(i-1 mod n)."""
    if device == "cpu":
        return "cpu"
    from avdata.faces import resolve_device

    identity = mp.current_process()._identity  # (i,) in a Pool worker, () in the main process
    return resolve_device(device, identity[0] - 1 if identity else 0)


def _init_worker(messages, config: BuildConfig, out: str, class_of: dict, fail_fast: bool):
    close_inherited_locks()  # forked: drop our copy, so only the parent holds OUT/.lock
    _die_with_parent()
    _worker.update(messages=messages, config=config, out=out, class_of=class_of, fail_fast=fail_fast)


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the build process dies (kill -9, OOM), so no orphan
    goes on building after it."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _build_in_worker(spec: ShardSpec) -> dict:
    w = _worker
    w["messages"].put(("start", spec.name))  # lets the parent name the shard of a worker that dies
    return build_shard_task(
        spec,
        w["config"],
        w["out"],
        w["class_of"],
        w["fail_fast"],
        on_item=lambda n_rej: w["messages"].put(("item", n_rej)),
    )


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="item", disable=not enabled, dynamic_ncols=True, desc="build-shards")


def _remove_temps(out: Path) -> None:
    """Temp tars and markers left by killed writers; never under a final name. Only called
    while this build holds OUT/.lock and none of its writers runs."""
    for stale in out.glob("*/.*.tmp*"):
        stale.unlink(missing_ok=True)


def _stop_pool(executor: ProcessPoolExecutor, kill: bool) -> None:
    """Shut a pool down; with ``kill`` first terminate its workers, so that none goes on
    writing after the build has stopped (fail-fast, errors)."""
    if kill:
        # Python < 3.14 has no public terminate_workers(); _processes is the pool's own map
        procs = list((getattr(executor, "_processes", None) or {}).values())
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)
    executor.shutdown(wait=True, cancel_futures=True)


def _run_pool(
    specs: list[ShardSpec],
    config: BuildConfig,
    out: Path,
    class_of: dict,
    jobs: int,
    fail_fast: bool,
    tick,
    crashed: list,
) -> tuple[list[ShardSpec], list[str]]:
    """Run ``specs`` on a fresh pool of ``jobs`` processes. Returns the specs not finished
    because a worker died (empty when none did) and the shards being built when it died."""
    # fork is fast and safe while this process has not started torch's thread pools;
    # otherwise spawn, so no forked OpenMP state reaches the workers
    ctx = mp.get_context("fork" if "torch" not in sys.modules else "spawn")
    messages = ctx.SimpleQueue()  # no feeder thread: a message is in the pipe when put() returns
    building: dict[str, None] = {}  # started, not finished (insertion order)
    finished: set[str] = set()

    def drain():
        while not messages.empty():
            msg = messages.get()
            if msg[0] == "start":
                building[msg[1]] = None
            else:
                tick(msg[1])

    executor = ProcessPoolExecutor(
        jobs,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(messages, config, str(out), class_of, fail_fast),
    )
    ok = False
    try:
        futures, broken = {}, False
        try:
            for spec in specs:
                futures[executor.submit(_build_in_worker, spec)] = spec
        except BrokenProcessPool:  # a worker died before all shards were handed out
            broken = True
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            drain()
            for fut in done:
                spec = futures[fut]
                try:
                    fut.result()  # re-raises a worker's error here (fail-fast, full disk)
                except BrokenProcessPool:
                    broken = True
                    continue
                except DecoderCrashError as exc:
                    crashed.append((spec.name, exc))
                finished.add(spec.name)
                building.pop(spec.name, None)
        drain()
        ok = not broken
        unfinished = [s for s in specs if s.name not in finished]
        return unfinished, [n for n in building if n not in finished]
    finally:
        _stop_pool(executor, kill=not ok)


def _run_specs(
    todo: list[ShardSpec],
    config: BuildConfig,
    out: Path,
    class_of: dict,
    jobs: int,
    fail_fast: bool,
    progress: bool,
) -> None:
    """The multiprocessing distributor: ``jobs`` processes, each builds whole shards.

    A worker that dies (kill -9, the OOM killer) breaks its pool: the shards not finished
    are retried once in a fresh pool, then the build stops with one line naming the shard.
    A shard whose decoder crashed is left unbuilt (no done marker) while the others finish,
    then the build stops with one line naming it; a re-run rebuilds just those."""
    total_items = sum(len(s.rows) for s in todo)
    rejected = 0
    crashed: list[tuple[str, DecoderCrashError]] = []
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
                extractor = Extractor(
                    config.extract, device=_worker_device(config.device), torch_threads=TORCH_THREADS
                )
                for spec in todo:
                    try:
                        write_shard(spec, extractor, out, class_of, fail_fast, on_item=tick)
                    except DecoderCrashError as exc:
                        crashed.append((spec.name, exc))
            finally:
                torch.set_num_threads(threads)  # leave the caller's setting as it was
        else:
            try:
                remaining, dying = _run_pool(todo, config, out, class_of, jobs, fail_fast, tick, crashed)
                if remaining:  # a worker died: once more, in a fresh pool
                    _remove_temps(out)
                    remaining, dying = _run_pool(
                        remaining, config, out, class_of, jobs, fail_fast, tick, crashed
                    )
            finally:
                _remove_temps(out)  # of workers killed or stopped; the pool's workers have all ended
            if remaining:
                where = (
                    f"while building {dying[0]}.tar"
                    + (f" (or {', '.join(d + '.tar' for d in dying[1:])})" if len(dying) > 1 else "")
                    if dying
                    else f"before it reported a shard (unfinished: {remaining[0].name}.tar)"
                )
                raise WorkerDiedError(
                    f"a build worker died twice (killed by a signal or the out-of-memory killer) {where}; "
                    f"{len(remaining)} shard(s) not built; re-run the same command to resume"
                )
    finally:
        bar.close()
    if crashed:
        name, exc = min(crashed, key=lambda c: c[0])
        more = f" ({len(crashed) - 1} more shard(s) failed the same way)" if len(crashed) > 1 else ""
        raise ShardFailedError(f"shard {name}.tar not built: {exc}{more}")


def library_versions() -> dict:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in (
        "avmatch",
        "numpy",
        "torch",
        "librosa",
        "soxr",
        "soundfile",
        "pillow",
        "facenet-pytorch",
        "webdataset",
        "imageio-ffmpeg",
        "pandas",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


@contextmanager
def output_lock(out: Path):
    """Hold OUT/.lock (:func:`avdata.io.directory_lock`) for the whole build: a second build into
    the same directory stops at once, naming the holder's pid, instead of deleting the first one's
    temp files. Forked workers close their copy of the descriptor
    (:func:`avdata.io.close_inherited_locks`)."""
    make_output_dir(out)
    with directory_lock(out, "build", locked=OutputLockedError, failed=BuildError):
        yield


def _shard_files(out: Path) -> list[Path]:
    """Shard tars, done markers and detection sidecars under OUT
    (SPLIT/{audio,face}-NNNNNN.{tar,stats.json,detections.jsonl})."""
    from avdata.corpora.base import SPLIT_NAME  # a split folder: any protocol's, custom ones too

    return sorted(p for p in out.glob("*/*") if _SHARD_FILE.match(p.name) and SPLIT_NAME.match(p.parent.name))


def _config_changes(out: Path, manifest_config: dict) -> list[str]:
    """Settings of the previous build in OUT (its manifest.json) that differ from this one's."""
    try:
        old = json.loads((out / "manifest.json").read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(old, dict):
        return []
    changes = []

    def walk(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        elif a != b:
            changes.append(f"{path} {a!r} -> {b!r}")

    walk(old, manifest_config, "")
    return changes


def build_shards(
    out: str | Path,
    meta: str | Path,
    audio: str | Path | None = None,
    faces: str | Path | None = None,
    videos: str | Path | None = None,
    pins_splits: str | Path | None = None,
    config: BuildConfig = BuildConfig(),
    jobs: int = 1,
    fail_fast: bool = False,
    progress: bool = False,
    log=None,
    distributor: str = "multiprocessing",
    scheduler: str | None = None,
    splits: str | Path | None = None,
) -> dict:
    """Build (or resume) identity-split shards of ``config.corpus`` (avdata.corpora: its layout,
    meta reader and ``config.protocol``); returns the manifest dict. ``splits``: the protocol's
    split file (custom) or folder of lists (fame).

    distributor "multiprocessing" runs ``jobs`` local processes; "dask" runs one task per shard
    on the Dask scheduler ``scheduler`` (address or scheduler file) or, without one, on a
    LocalCluster of ``jobs`` processes (avdata.distribute_dask). The shards are the same.

    Holds OUT/.lock throughout. A shard is skipped only when its done marker was written for
    the same settings and the same input files (:func:`shard_build_sha256`); others are
    rebuilt and shards no longer in the plan are removed, so the manifest always describes
    the bytes on disk. ``log``: called with one-line notes (what is rebuilt and why, the
    protocol files' bad rows)."""
    from avdata.corpora import get_corpus

    out = Path(out)
    corpus = get_corpus(config.corpus)
    options = _protocol_options(config, pins_splits, splits)
    corpus.check_options(corpus.protocol(config.protocol), options)  # before the lock and the scan
    if corpus.meta_in_roots:
        if audio is not None or faces is not None or videos is not None:
            raise BuildError(
                f"--corpus {corpus.name} lists its media in --meta; give no --audio, --faces or --videos"
            )
    elif audio is None and faces is None and videos is None:
        raise BuildError("give at least one of --audio, --faces, --videos")
    if distributor not in ("multiprocessing", "dask"):
        raise BuildError(f"unknown distributor {distributor!r}: choose multiprocessing or dask")
    if scheduler is not None and distributor != "dask":
        raise BuildError("a scheduler is only used with --distributor dask")
    if scheduler is not None:
        from avdata.distribute_dask import check_scheduler

        check_scheduler(scheduler)  # junk, or no Dask scheduler there: one line now, not after the scan
    if config.device != "cpu":  # the manifest records the device kind really used: cpu or cuda
        from avdata.faces import resolve_device

        config = dataclasses.replace(config, device=resolve_device(config.device).split(":")[0])
    with output_lock(out):
        return _build_locked(
            out,
            meta,
            audio,
            faces,
            videos,
            options,
            config,
            jobs,
            fail_fast,
            progress,
            log or (lambda line: print(line, file=sys.stderr)),
            distributor,
            scheduler,
        )


def _protocol_options(config: BuildConfig, pins_splits, splits):
    from avdata.corpora import ProtocolOptions

    return ProtocolOptions(
        pins_splits=pins_splits,
        splits=splits,
        languages=tuple(config.languages),
        seed=config.seed,
        seen_heard_fraction=config.seen_heard_fraction,
    )


def _protocol_rejects(problems, fail_fast: bool, log) -> list[dict]:
    """Bad rows of the meta and split files (InputErrors naming file and row): one line each on
    the log and in rejects.jsonl (by the file's name, so the record does not depend on where it
    lies), the good rows having been kept; with fail_fast the first stops the build."""
    out = []
    for problem in problems:
        if fail_fast:
            raise problem
        log(str(problem))
        out.append(
            {
                "root": "protocol",
                "source": Path(problem.path).name,
                "reason": problem.reason,
                "stage": "protocol",
            }
        )
    return out


def _build_locked(
    out: Path,
    meta,
    audio,
    faces,
    videos,
    options,
    config: BuildConfig,
    jobs: int,
    fail_fast: bool,
    progress: bool,
    log,
    distributor: str,
    scheduler: str | None,
) -> dict:
    from avdata.audio import SPEC_CONFIG
    from avdata.corpora import get_corpus, media_split_names
    from avdata.splits import split_counts

    corpus = get_corpus(config.corpus)
    protocol = corpus.protocol(config.protocol)
    meta_df = corpus.read_meta(meta)
    rejects = _protocol_rejects(meta_df.attrs.get("problems", []), fail_fast, log)
    splits = corpus.identity_splits(meta_df, protocol.name, options)
    rejects += _protocol_rejects(splits.attrs.get("problems", []), fail_fast, log)
    scan = corpus.scan(meta_df, audio=audio, faces=faces, videos=videos, meta_path=meta)
    roots = {"audio": audio, "faces": faces, "videos": videos}
    if corpus.meta_in_roots:
        roots = {"meta": Path(meta).parent}
    for p in scan.problems:  # scan-time problems, made relative to their root
        label, rel = _relative_to_roots(p["path"], roots)
        rejects.append({"root": label, "source": rel, "reason": p["reason"], "stage": "scan"})
    if fail_fast and scan.problems:
        raise InputError(scan.problems[0]["path"], scan.problems[0]["reason"])
    media = corpus.assign_media_splits(scan.media, splits, protocol.name, options)
    unplaced_why = media["unplaced"] if "unplaced" in media else [None] * len(media)
    for row, why in zip(media.itertuples(), unplaced_why):
        if row.split is not None and row.split == row.split:  # placed (None or NaN: not)
            continue
        rej = {
            "root": ROOT_LABEL[row.modality],
            "source": row.rel_path,
            "stage": "split",
            "reason": why or f"identity {row.name} is not placed by the {config.protocol} protocol",
        }
        if fail_fast:
            raise InputError(row.path, rej["reason"])
        rejects.append(rej)
    # Two files whose sample keys would be equal (only possible for unusual plain names, see
    # avdata.extract.sample_key): the later one is a reject, so keys are unique in the dataset.
    placed = media[media["split"].notna()].reset_index(drop=True)
    dups = duplicate_keys(zip(placed["vox_id"], placed["rel_path"]))
    for i, first in sorted(dups.items()):
        row, other = placed.iloc[i], placed.iloc[first]
        reason = (
            f"sample key {sample_key(row['vox_id'], row['rel_path'])} is already used by "
            f"{other['rel_path']}; rename one of the two files"
        )
        if fail_fast:
            raise InputError(row["path"], reason)
        rejects.append(
            {
                "root": ROOT_LABEL[row["modality"]],
                "source": row["rel_path"],
                "stage": "scan",
                "reason": reason,
            }
        )
    media = placed.drop(index=list(dups))
    class_of = {v: i for i, v in enumerate(meta_df["vox_id"])}  # stable for a given meta file
    specs = plan_shards(media, config.shard_size)
    manifest_config = config.to_dict() | {"spectrogram": SPEC_CONFIG}

    _remove_temps(out)  # left by a killed build
    keys = {s.name: shard_build_sha256(s, config.extract, class_of) for s in specs}
    todo = [s for s in specs if shard_done(out, s.name, keys[s.name]) is None]
    planned = {f"{s.name}{ext}" for s in specs for ext in _shard_file_exts(s.modality)}
    stale_shards = [p for p in _shard_files(out) if p.relative_to(out).as_posix() not in planned]
    if todo or stale_shards:
        # the old manifest and sizes no longer describe what is (about to be) on disk
        changed = [s for s in todo if stats_path(out, s.name).exists()]
        if changed or stale_shards:
            why = _config_changes(out, manifest_config)
            log(
                f"{out}: rebuilding {len(changed)} shard(s), removing {len(stale_shards)} file(s) of shards no "
                f"longer planned: "
                + ("; ".join(why[:3]) if why else "inputs or plan changed since they were built")
            )
        for name in ("manifest.json", "sizes.json"):
            (out / name).unlink(missing_ok=True)
        for p in stale_shards:
            p.unlink()
        for s in todo:
            stats_path(out, s.name).unlink(missing_ok=True)
    if distributor == "dask":
        from avdata.distribute_dask import run_specs_dask

        run_specs_dask(todo, config, out, class_of, jobs, fail_fast, progress, scheduler=scheduler)
    else:
        _run_specs(todo, config, out, class_of, jobs, fail_fast, progress)

    stats = [shard_done(out, s.name, keys[s.name]) for s in specs]
    missing = [s.name for s, st in zip(specs, stats) if st is None]
    if missing:
        raise BuildError(
            f"{len(missing)} shard(s) not complete after the build, e.g. {missing[0]}.tar; "
            "re-run the same command to resume"
        )
    for st in stats:
        rejects.extend(st["rejects"])

    # identity level, with the attributes make-tuples --constrain needs
    splits_csv = splits.merge(corpus.attributes(meta_df), on="vox_id").to_csv(index=False)
    atomic_write_text(out / "splits.csv", splits_csv)
    write_json(out / "sizes.json", {st["shard"]: st["samples"] for st in stats})
    write_jsonl(out / "rejects.jsonl", rejects)

    listing = "".join(f"{r.modality}\t{r.rel_path}\t{int(r.size)}\n" for r in scan.media.itertuples())
    per_split = {}
    for split in media_split_names(protocol, splits["split"].unique()):
        # a split cut inside identities (pins' seen_heard, fame's heard/unheard) lists the
        # identities of the identity split its media come from
        ids = splits[splits["split"] == protocol.identity_split_of.get(split, split)]["vox_id"]
        with_samples = sorted({i for st in stats if st["split"] == split for i in st["identities"]})
        per_split[split] = {
            "identities": int(len(ids)),
            "identities_sha256": sha256_text("\n".join(sorted(ids))),
            "identities_with_samples": len(with_samples),
            "samples": {
                m: sum(st["samples"] for st in stats if st["split"] == split and st["modality"] == m)
                for m in MODALITIES
            },
        }
    manifest = {
        "kind": "avmatch.shards",
        "format_version": 1,
        "config": manifest_config,
        "versions": library_versions(),
        "inputs": {
            "meta_sha256": sha256_file(meta),
            "pins_splits_sha256": sha256_file(options.pins_splits) if options.pins_splits else None,
            "listing_sha256": sha256_text(listing),
            "files": {m: int((scan.media["modality"] == m).sum()) for m in ("audio", "face", "video")},
        }
        | corpus.protocol_inputs(protocol.name, options),
        "identity_splits": split_counts(splits),
        "splits": per_split,
        "shards": {
            st["shard"]: {
                "sha256": st["sha256"],
                "samples": st["samples"],
                "bytes": st["bytes"],
                "inputs_sha256": st["inputs_sha256"],
                "content": st["content"],
            }
            | (
                {"detections": st["shard"].removesuffix(".tar") + ".detections.jsonl"}
                if st["modality"] == "face"
                else {}
            )
            for st in stats
        },
        "rejects": len(rejects),
        "rejects_sha256": sha256_file(out / "rejects.jsonl"),
    }
    manifest["patterns"] = write_ecosystem_files(out, manifest["shards"], config.protocol)
    write_json(out / "manifest.json", manifest)  # written last: a build is complete when it exists
    return manifest


def _relative_to_roots(path: str, roots: dict) -> tuple[str, str]:
    for label, root in roots.items():  # scanned paths start with their root as given
        if root is not None and (Path(path) == Path(root) or Path(root) in Path(path).parents):
            return label, Path(path).relative_to(root).as_posix() or "."
    p = Path(path).resolve()
    for label, root in roots.items():
        if root is None:
            continue
        r = Path(root).resolve()
        if p == r or r in p.parents:
            return label, p.relative_to(r).as_posix() or "."
    return "", path
