"""build-shards against hostile and faulty inputs and environments (issue #11, build side):
fail-fast across processes, dead workers, crashed decoders, colliding sample keys, re-runs
with other settings or changed inputs, concurrent builds, a full disk, unreadable and odd
entries, malformed meta rows.

Everything is real: real builds (the CLI, in a subprocess wherever a process may hang or
be killed, always with a timeout), ffmpeg replaced only by wrapper scripts that run the real
one or kill a process (AVMATCH_FFMPEG), a real tmpfs for the full disk, real capability
dropping (setpriv) for permission errors as root.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import build_shards_args, tar_hashes

from avdata.cli import main
from avdata.reader import iter_samples, shard_urls
from avdata.synth import synth_corpus

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------- helpers


def same_build(a: Path, b: Path) -> None:
    """Two shard directories hold the same bytes: tars and every output file."""
    assert tar_hashes(a) == tar_hashes(b)
    for name in ("manifest.json", "sizes.json", "rejects.jsonl", "splits.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def args_for(corpus: Path, out: Path, *extra: str) -> list[str]:
    return build_shards_args(corpus, out, *extra, media=("wav",))


def run_inproc(args) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def run_sub(args, env: dict | None = None, timeout: float = 300, prefix=()) -> subprocess.CompletedProcess:
    """The CLI in its own process (never hangs the suite: killed after ``timeout``)."""
    full_env = os.environ | {"PYTHONPATH": str(REPO)} | (env or {})
    return subprocess.run(
        [*prefix, sys.executable, "-m", "avdata.cli", *map(str, args)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    errors = [l for l in res.stderr.splitlines() if l.startswith("Error: ")]
    assert len(errors) == 1, res.stderr
    return errors[0]


def rejects_of(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "rejects.jsonl").read_text().splitlines()]


def ffmpeg_wrapper(path: Path, body: str) -> Path:
    """An executable standing in for ffmpeg (via AVMATCH_FFMPEG): ``body`` then the real one."""
    import imageio_ffmpeg

    path.write_text(f"#!/bin/sh\n{body}\nexec '{imageio_ffmpeg.get_ffmpeg_exe()}' \"$@\"\n")
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, real_mp4s):
    """Audio only (fast): synthetic wavs, plus two real AAC clips named .m4a, which soundfile
    cannot read, so they go through ffmpeg (where the wrappers act)."""
    out = tmp_path_factory.mktemp("hostile_corpus")
    synth_corpus(out, identities=6, clips_per_identity=2, faces_per_identity=1, seed=3)
    ident_dirs = sorted(p for p in (out / "wav").iterdir() if p.is_dir())
    for ident, mp4 in zip((ident_dirs[0], ident_dirs[-1]), real_mp4s):
        ytid = min(p for p in ident.iterdir() if p.is_dir())
        shutil.copy(mp4, ytid / "00077.m4a")
    return out


@pytest.fixture(scope="module")
def clean(corpus, tmp_path_factory):
    """The reference: a plain -j 1 build of ``corpus``."""
    out = tmp_path_factory.mktemp("hostile_clean")
    run_inproc(args_for(corpus, out))
    return out


def copy_corpus(corpus: Path, dest: Path) -> Path:
    shutil.copytree(corpus, dest, symlinks=True)
    return dest


# ---------------------------------------------------------------- 5: fail-fast across processes


def test_fail_fast_with_two_workers_stops_with_one_line(corpus, tmp_path):
    bad = copy_corpus(corpus, tmp_path / "bad")
    target = sorted((bad / "wav").rglob("*.wav"))[5]
    target.write_bytes(os.urandom(4000))
    res = run_sub(args_for(bad, tmp_path / "o", "-j", "2", "--fail-fast"), timeout=180)
    line = one_line_error(res)
    assert str(target) in line


# ---------------------------------------------------------------- 6: dead workers


def test_killed_worker_is_retried_and_the_result_is_identical(corpus, clean, tmp_path):
    marker = tmp_path / "killed-once"
    wrapper = ffmpeg_wrapper(
        tmp_path / "ffmpeg", f'if mkdir "{marker}" 2>/dev/null; then kill -9 $PPID; exit 1; fi'
    )
    out = tmp_path / "o"
    res = run_sub(args_for(corpus, out, "-j", "2"), env={"AVMATCH_FFMPEG": str(wrapper)}, timeout=240)
    assert res.returncode == 0, res.stderr
    assert marker.is_dir(), "the wrapper never ran: the test did not kill a worker"
    same_build(out, clean)
    assert not list(out.rglob(".*tmp*"))


def test_worker_killed_twice_stops_naming_the_shard_and_a_rerun_finishes(corpus, clean, tmp_path):
    wrapper = ffmpeg_wrapper(tmp_path / "ffmpeg", "kill -9 $PPID; exit 1")
    out = tmp_path / "o"
    res = run_sub(args_for(corpus, out, "-j", "2"), env={"AVMATCH_FFMPEG": str(wrapper)}, timeout=240)
    line = one_line_error(res)
    assert "worker died" in line and "-00000" in line and ".tar" in line, line
    assert not (out / "manifest.json").exists()
    res = run_sub(args_for(corpus, out, "-j", "2"), timeout=240)
    assert res.returncode == 0, res.stderr
    same_build(out, clean)


# ---------------------------------------------------------------- 7: crashed decoder


def _media_reports_crashes(tmp_path: Path, wrapper: Path, clip: Path) -> bool:
    from avdata.errors import DecoderCrashError, InputError
    from avdata.media import decode_audio

    os.environ["AVMATCH_FFMPEG"] = str(wrapper)
    try:
        decode_audio(clip)
    except DecoderCrashError:
        return True
    except InputError:  # a killed ffmpeg still reported as a bad file
        return False
    finally:
        del os.environ["AVMATCH_FFMPEG"]
    return False


def test_crashed_decoder_is_not_a_reject_and_its_shard_is_rebuilt(corpus, clean, tmp_path):
    wrapper = ffmpeg_wrapper(tmp_path / "ffmpeg", "kill -9 $$")
    clip = next((corpus / "wav").rglob("*.m4a"))
    if not _media_reports_crashes(tmp_path, wrapper, clip):
        pytest.skip(
            "avdata.media does not raise DecoderCrashError for a killed ffmpeg yet (decoder side of #11)"
        )
    out = tmp_path / "o"
    res = run_sub(args_for(corpus, out), env={"AVMATCH_FFMPEG": str(wrapper)}, timeout=240)
    line = one_line_error(res)
    assert "00077.m4a" in line and "-00000" in line and ".tar" in line, line
    assert not list(out.rglob(".*tmp*")), "temp tar left behind"
    assert not (out / "manifest.json").exists()
    with_m4a = {
        Path(u).relative_to(clean).as_posix()[:-4]
        for sp in SPLITS
        for u in shard_urls(clean, sp, "audio")
        if any(s["json"]["source"].endswith(".m4a") for s in iter_samples([u]))
    }
    all_shards = {p.relative_to(clean).as_posix()[: -len(".stats.json")] for p in clean.rglob("*.stats.json")}
    done = {p.relative_to(out).as_posix()[: -len(".stats.json")] for p in out.rglob("*.stats.json")}
    assert with_m4a and done == all_shards - with_m4a  # the other shards were finished
    for p in out.rglob("*.stats.json"):  # the shards that were built never list a crash as a reject
        assert not any("m4a" in r["source"] for r in json.loads(p.read_text())["rejects"])
    res = run_sub(args_for(corpus, out), timeout=240)
    assert res.returncode == 0, res.stderr
    same_build(out, clean)


# ---------------------------------------------------------------- 8: sample keys


def test_colliding_names_give_unique_keys_or_a_reject(corpus, tmp_path):
    src = copy_corpus(corpus, tmp_path / "c")
    wavs = sorted((src / "wav").rglob("*.wav"))
    ytid = wavs[0].parent
    shutil.copy(wavs[0], ytid / "clip 1.wav")
    shutil.copy(wavs[1], ytid / "clip-1.wav")
    shutil.copy(wavs[2], ytid / "clip.1.wav")
    ident = ytid.parent
    (ident / "yt__a").mkdir()
    (ident / "yt").mkdir()
    shutil.copy(wavs[0], ident / "yt__a" / "b.wav")
    shutil.copy(wavs[1], ident / "yt" / "a__b.wav")
    out = tmp_path / "o"
    run_inproc(args_for(src, out, "--shard-size", "50"))
    sizes = json.loads((out / "sizes.json").read_text())
    keys, sources = [], set()
    for split in SPLITS:
        urls = shard_urls(out, split, "audio")
        samples = list(iter_samples(urls))  # raised on duplicate members before
        assert len(samples) == sum(sizes[f"{split}/{Path(u).name}"] for u in urls)
        keys += [s["__key__"] for s in samples]
        sources |= {s["json"]["source"] for s in samples}
    assert len(keys) == len(set(keys))
    assert all("." not in k for k in keys)
    rel = ytid.relative_to(src / "wav").as_posix()
    assert {f"{rel}/clip 1.wav", f"{rel}/clip-1.wav", f"{rel}/clip.1.wav"} <= sources
    # plain names keep their readable keys (the committed demo manifests depend on it)
    plain = wavs[0].relative_to(src / "wav").as_posix()
    assert f"{ident.name}__{ytid.name}__{wavs[0].stem}-wav_w0" in keys, plain
    # yt__a/b.wav and yt/a__b.wav map onto one plain key: the later one is a reject with a reason
    ident_rel = ident.relative_to(src / "wav").as_posix()
    pair = {f"{ident_rel}/yt__a/b.wav", f"{ident_rel}/yt/a__b.wav"}
    assert len(pair & sources) == 1
    rej = [r for r in rejects_of(out) if r["source"] in pair]
    assert len(rej) == 1 and "already used by" in rej[0]["reason"], rej


# ---------------------------------------------------------------- 9: re-runs with other settings / inputs


def test_rerun_with_other_settings_rebuilds_to_match_a_clean_build(corpus, clean, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(clean, out)
    run_inproc(args_for(corpus, out, "--windows", "2", "--shard-size", "3"))
    fresh = tmp_path / "fresh"
    run_inproc(args_for(corpus, fresh, "--windows", "2", "--shard-size", "3"))
    same_build(out, fresh)
    assert sorted(p.relative_to(out) for p in out.rglob("*.stats.json")) == sorted(
        p.relative_to(fresh) for p in fresh.rglob("*.stats.json")
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["extract"]["windows"] == 2


def test_rerun_after_an_input_changed_rebuilds_its_shard(corpus, clean, tmp_path):
    src = copy_corpus(corpus, tmp_path / "c")
    out = tmp_path / "o"
    run_inproc(args_for(src, out))
    wavs = sorted((src / "wav").rglob("*.wav"))
    wavs[3].write_bytes(wavs[4].read_bytes())  # same name, other content
    os.utime(wavs[3], ns=(time.time_ns(), time.time_ns() + 10**9))
    run_inproc(args_for(src, out))
    fresh = tmp_path / "fresh"
    run_inproc(args_for(src, fresh))
    same_build(out, fresh)
    assert tar_hashes(out) != tar_hashes(clean)


# ---------------------------------------------------------------- 10: concurrent builds


def test_second_build_into_a_locked_output_stops_naming_the_holder(corpus, clean, tmp_path):
    slow = ffmpeg_wrapper(tmp_path / "ffmpeg", "sleep 2")
    out = tmp_path / "o"
    env = os.environ | {"PYTHONPATH": str(REPO), "AVMATCH_FFMPEG": str(slow)}
    first = subprocess.Popen(
        [sys.executable, "-m", "avdata.cli", *args_for(corpus, out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (
            (out / ".lock").is_file() and (out / ".lock").read_text().strip()
        ):
            time.sleep(0.05)
        assert first.poll() is None, "the first build ended before the second started"
        res = run_sub(args_for(corpus, out), timeout=60)
        line = one_line_error(res)
        assert f"pid {first.pid}" in line, line
        _, err = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    same_build(out, clean)


def test_killed_parallel_build_leaves_no_lock_holder_and_resumes(corpus, clean, tmp_path):
    """kill -9 of a -j 2 build: its workers die with it and do not keep OUT/.lock."""
    slow = ffmpeg_wrapper(tmp_path / "ffmpeg", "sleep 2")
    out = tmp_path / "o"
    env = os.environ | {"PYTHONPATH": str(REPO), "AVMATCH_FFMPEG": str(slow)}
    first = subprocess.Popen(
        [sys.executable, "-m", "avdata.cli", *args_for(corpus, out, "-j", "2")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not list(out.glob("*/.*.tmp*")):
            time.sleep(0.02)
    finally:
        first.kill()
        first.wait()
    time.sleep(0.5)
    res = run_sub(args_for(corpus, out, "-j", "2"), timeout=240)
    assert res.returncode == 0, res.stderr
    same_build(out, clean)


# ---------------------------------------------------------------- 11: a full disk


def _final_files_complete(out: Path) -> None:
    for name in ("splits.csv", "sizes.json", "rejects.jsonl", "manifest.json"):
        p = out / name
        if p.exists():
            assert p.stat().st_size > 0, f"{name} left empty"
            if name.endswith(".json"):
                json.loads(p.read_text())


def test_full_disk_while_writing_shards_is_one_line(corpus, small_tmpfs):
    mnt = small_tmpfs("600k")
    out = mnt / "o"
    res = run_sub(args_for(corpus, out), timeout=240)
    line = one_line_error(res)
    assert "no space left on device while writing" in line and str(out) in line, line
    assert not list(out.rglob(".*tmp*")), "temp files left on the full disk"
    _final_files_complete(out)


def test_full_disk_while_writing_outputs_keeps_old_files_and_recovers(corpus, clean, small_tmpfs):
    mnt = small_tmpfs("16m")
    out = mnt / "o"
    res = run_sub(args_for(corpus, out), timeout=240)
    assert res.returncode == 0, res.stderr
    before = {
        n: (out / n).read_bytes() for n in ("splits.csv", "sizes.json", "rejects.jsonl", "manifest.json")
    }
    filler = mnt / "filler"
    with open(filler, "wb") as f:  # fill the disk to the last byte
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    for block in (4096, 512, 1):
        try:
            with open(filler, "ab") as f:
                while True:
                    f.write(b"\0" * block)
                    f.flush()
        except OSError:
            pass
    res = run_sub(args_for(corpus, out), timeout=240)
    line = one_line_error(res)
    assert "no space left on device while writing" in line, line
    for name, data in before.items():  # the old outputs are intact, never truncated
        assert (out / name).read_bytes() == data, name
    assert not list(out.glob(".*tmp*"))
    filler.unlink()
    res = run_sub(args_for(corpus, out), timeout=240)
    assert res.returncode == 0, res.stderr
    same_build(out, clean)


# ---------------------------------------------------------------- 12: unreadable and odd entries


def test_unreadable_and_odd_entries_are_rejects(corpus, tmp_path):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop CAP_DAC_OVERRIDE")
    src = copy_corpus(corpus, tmp_path / "c")
    wavs = sorted((src / "wav").rglob("*.wav"))
    ytid = wavs[0].parent
    wavs[0].chmod(0)  # permission denied
    os.mkfifo(ytid / "fifo.wav")  # would block a reader forever
    (ytid / "folder.wav").mkdir()  # a directory named like a clip
    (ytid / "dangling.wav").symlink_to(tmp_path / "nowhere.wav")  # target missing
    locked = wavs[-1].parent
    locked.chmod(0)  # a folder that cannot be listed
    out = tmp_path / "o"
    try:
        res = run_sub(
            args_for(src, out),
            timeout=240,
            prefix=("setpriv", "--bounding-set", "-dac_override,-dac_read_search"),
        )
    finally:
        locked.chmod(0o755)
        wavs[0].chmod(0o644)
    assert res.returncode == 0, res.stderr
    rejects = {r["source"]: r["reason"] for r in rejects_of(out)}
    rel = lambda p: p.relative_to(src / "wav").as_posix()
    assert "ermission denied" in rejects[rel(wavs[0])]
    assert "FIFO" in rejects[rel(ytid / "fifo.wav")]
    assert "directory" in rejects[rel(ytid / "folder.wav")]
    assert "dangling symlink" in rejects[rel(ytid / "dangling.wav")]
    assert "cannot read folder" in rejects[rel(locked)]
    assert all("\n" not in r for r in rejects.values())


# ---------------------------------------------------------------- 14: meta rows


def test_meta_row_with_an_extra_field_is_one_line_naming_file_and_row(corpus, tmp_path):
    meta = tmp_path / "vox1_meta.csv"
    lines = (corpus / "vox1_meta.csv").read_text().splitlines()
    lines[1] += "\tstray"  # the first row: pandas would take the first column as an index
    meta.write_text("\n".join(lines) + "\n")
    for args in (
        ["splits", "--meta", meta, "--protocol", "matching", "--out", tmp_path / "s.csv"],
        ["build-shards", "--audio", corpus / "wav", "--meta", meta, "--out", tmp_path / "o", "--no-progress"],
    ):
        res = CliRunner().invoke(main, [str(a) for a in args])
        assert res.exit_code == 1, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert str(meta) in res.output and "row 2" in res.output, res.output
    assert not (tmp_path / "s.csv").exists()
