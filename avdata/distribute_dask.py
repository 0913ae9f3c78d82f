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
import json
import logging
import os
import sys
from pathlib import Path

from avdata.errors import AvmatchError

# Extra runs of a shard whose task raised (a decoder crash, a full disk being cleared, ...).
# A worker that dies is handled separately by the scheduler (allowed-failures, default 3).
TASK_RETRIES = 2
CONNECT_TIMEOUT_S = 30  # to reach the scheduler
HANDSHAKE_TIMEOUT_S = 5  # then for its first message
MAX_SCHEDULER_FILE_BYTES = 1 << 20  # `dask scheduler --scheduler-file` writes well under 1 kB
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


def _read_scheduler_file(path: Path) -> str:
    """The "address" of a scheduler file (``dask scheduler --scheduler-file``), read as untrusted:
    a regular file (not a FIFO, which would block) of at most MAX_SCHEDULER_FILE_BYTES holding a
    JSON object with a string "address". Else one ClusterError naming the file."""

    def bad(reason: str) -> ClusterError:
        return ClusterError(f"{path}: not a Dask scheduler file ({reason})")

    from avdata.errors import AvmatchError
    from avdata.untrusted import read_regular

    try:  # a regular file (opened without blocking: a FIFO is refused), capped
        raw = read_regular(path, MAX_SCHEDULER_FILE_BYTES, "no such Dask scheduler file")
        cfg = json.loads(raw)
    except AvmatchError as exc:
        raise ClusterError(str(exc)) from None
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, nested too deep
        raise bad(f"not JSON: {getattr(exc, 'msg', None) or type(exc).__name__}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("address"), str):
        raise bad('no "address" string in a JSON object')
    return cfg["address"]


def scheduler_address(scheduler: str | os.PathLike) -> str:
    """The scheduler address that ``--scheduler`` names: the address itself (``tcp://host:8786``,
    ``host:8786``) or the address in the scheduler file it names (an existing file, or anything
    ending in ``.json`` or holding a ``/`` but no ``://``). Checked without touching the network:
    a scheme Dask knows, a host and a port of 1..65535. Else one ClusterError naming the file or
    address. (Dask's Client, given a junk scheduler file or a malformed address, raised an
    AssertionError or a ValueError, and its half-built self then hung at exit for 2 x the connect
    timeout and printed an 'Exception ignored' traceback.)"""
    _require_distributed()
    from distributed.comm.addressing import get_address_host_port, parse_address
    from distributed.comm.registry import get_backend

    target = str(scheduler)
    if os.path.isfile(target) or ("://" not in target and ("/" in target or target.endswith(".json"))):
        address = _read_scheduler_file(Path(target))
        where = f"{target}: its address {address!r}"
    else:
        address = target
        where = f"--scheduler {address!r}"
    try:
        get_backend(parse_address(address)[0])
        host, port = get_address_host_port(address)
        if not host or not 1 <= port <= 65535:
            raise ValueError("no host, or a port outside 1..65535")
    except (ValueError, TypeError, ImportError) as exc:
        raise ClusterError(f"{where} is not a Dask scheduler address ({exc})") from None
    return address


def probe_scheduler(address: str, named: str) -> None:
    """Connect to ``address`` and exchange Dask's handshake, then hang up, all within
    CONNECT_TIMEOUT_S (plus a little for the handshake), on an event loop of its own in a thread
    of its own (callers may have a loop running, a notebook's). Dask's Client, given the same
    address, waited forever on a port that accepts and stays silent, and on a server that is not
    Dask (a web server answers with bytes read as a frame length of exabytes) or on TLS without
    certificates it raised errors after which its half-built Client hung for 2 x the timeout at
    exit and printed an 'Exception ignored' traceback. Any failure here: one ClusterError."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from distributed.comm import connect
    from distributed.security import Security

    async def handshake() -> None:
        args = Security().get_connection_args("client")  # TLS settings of the Dask config, if any
        comm = await connect(address, timeout=CONNECT_TIMEOUT_S, **args)
        await comm.close()

    def run() -> None:
        asyncio.run(asyncio.wait_for(handshake(), CONNECT_TIMEOUT_S + HANDSHAKE_TIMEOUT_S))

    with ThreadPoolExecutor(1, thread_name_prefix="avmatch-dask-probe") as pool:
        try:
            pool.submit(run).result()
        except Exception as exc:  # noqa: BLE001 - refused, silent, unresolvable, not Dask, TLS: all one line
            if isinstance(exc, TimeoutError) and "Timed out" not in str(exc):
                reason = f"it accepted the connection but sent no Dask handshake in {HANDSHAKE_TIMEOUT_S} s"
            elif isinstance(exc, (OSError, TimeoutError, TypeError)):  # TypeError: TLS without certificates
                reason = str(exc)
            else:  # a server that is not Dask: its bytes read as a frame of exabytes, or as garbage
                reason = f"what answers there is not a Dask scheduler ({type(exc).__name__}: {exc})"
            raise ClusterError(
                f"cannot reach the Dask scheduler {named} within {CONNECT_TIMEOUT_S} s: {reason}"
            ) from None


def check_scheduler(scheduler: str | os.PathLike) -> str:
    """The checked address of ``scheduler`` (:func:`scheduler_address`) once a Dask scheduler has
    answered there (:func:`probe_scheduler`); else one ClusterError."""
    address = scheduler_address(scheduler)
    probe_scheduler(address, address if address == str(scheduler) else f"{address} (from {scheduler})")
    return address


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
    address = check_scheduler(scheduler)  # a Dask scheduler answers there: Client fails only if it just went
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(
            f"cannot reach the Dask scheduler {address} within {CONNECT_TIMEOUT_S} s: {exc}"
        ) from None
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
