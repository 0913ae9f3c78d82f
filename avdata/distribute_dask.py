"""build-shards over a Dask cluster (``--distributor dask``).

The same shard plan as every other distributor, one Dask task per shard, each task running
:func:`avdata.shards.build_shard_task` (the same writer, so the same temp-name + rename +
done-marker protocol and the same bytes as ``-j 1``). Dask supplies what a home-made pool
would have to re-invent:

* a lost worker (killed, out of memory, its machine gone) is noticed by the scheduler, its
  nanny restarts it, and its task is run again elsewhere (``distributed.scheduler.allowed-failures``);
* a task that raises is retried ``retries`` times (a decoder crash may be transient);
* progress comes from completed futures (``as_completed``), so it works across machines.

Workers write straight to ``out``: it must be on a filesystem that every worker and the
client see at the same path, as must the input roots (see docs/cluster.md).

``scheduler`` is a scheduler address (``tcp://host:8786``) or the path of a scheduler file
(``dask scheduler --scheduler-file F``). Without one, a ``LocalCluster`` of ``jobs`` worker
processes with one thread each is started and closed again.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
from pathlib import Path

from avdata.errors import AvmatchError

# Extra runs of a shard whose task raised (a decoder crash, a full disk being cleared, ...).
# A worker that dies is handled separately by the scheduler (allowed-failures, default 3).
TASK_RETRIES = 2
CONNECT_TIMEOUT_S = 30  # to reach the scheduler
WORKERS_TIMEOUT_S = 300  # for at least one worker to join it


# Dask's nannies start every worker with MALLOC_TRIM_THRESHOLD_=65536 (its config
# distributed.nanny.pre-spawn-environ). Setting any malloc variable also freezes glibc's mmap
# threshold at 128 KiB, so every tensor above it is mmapped and unmapped again, op after op:
# `--distributor dask -j 2` ran at 0.48x multiprocessing on 250-800 px photos (bench/scale.py
# --rates-only, docs/benchmarks.md). Each task puts back the thresholds glibc's own dynamic rule
# ends up with for large buffers (mmap above 32 MiB, trim above 2x that); 0.90x after.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def restore_malloc_thresholds() -> bool:
    """Undo Dask's MALLOC_TRIM_THRESHOLD_ in this process (glibc only); True if it was set and undone."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): the variable means nothing there
        return False
    return (
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    )


def build_shard_on_worker(*args, **kwargs) -> dict:
    """The Dask task: `avdata.shards.build_shard_task`, after undoing Dask's malloc setting in
    this worker (two mallopt calls: cheaper than remembering whether they were made)."""
    from avdata.shards import build_shard_task

    restore_malloc_thresholds()
    return build_shard_task(*args, **kwargs)


class ClusterError(AvmatchError):
    """The Dask cluster cannot be reached or used (no scheduler, no workers, lost tasks)."""


def _require_distributed():
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ClusterError(
            "--distributor dask needs dask.distributed: pip install 'avmatch[cluster]'"
        ) from None


@contextlib.contextmanager
def dask_client(scheduler: str | os.PathLike | None, jobs: int):
    """A Client on the given scheduler (address or scheduler file), or on a LocalCluster of
    ``jobs`` single-threaded worker processes that lives as long as the context."""
    _require_distributed()
    from distributed import Client, LocalCluster

    if scheduler is None:
        # processes, not threads: MTCNN and ffmpeg pipes hold the GIL in places, and a
        # killed worker must not take the client with it
        with (
            LocalCluster(
                n_workers=jobs,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster, set_as_default=False) as client,
        ):
            yield client
        return
    target = str(scheduler)
    try:
        if Path(target).is_file():
            client = Client(scheduler_file=target, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        else:
            client = Client(target, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler {target}: {exc}") from None
    try:
        yield client
    finally:
        client.close()


def check_worker_versions(client) -> None:
    """Refuse workers whose libraries differ from the client's: the manifest records the
    client's versions, and the shard bytes depend on them (decoders, resamplers, MTCNN, JPEG)."""
    from avdata.shards import library_versions

    mine = library_versions()
    answers = client.run(library_versions, on_error="return")
    for addr, theirs in sorted(answers.items()):
        if isinstance(theirs, BaseException):
            raise ClusterError(
                f"Dask worker {addr} cannot run avmatch ({type(theirs).__name__}: {theirs}); "
                "install the same avmatch environment on every worker"
            )
        diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if diff:
            k = diff[0]
            raise ClusterError(
                f"Dask worker {addr} has {k} {theirs.get(k)}, this client {mine.get(k)}: the shards "
                "would differ from a local build; install the same environment on every worker"
            )


def run_specs_dask(
    todo: list,
    config,
    out: Path,
    class_of: dict[str, int],
    jobs: int,
    fail_fast: bool,
    progress: bool,
    scheduler: str | os.PathLike | None = None,
    retries: int = TASK_RETRIES,
) -> list[dict]:
    """Build every shard spec of ``todo`` as one Dask task each; returns their stats in plan order.

    Raises the first task error (an ``InputError`` under fail-fast, after Dask's retries),
    after cancelling the tasks not yet finished; the shards already written stay done, so a
    re-run resumes."""
    from avdata.shards import _progress_bar

    if not todo:
        return []
    with dask_client(scheduler, jobs) as client:
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        try:
            client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
        except TimeoutError:
            raise ClusterError(
                f"no Dask worker joined the scheduler {client.scheduler.address} within {WORKERS_TIMEOUT_S} s"
            ) from None
        check_worker_versions(client)
        spec_of = {}
        futures = []
        for spec in todo:
            # each task carries the classes of its own identities only: no shared input, so the
            # tasks have no dependency and the scheduler hands each to whichever worker is free
            # (a shared future would pull every task towards the worker that holds it)
            classes = {row["vox_id"]: class_of[row["vox_id"]] for row in spec.rows}
            fut = client.submit(
                build_shard_on_worker,
                spec,
                config,
                str(out),
                classes,
                fail_fast,
                key=f"build-shard-{spec.name}-{os.urandom(4).hex()}",
                retries=retries,
                pure=False,
            )
            spec_of[fut.key] = spec
            futures.append(fut)
        stats_of = {}
        bar = _progress_bar(sum(len(s.rows) for s in todo), progress)
        rejected = 0
        try:
            for fut in as_completed(futures, loop=client.loop):
                stats = fut.result()  # re-raises the task's error here
                stats_of[fut.key] = stats
                rejected += len(stats["rejects"])
                bar.update(len(spec_of[fut.key].rows))
                bar.set_postfix(rejects=rejected, shards=f"{len(stats_of)}/{len(todo)}", refresh=False)
        except KilledWorker:
            client.cancel([f for f in futures if not f.done()])
            raise ClusterError(
                f"shard {spec_of[fut.key].name}: every worker that ran it died (out of memory? "
                "see the worker logs); the shards done so far are kept, re-run to resume"
            ) from None
        except BaseException:
            client.cancel([f for f in futures if not f.done()])
            raise
        finally:
            bar.close()
        return [stats_of[f.key] for f in futures]
