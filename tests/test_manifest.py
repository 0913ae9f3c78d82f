"""Manifests: an unchanged rebuild verifies; a one-byte input change, a changed split rule
and a changed spectrogram setting each fail with a diff naming them; the committed
VoxCeleb1 split manifests hold; a CPU run repeated with its seed has the same manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import make_tuples_args

import avdata.audio
import avdata.corpora.voxceleb1
from avdata.cli import main
from avdata.manifest import (
    WARNING,
    describe,
    diff,
    has_failures,
    identity_split_manifest,
    load_manifest,
    update,
    verify,
)
from avdata.synth import synth_corpus
from avtrain.run.manifest import run_manifest

REPO = Path(__file__).resolve().parents[1]
VOX1 = Path(__file__).resolve().parents[2] / "shared" / "data" / "protocols" / "voxceleb1"


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def build(corpus: Path, out: Path) -> Path:
    res = cli(
        "build-shards",
        "--audio",
        corpus / "wav",
        "--faces",
        corpus / "faces",
        "--meta",
        corpus / "vox1_meta.csv",
        "--out",
        out,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small corpus, its shards and the committed-style manifest of them."""
    root = tmp_path_factory.mktemp("manifest")
    synth_corpus(root / "corpus", identities=8, clips_per_identity=2, faces_per_identity=2, seed=3)
    shards = build(root / "corpus", root / "shards")
    res = cli("manifest", "update", shards, "--out", root / "committed" / "shards.json")
    assert res.exit_code == 0 and "written (new)" in res.output, res.output
    return {
        "root": root,
        "corpus": root / "corpus",
        "shards": shards,
        "manifest": root / "committed" / "shards.json",
    }


def verify_cli(dir: Path, against: Path):
    res = cli("manifest", "verify", dir, "--against", against)
    return res.exit_code, res.output


def test_committed_form_is_canonical_and_describes_the_build(base):
    text = base["manifest"].read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=1) + "\n"
    m = load_manifest(base["manifest"])
    assert m["kind"] == "avmatch.shards" and "integrity" not in m
    assert m == json.loads((base["shards"] / "manifest.json").read_text())
    assert {"torch", "librosa", "pillow", "facenet-pytorch", "numpy", "avmatch"} <= set(m["versions"])


def test_unchanged_rebuild_verifies(base, tmp_path):
    rebuilt = build(base["corpus"], tmp_path / "shards")
    code, out = verify_cli(rebuilt, base["manifest"])
    assert code == 0, out
    assert "identical to" in out
    # tuples: a rebuild from the rebuilt shards verifies against the first
    for shards, tuples in ((base["shards"], tmp_path / "t1"), (rebuilt, tmp_path / "t2")):
        res = cli(*make_tuples_args(shards, tuples, "--tuple-shards", split="test"))
        assert res.exit_code == 0, res.output
    assert cli("manifest", "update", tmp_path / "t1", "--out", tmp_path / "tuples.json").exit_code == 0
    code, out = verify_cli(tmp_path / "t2", tmp_path / "tuples.json")
    assert code == 0, out


def test_bytes_on_disk_must_match_the_directory_manifest(base, tmp_path):
    tuples = tmp_path / "t"
    assert cli(*make_tuples_args(base["shards"], tuples, split="test")).exit_code == 0
    committed = tmp_path / "tuples.json"
    update(tuples, committed)
    index = sorted((tuples / "index").glob("*.jsonl"))[0]
    index.write_bytes(index.read_bytes().replace(b'"label":0', b'"label":1', 1))
    lines = verify(tuples, committed)
    rel = f"index/{index.name}"
    assert any(l.startswith(f"integrity: {rel}: bytes on disk differ") for l in lines), lines
    assert any(l.startswith(f"files: {rel} sha256 changed") for l in lines), lines
    with pytest.raises(ValueError, match="rebuild it"):
        update(tuples, committed)
    # a stray shard (not in manifest.json) is an integrity problem too
    stray = tmp_path / "s"
    shutil.copytree(base["shards"], stray)
    shutil.copy(stray / "train" / "audio-000000.tar", stray / "train" / "audio-000001.tar")
    assert any(
        "train/audio-000001.tar: on disk but not in manifest.json" in l
        for l in verify(stray, base["manifest"])
    )


