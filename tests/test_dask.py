"""build-shards --distributor dask on a real dask.distributed LocalCluster (no mocks):
the shards are byte-identical to -j 1, also when a worker is SIGKILLed in the middle of a shard."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import build_shards_args, tar_hashes

from avdata.cli import main
from avdata.synth import synth_corpus

pytest.importorskip("distributed")

BUILD_TIMEOUT_S = 300  # a bound, not an expectation: the builds take ~10-30 s


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("dask_corpus")
    synth_corpus(out, identities=6, clips_per_identity=2, faces_per_identity=2, seed=3)
    # one corrupt clip: a reject found inside a worker, gathered into rejects.jsonl as with -j
    ident = min(p.name for p in (out / "wav").iterdir())
    bad = out / "wav" / ident / "corruptYT01" / "00001.wav"
    bad.parent.mkdir()
    bad.write_bytes(b"RIFF\x00\x01\x00\x00WAVEnot really a wav file" * 40)
    return out


@pytest.fixture(scope="module")
def built_j1(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("dask_j1")
    res = CliRunner().invoke(main, build_shards_args(corpus, out, "-j", "1"))
    assert res.exit_code == 0, res.output
    return out


def test_dask_local_cluster_matches_j1(corpus, built_j1, tmp_path):
    """--distributor dask -j 2 starts a LocalCluster of 2 worker processes; same bytes as -j 1."""
    out = tmp_path / "dask"
    res = CliRunner().invoke(main, build_shards_args(corpus, out, "--distributor", "dask", "-j", "2"))
    assert res.exit_code == 0, res.output
    assert len(tar_hashes(built_j1)) == 13
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rejects if r["source"].endswith("corruptYT01/00001.wav")] == ["extract"]
    assert tar_hashes(out) == tar_hashes(built_j1)
    for name in ("manifest.json", "sizes.json", "rejects.jsonl", "splits.csv"):
        assert (out / name).read_bytes() == (built_j1 / name).read_bytes(), name
    # a re-run finds every shard done and changes nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")}
    res = CliRunner().invoke(main, build_shards_args(corpus, out, "--distributor", "dask", "-j", "2"))
    assert res.exit_code == 0, res.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")} == before


def _build_on_scheduler(corpus: Path, out: Path, scheduler_file: Path) -> None:
    """build_shards of the corpus on the cluster a scheduler file names, as on a shared filesystem."""
    from avdata.shards import BuildConfig, build_shards

    build_shards(
        out,
        corpus / "vox1_meta.csv",
        audio=corpus / "wav",
        faces=corpus / "faces",
        config=BuildConfig(shard_size=2),
        distributor="dask",
        scheduler=str(scheduler_file),
    )


def _executing(client) -> dict[str, list[str]]:
    """Worker address -> keys of the tasks it is running now (asked of the workers themselves)."""
    answers = client.run(
        lambda dask_worker: [ts.key for ts in dask_worker.state.executing], on_error="return"
    )
    return {addr: keys for addr, keys in answers.items() if isinstance(keys, list)}


def _worker_pids(client, timeout: float = 120) -> dict[str, int]:
    """Address -> pid of both workers, once two are alive again (after a kill, the nanny's restart)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = {a: p for a, p in client.run(os.getpid, on_error="return").items() if isinstance(p, int)}
        if len(pids) == 2:
            return pids
        time.sleep(0.2)
    raise AssertionError("the killed worker was not restarted")


def test_dask_worker_sigkilled_mid_shard(corpus, built_j1, tmp_path):
    """SIGKILL the worker running a shard: its nanny restarts it, the scheduler runs the task
    again, the build finishes and its shards are byte-identical to -j 1."""
    from distributed import Client, LocalCluster

    out = tmp_path / "dask-killed"
    # the build joins this cluster through a scheduler file, as on a shared-filesystem cluster
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        scheduler_file = tmp_path / "scheduler.json"
        scheduler_file.write_text(json.dumps({"address": cluster.scheduler_address}))
        pid_of = _worker_pids(client)
        errors = []

        def run():
            try:
                _build_on_scheduler(corpus, out, scheduler_file)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                errors.append(exc)

        build = threading.Thread(target=run, daemon=True)
        build.start()
        killed = None
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while killed is None and build.is_alive() and time.monotonic() < deadline:
            for addr, keys in _executing(client).items():
                if not keys:
                    continue
                shard = keys[0].removeprefix("build-shard-").rsplit("-", 1)[0]  # e.g. train/face-000001
                os.kill(pid_of[addr], signal.SIGKILL)
                # the kill landed in the middle of the shard only if its done marker is not there yet;
                # otherwise (it finished between the question and the kill) try again on the next one
                if not (out / f"{shard}.stats.json").exists():
                    killed = (pid_of[addr], shard)
                dead = pid_of[addr]
                while dead in (pid_of := _worker_pids(client)).values():  # until the nanny has restarted it
                    time.sleep(0.2)
                break
            time.sleep(0.02)
        build.join(timeout=max(1.0, deadline - time.monotonic()))
        assert not build.is_alive(), "the build did not finish in time after the worker was killed"
        assert not errors, errors
        assert killed is not None, "no shard was caught in progress"
        assert killed[0] not in _worker_pids(client).values()  # the worker really died and was replaced
    assert (out / f"{killed[1]}.stats.json").exists()  # the interrupted shard was built again
    assert tar_hashes(out) == tar_hashes(built_j1)
    assert (out / "manifest.json").read_bytes() == (built_j1 / "manifest.json").read_bytes()


def test_dask_unreachable_scheduler_is_one_line_error(corpus, tmp_path, monkeypatch):
    import avdata.distribute_dask as dd

    monkeypatch.setattr(dd, "CONNECT_TIMEOUT_S", 2)  # a closed port: fail in 2 s rather than 30
    res = CliRunner().invoke(
        main,
        build_shards_args(
            corpus, tmp_path / "o", "--distributor", "dask", "--scheduler", "tcp://127.0.0.1:9"
        ),
    )
    assert res.exit_code == 1
    assert res.output.startswith("Error: cannot reach the Dask scheduler tcp://127.0.0.1:9")
    assert len(res.output.strip().splitlines()) == 1


# the CLI runs on each argv of argv[1] (JSON) in a process of its own, so that what Dask leaves for
# exit (a half-built Client's __del__ waiting 2 x the connect timeout, then an 'Exception ignored'
# traceback) is seen too; the connect and handshake timeouts are made short, they are the bound under test
_CLI_RUNS = """
import json, sys
import avdata.distribute_dask as dd
from click.testing import CliRunner
from avdata.cli import main
dd.CONNECT_TIMEOUT_S = dd.HANDSHAKE_TIMEOUT_S = 1
for args in json.loads(sys.argv[1]):
    res = CliRunner().invoke(main, args)
    print(json.dumps([res.exit_code, res.output, repr(res.exception)]), flush=True)
"""
PROCESS_TIMEOUT_S = 60  # a bound, not an expectation: the runs take a few seconds


@contextlib.contextmanager
def _tcp_server(answer: bytes | None):
    """A TCP server that is not a Dask scheduler: it sends ANSWER and hangs up, or (None) accepts
    and stays silent. Yields its tcp:// address."""
    server = socket.create_server(("127.0.0.1", 0))
    held = []

    def serve():
        with contextlib.suppress(OSError):  # closed at the end
            while True:
                conn, _ = server.accept()
                if answer is None:
                    held.append(conn)
                else:
                    conn.sendall(answer)
                    conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for conn in held:
            conn.close()


def test_bad_scheduler_file_or_address_is_one_line_error(corpus, tmp_path):
    """A scheduler file that is junk, not a regular file or missing, an address Dask cannot parse,
    and an address where something else answers (a web server; a port that accepts and stays
    silent): exit 1 and one `Error:` line naming the file or address, before any scan, within the
    connect timeout, and no traceback at exit."""
    files = {
        "junk.json": ("junk{", "not a Dask scheduler file (not JSON: "),
        "list.json": ("[]", 'not a Dask scheduler file (no "address" string in a JSON object)'),
        "noport.json": ('{"address": "tcp://127.0.0.1"}', "its address 'tcp://127.0.0.1' is not a Dask scheduler"),
        "missing.json": (None, "no such Dask scheduler file"),
        "fifo.json": ("fifo", "refusing a FIFO, not a regular file"),
    }  # fmt: skip
    cases = []
    for name, (text, problem) in files.items():
        path = tmp_path / name
        if text == "fifo":
            os.mkfifo(path)  # opening it would wait for a writer forever
        elif text is not None:
            path.write_text(text)
        cases.append((str(path), f"{path}: {problem}"))
    for address in ("junk-address", "tcp://127.0.0.1:notaport", "tcp://127.0.0.1:0", "nonsense://host:1"):
        cases.append((address, f"--scheduler {address!r} is not a Dask scheduler address"))
    with (
        _tcp_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n") as web,
        _tcp_server(None) as silent,
    ):
        cases.append(
            (web, f"cannot reach the Dask scheduler {web} within 1 s: what answers there is not a Dask")
        )
        cases.append(
            (silent, f"cannot reach the Dask scheduler {silent} within 1 s: it accepted the connection")
        )
        argvs = [
            build_shards_args(corpus, tmp_path / "out", "--distributor", "dask", "--scheduler", scheduler)
            for scheduler, _ in cases
        ]
        proc = subprocess.run(
            [sys.executable, "-c", _CLI_RUNS, json.dumps(argvs)],
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT_S,
        )
    assert proc.returncode == 0 and not proc.stderr, proc.stderr  # no 'Exception ignored' at exit
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(cases), proc.stdout
    for (scheduler, needle), (code, output, exception) in zip(cases, results):
        assert code == 1 and exception == "SystemExit(1)", (scheduler, output, exception)
        assert output.startswith("Error: ") and len(output.strip().splitlines()) == 1, output
        assert needle in output, (needle, output)
    assert not (tmp_path / "out").exists()  # refused before the build started


def test_scheduler_without_dask_is_refused(corpus, tmp_path):
    res = CliRunner().invoke(
        main, build_shards_args(corpus, tmp_path / "o", "--scheduler", "tcp://127.0.0.1:9")
    )
    assert res.exit_code == 1
    assert "only used with --distributor dask" in res.output


def _pretend_other_numpy():
    """Runs on a worker: its avmatch now reports another numpy, as a worker from another environment would."""
    import avdata.shards

    real = avdata.shards.library_versions
    avdata.shards.library_versions = lambda: real() | {"numpy": "0.0-worker"}


def test_worker_with_other_versions_is_refused():
    """A worker whose libraries differ from the client's would write other bytes: refused by name."""
    from distributed import Client, LocalCluster

    from avdata.distribute_dask import ClusterError, check_worker_versions

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        check_worker_versions(client)  # the same environment: accepted
        client.run(_pretend_other_numpy)
        with pytest.raises(ClusterError, match=r"has numpy 0.0-worker, this client \d"):
            check_worker_versions(client)


def _page_faults_of_1mib_buffers() -> int:
    """Runs on a worker: minor page faults while 300 buffers of 1 MiB are made and freed."""
    import resource

    import numpy as np

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    before = faults()
    for _ in range(300):
        buffer = np.ones(1 << 18, dtype=np.float32)
        buffer += 1
        del buffer
    return faults() - before


def test_dask_workers_get_glibc_malloc_back(corpus, built_j1, tmp_path):
    """Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which makes every buffer above
    128 KiB a fresh mmap (MTCNN at half speed); a build's tasks undo it in their worker, and
    the shards are still -j 1's bytes."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        assert all(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_") == "65536").values())
        client.run(_page_faults_of_1mib_buffers)  # warm-up
        assert min(client.run(_page_faults_of_1mib_buffers).values()) > 10_000  # Dask's default
        scheduler_file = tmp_path / "scheduler.json"
        scheduler_file.write_text(json.dumps({"address": cluster.scheduler_address}))
        out = tmp_path / "dask"
        _build_on_scheduler(corpus, out, scheduler_file)
        assert max(client.run(_page_faults_of_1mib_buffers).values()) < 1_000
    assert tar_hashes(out) == tar_hashes(built_j1)
