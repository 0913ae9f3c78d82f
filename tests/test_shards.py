"""avdata build-shards end to end on the synthetic corpus (with videos) and real files."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import build_shards_args, tar_hashes

from avdata.cli import main
from avdata.reader import iter_samples, shard_urls
from avdata.synth import synth_corpus

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PROTO = DATA / "protocols" / "voxceleb1"


def build_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return build_shards_args(corpus, out, *extra, media=("wav", "faces", "mp4"), shard_size=4)


def run_cli(args):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    synth_corpus(out, identities=8, clips_per_identity=2, faces_per_identity=2, videos=True, seed=1)
    return out


@pytest.fixture(scope="module")
def built_j1(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards_j1")
    run_cli(build_args(corpus, out, "-j", "1"))
    return out


def test_layout_and_readback(built_j1, corpus):
    sizes = json.loads((built_j1 / "sizes.json").read_text())
    manifest = json.loads((built_j1 / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "val", "test"}
    for split in ("train", "val", "test"):
        for modality in ("audio", "face"):
            urls = shard_urls(built_j1, split, modality)
            assert urls, f"no {split} {modality} shards"
            # dense numbering from 000000
            assert [Path(u).name for u in urls] == [f"{modality}-{i:06d}.tar" for i in range(len(urls))]
            samples = list(iter_samples(urls))
            assert len(samples) == sum(sizes[f"{split}/{Path(u).name}"] for u in urls)
            for s in samples:
                assert "." not in s["__key__"]
                meta = s["json"]
                assert meta["cls"] == s["cls"] and meta["vox_id"].startswith("id")
                assert not Path(meta["source"]).is_absolute()
                if modality == "audio":
                    assert s["npy"].shape == (224, 125) and s["npy"].dtype == np.float32
                    assert s["npy"].max() <= 0.0 and s["npy"].min() >= -80.0
                else:
                    assert s["jpg"].shape == (224, 224, 3) and s["jpg"].dtype == np.uint8
                    assert "box" not in meta and "prob" not in meta  # CPU-dependent floats: sidecar
                    left, top, side = meta["crop"]
                    assert all(isinstance(v, int) for v in meta["crop"]) and side > 0
            if modality == "face":  # the detection sidecar: one line per sample, in shard order
                for u in urls:
                    lines = Path(u).with_suffix("").with_suffix(".detections.jsonl").read_text().splitlines()
                    detections = [json.loads(line) for line in lines]
                    keys = [s["__key__"] for s in iter_samples([u])]
                    assert [d["key"] for d in detections] == keys
                    assert all(len(d["box"]) == 4 and 0.9 <= d["prob"] <= 1.0 for d in detections)
    # videos fed both modalities
    all_audio = [
        s["json"] for sp in ("train", "val", "test") for s in iter_samples(shard_urls(built_j1, sp, "audio"))
    ]
    assert {m["source_modality"] for m in all_audio} == {"audio", "video"}
    # identity-disjoint splits, matching the meta file's names
    ids = {
        sp: {s["json"]["vox_id"] for s in iter_samples(shard_urls(built_j1, sp, "audio"))}
        for sp in ("train", "val", "test")
    }
    assert (
        not (ids["train"] & ids["val"])
        and not (ids["train"] & ids["test"])
        and not (ids["val"] & ids["test"])
    )
    # manifest lists every shard with its sha256
    assert tar_hashes(built_j1) == {k: v["sha256"] for k, v in manifest["shards"].items()}
    assert not list(built_j1.rglob(".*tmp*"))


def test_j2_is_byte_identical(built_j1, corpus, tmp_path):
    out = tmp_path / "shards_j2"
    run_cli(build_args(corpus, out, "-j", "2"))
    assert tar_hashes(out) == tar_hashes(built_j1)
    for name in ("manifest.json", "sizes.json", "rejects.jsonl", "splits.csv"):
        assert (out / name).read_bytes() == (built_j1 / name).read_bytes(), name


def test_killed_build_resumes_identically(built_j1, corpus, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "avdata.cli", *build_args(corpus, out, "-j", "1", "--shard-size", "2")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("*.stats.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(out.rglob("*.stats.json")))
    assert done_before >= 2 and not (out / "manifest.json").exists(), "kill came too late to test resume"
    for tar in out.rglob("*.tar"):  # nothing truncated under a final name
        with tarfile.open(tar) as t:
            assert t.getmembers()
    run_cli(build_args(corpus, out, "-j", "1", "--shard-size", "2"))
    clean = tmp_path / "clean"
    run_cli(build_args(corpus, clean, "-j", "1", "--shard-size", "2"))
    assert tar_hashes(out) == tar_hashes(clean)
    assert (out / "manifest.json").read_bytes() == (clean / "manifest.json").read_bytes()
    assert not list(out.rglob(".*tmp*"))


def test_bad_files_are_rejected_and_good_work_kept(corpus, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(corpus, bad)
    wav_dir = next((bad / "wav").iterdir())
    ytid = next(wav_dir.iterdir())
    (ytid / "00091.wav").write_bytes(b"")  # zero-byte
    good_wav = next(ytid.glob("*.wav"))
    (ytid / "00092.wav").write_bytes(good_wav.read_bytes()[:200])  # truncated
    (ytid / "00093.wav").write_bytes(os.urandom(5000))  # corrupt
    import soundfile as sf

    sf.write(ytid / "00094.wav", np.zeros(16000 * 4, dtype=np.float32), 16000, subtype="PCM_16")  # silent
    face_dir = next(p for p in (bad / "faces").iterdir())
    fy = next(face_dir.iterdir())
    (fy / "9999991.jpg").write_bytes(os.urandom(3000))  # corrupt jpg
    good_jpg = next(fy.glob("*.jpg"))
    (fy / "9999992.jpg").write_bytes(good_jpg.read_bytes()[: len(good_jpg.read_bytes()) // 2])  # truncated
    mp4 = next((bad / "mp4").rglob("*.mp4"))
    (mp4.parent / "09999.mp4").write_bytes(mp4.read_bytes()[:1000])  # truncated mp4
    (bad / "faces" / "Not_In_Meta" / "yt").mkdir(parents=True)  # unknown identity
    shutil.copy(good_jpg, bad / "faces" / "Not_In_Meta" / "yt" / "0000001.jpg")

    out = tmp_path / "shards"
    res = run_cli(build_args(bad, out))
    rejects = [json.loads(l) for l in (out / "rejects.jsonl").read_text().splitlines()]
    by_source = {r["source"].split("/")[-1]: r["reason"] for r in rejects}
    assert "0 bytes" in by_source["00091.wav"] or "empty" in by_source["00091.wav"]
    for name in ("00092.wav", "00093.wav", "00094.wav", "9999991.jpg", "9999992.jpg", "09999.mp4"):
        assert name in by_source, f"{name} not rejected: {sorted(by_source)}"
    assert "silent" in by_source["00094.wav"]
    assert any(r["source"] == "Not_In_Meta" and "unknown identity" in r["reason"] for r in rejects)
    assert all("\n" not in r["reason"] for r in rejects)

    # every good audio input became samples; every face input is either a sample or a reject
    sources = {"audio": set(), "face": set()}
    for split in ("train", "val", "test"):
        for modality in ("audio", "face"):
            for s in iter_samples(shard_urls(out, split, modality)):
                sources[modality].add(s["json"]["source"])
    good_wavs = {p.relative_to(corpus / "wav").as_posix() for p in (corpus / "wav").rglob("*.wav")}
    assert good_wavs <= sources["audio"]
    rejected = {r["source"] for r in rejects}
    all_faces = {p.relative_to(corpus / "faces").as_posix() for p in (corpus / "faces").rglob("*.jpg")}
    assert all_faces <= sources["face"] | rejected
    assert "rejects" in res.output


def test_fail_fast_stops_with_one_line(corpus, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(corpus / "wav", bad / "wav")
    shutil.copy(corpus / "vox1_meta.csv", bad / "vox1_meta.csv")
    target = next((bad / "wav").rglob("*.wav"))
    target.write_bytes(os.urandom(4000))
    res = CliRunner().invoke(
        main,
        [
            "build-shards",
            "--audio",
            str(bad / "wav"),
            "--meta",
            str(bad / "vox1_meta.csv"),
            "--out",
            str(tmp_path / "o"),
            "--fail-fast",
            "--no-progress",
        ],
    )
    assert res.exit_code == 1
    assert str(target) in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_pins_protocol_real_split_file(tmp_path):
    out = tmp_path / "pins"
    run_cli(
        [
            "build-shards",
            "--audio",
            str(DATA / "media" / "voice" / "voxceleb1_named"),
            "--meta",
            str(PROTO / "vox1_meta.csv"),
            "--protocol",
            "pins",
            "--pins-splits",
            str(PROTO / "learnable_pins" / "identity_splits.txt"),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["identity_splits"] == {"train": 901, "unseen_unheard": 250, "val": 100}
    seen = {}
    for split in ("train", "val", "seen_heard", "unseen_unheard"):
        for s in iter_samples(shard_urls(out, split, "audio")):
            seen.setdefault(s["json"]["vox_id"], set()).add(split)
    assert len(seen) == 10  # all ten real clips placed
    assert all(len(v) == 1 for v in seen.values()), seen
    splits = {l.split(",")[1]: l.split(",")[2] for l in (out / "splits.csv").read_text().splitlines()[1:]}
    assert all(splits[i] in v or (v == {"seen_heard"} and splits[i] == "train") for i, v in seen.items())


def test_pins_seen_heard_carved_by_video(corpus, tmp_path):
    out = tmp_path / "pins"
    run_cli(
        build_args(corpus, out, "--protocol", "pins", "--pins-splits", str(corpus / "identity_splits.txt"))
    )
    by_video = {}
    for split in ("train", "val", "seen_heard", "unseen_unheard"):
        for modality in ("audio", "face"):
            for s in iter_samples(shard_urls(out, split, modality)):
                m = s["json"]
                by_video.setdefault((m["vox_id"], m["source_id"]), set()).add(split)
    assert all(len(v) == 1 for v in by_video.values())
    splits = {sp for v in by_video.values() for sp in v}
    assert {"train", "seen_heard"} <= splits
    train_ids = {k[0] for k, v in by_video.items() if v == {"train"}}
    sh_ids = {k[0] for k, v in by_video.items() if v == {"seen_heard"}}
    assert sh_ids <= train_ids
    other = {k[0] for k, v in by_video.items() if v & {"val", "unseen_unheard"}}
    assert not (other & train_ids)