def _flip_pcm_byte(wav: Path) -> None:
    data = bytearray(wav.read_bytes())
    pos = data.index(b"data") + 8 + (len(data) - 44) // 2  # inside the PCM samples, not the header
    data[pos] ^= 0x40
    wav.write_bytes(bytes(data))


def test_one_byte_input_change_names_the_shard(base, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(base["corpus"], corpus)
    wav = sorted((corpus / "wav").rglob("*.wav"))[0]
    _flip_pcm_byte(wav)
    vox_id = wav.relative_to(corpus / "wav").parts[0]
    splits = {
        l.split(",")[1]: l.split(",")[2] for l in (base["shards"] / "splits.csv").read_text().splitlines()[1:]
    }
    shard = f"{splits[vox_id]}/audio-000000.tar"

    code, out = verify_cli(build(corpus, tmp_path / "shards"), base["manifest"])
    assert code == 1, out
    assert f"shards: {shard} inputs_sha256 changed" in out
    assert f"shards: {shard} sha256 changed" in out
    assert "face-" not in out  # only the shard fed by the changed file
    assert "different from" in out


def test_changed_split_rule_names_the_identity_lists(base, tmp_path, monkeypatch):
    names = avdata.corpora.voxceleb1.read_meta(base["corpus"] / "vox1_meta.csv")["name"]
    test_names = sorted(n for n in names if avdata.corpora.voxceleb1.matching_split(n) == "test")
    moved = test_names[0][0].upper()
    original = avdata.corpora.voxceleb1.matching_split
    monkeypatch.setattr(
        avdata.corpora.voxceleb1,
        "matching_split",
        lambda name: "val" if name[:1].upper() == moved else original(name),
    )
    old = load_manifest(base["manifest"])["splits"]
    n_moved = sum(1 for n in test_names if n[0].upper() == moved)

    code, out = verify_cli(build(base["corpus"], tmp_path / "shards"), base["manifest"])
    assert code == 1, out
    t, v = old["test"]["identities"], old["val"]["identities"]
    assert f"splits: test identity list changed ({t} → {t - n_moved} identities)" in out
    assert f"splits: val identity list changed ({v} → {v + n_moved} identities)" in out

    # the same rule change against the committed VoxCeleb1 manifest names the rule and the lists
    lines = diff(
        load_manifest(REPO / "manifests" / "voxceleb1" / "matching.json"),
        identity_split_manifest(VOX1 / "vox1_meta.csv", "matching"),
    )
    assert lines[0].startswith('rule: "matching: first letter of the VGGFace1 name: A-B val')
    assert any(l.startswith("splits: test identity list changed (193 → ") for l in lines), lines
    assert any(l.startswith("splits: val identity list changed (116 → ") for l in lines), lines


def test_changed_spectrogram_setting_names_config_and_audio_shards(base, tmp_path, monkeypatch):
    monkeypatch.setattr(avdata.audio, "TOP_DB", 60.0)  # what spectrogram_windows reads
    monkeypatch.setattr(
        avdata.audio, "SPEC_CONFIG", avdata.audio.SPEC_CONFIG | {"top_db": 60.0}
    )  # what is recorded
    code, out = verify_cli(build(base["corpus"], tmp_path / "shards"), base["manifest"])
    assert code == 1, out
    lines = out.splitlines()
    assert lines[0] == "config.spectrogram.top_db: 80.0 → 60.0"
    audio = [l for l in lines if l.startswith("shards: ") and "/audio-" in l]
    assert audio and all("sha256 changed" in l and l.endswith("with the same inputs") for l in audio), out
    assert not any("/face-" in l for l in lines)


def test_voxceleb1_split_manifests_verify():
    committed = REPO / "manifests" / "voxceleb1"
    meta, pins = VOX1 / "vox1_meta.csv", VOX1 / "learnable_pins" / "identity_splits.txt"
    for protocol, extra, counts in (
        ("matching", [], {"val": 116, "test": 193, "train": 942}),
        ("pins", ["--pins-splits", pins], {"train": 901, "val": 100, "unseen_unheard": 250}),
    ):
        res = cli(
            "manifest",
            "verify-splits",
            "--meta",
            meta,
            "--protocol",
            protocol,
            *extra,
            "--against",
            committed / f"{protocol}.json",
        )
        assert res.exit_code == 0, res.output
        text = (committed / f"{protocol}.json").read_text()
        m = json.loads(text)
        assert {s: v["identities"] for s, v in m["splits"].items()} == counts
        assert "id10001" not in text and "A.J._Buckley" not in text  # hashes and counts only
    res = cli(
        "manifest",
        "verify-splits",
        "--meta",
        meta,
        "--protocol",
        "matching",
        "--against",
        committed / "pins.json",
    )
    assert res.exit_code == 1 and 'protocol: "pins" → "matching"' in res.output


def test_diff_order_summary_and_version_warnings():
    exp = {
        "kind": "avmatch.shards",
        "versions": {"numpy": "2.0.0"},
        "config": {"spectrogram": {"n_fft": 2048}},
        "inputs": {"listing_sha256": "a" * 64},
        "shards": {f"train/audio-{i:06d}.tar": {"sha256": "b" * 64, "samples": 5} for i in range(80)},
    }
    act = json.loads(json.dumps(exp))
    act["versions"]["numpy"] = "2.1.0"
    assert diff(exp, act) == [f'{WARNING}versions.numpy: "2.0.0" → "2.1.0"'] and not has_failures(
        diff(exp, act)
    )
    act["config"]["spectrogram"]["n_fft"] = 1024
    act["inputs"]["listing_sha256"] = "c" * 64
    for entry in act["shards"].values():
        entry["sha256"] = "d" * 64
    del act["shards"]["train/audio-000079.tar"]
    lines = diff(exp, act)
    assert lines[:3] == [
        "config.spectrogram.n_fft: 2048 → 1024",
        "inputs.listing_sha256 changed (aaaaaaaaaaaa… → cccccccccccc…)",
        "shards: train/audio-000000.tar sha256 changed (bbbbbbbbbbbb… → dddddddddddd…)",
    ]
    assert lines[-2] == "... 32 more differences" and lines[-1].startswith(WARNING)
    assert len(lines) == 52 and has_failures(lines)
    assert diff(exp, act, limit=1000)[-2] == "shards: train/audio-000079.tar missing (expected 5 samples)"


def test_cpu_run_repeats_with_its_seed(train_tuples, tmp_path):
    from avtrain.run.config import TrainConfig
    from avtrain.train.loop import fit

    def run(name, seed):
        cfg = TrainConfig(
            task="matching",
            k=2,
            direction="a2v",
            epochs=1,
            batch_size=8,
            workers=0,
            seed=seed,
            device="cpu",
            threads=1,
            max_steps_per_epoch=3,
        )
        fit(cfg, train_tuples, tmp_path / name, progress=False)
        return tmp_path / name

    first, again, other = run("a", 1), run("b", 1), run("c", 2)
    m1, m2 = run_manifest(first, train_tuples), run_manifest(again, train_tuples)
    assert m1 == m2
    assert (
        m1["seed"] == 1
        and m1["data"]["tuples_manifest_sha256"]
        and set(m1["final_losses"]) >= {"L_total", "L_dis"}
    )
    assert "samples_per_s" not in m1["final_losses"]
    res = cli("manifest", "update", first, "--tuples", train_tuples, "--out", tmp_path / "run.json")
    assert res.exit_code == 0, res.output
    res = cli("manifest", "verify", again, "--tuples", train_tuples, "--against", tmp_path / "run.json")
    assert res.exit_code == 0, res.output
    lines = verify(other, tmp_path / "run.json", tuples=train_tuples)
    assert "config.seed: 1 → 2" in lines and "seed: 1 → 2" in lines
    assert any(l.startswith("weights_sha256 changed") for l in lines)
    assert any(l.startswith("final_losses.L_total: ") for l in lines)
    assert describe(first, tuples=train_tuples) == m1
