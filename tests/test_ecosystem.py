"""Shards in the ecosystem's conventions: the snippets of docs/shard-format.md ("Reading avmatch shards
elsewhere") run as they are, in a fresh interpreter that never imports avmatch, on real shards."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from avdata.ecosystem import WIDS_KIND, brace_pattern, shard_patterns

REPO = Path(__file__).resolve().parents[1]


def _doc_snippets() -> list[str]:
    text = (REPO / "docs" / "shard-format.md").read_text()
    section = text.split("## Reading avmatch shards elsewhere", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def _run_outside_avmatch(code: str, cwd: Path) -> str:
    """Run code in a new interpreter; fail if it imported avmatch."""
    probe = (
        code
        + "\nimport sys\nassert not [m for m in sys.modules if m.split('.')[0] in ('avdata', 'avtrain')]\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(cwd / ".hf"),
    }
    res = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.fixture(scope="module")
def shard_root(train_tuples) -> Path:
    """The directory holding the shard directory `shards` built by the session fixture."""
    return train_tuples.parent


def test_brace_patterns():
    assert brace_pattern("train", "face", [0]) == "train/face-000000.tar"
    assert brace_pattern("train", "face", [0, 1, 2]) == "train/face-{000000..000002}.tar"
    assert brace_pattern("val", "audio", [0, 2]) == "val/audio-{000000,000002}.tar"
    shards = {"test/audio-000000.tar": {}, "test/audio-000001.tar": {}, "train/face-000000.tar": {}}
    assert shard_patterns(shards) == {
        "test/audio": "test/audio-{000000..000001}.tar",
        "train/face": "train/face-000000.tar",
    }


def test_build_writes_conventions_consistent_with_manifest(shard_root):
    from braceexpand import braceexpand

    s = shard_root / "shards"
    manifest = json.loads((s / "manifest.json").read_text())
    assert set(manifest["patterns"]) == {
        f"{sp}/{m}" for sp in ("train", "val", "test") for m in ("audio", "face")
    }
    for key, pattern in manifest["patterns"].items():
        split, modality = key.split("/")
        names = sorted(n for n in manifest["shards"] if n.startswith(f"{split}/{modality}-"))
        assert list(braceexpand(pattern)) == names  # the pattern names exactly the shards on record
        per_split = json.loads((s / split / "sizes.json").read_text())
        wids = json.loads((s / split / f"{modality}.wids.json").read_text())
        assert wids["__kind__"] == WIDS_KIND
        assert [e["url"] for e in wids["shardlist"]] == [Path(n).name for n in names]
        for entry, name in zip(wids["shardlist"], names):
            assert entry["nsamples"] == per_split[Path(name).name] == manifest["shards"][name]["samples"]
            assert entry["filesize"] == (s / name).stat().st_size
    card = (s / "README.md").read_text()
    header = card.split("---\n")[1]
    assert header.count("- config_name:") == 6 and "config_name: train-face" in header


def test_doc_snippets_run_without_avmatch(shard_root):
    snippets = _doc_snippets()
    assert len(snippets) == 3
    webdataset_snippet, sizes_snippet, hf_snippet = snippets
    out = _run_outside_avmatch(
        webdataset_snippet + "\nprint(face.shape, face.dtype, spec.shape, spec.dtype, type(meta).__name__)",
        shard_root,
    )
    assert out.split() == ["(224,", "224,", "3)", "uint8", "(224,", "125)", "float32", "dict"]
    out = _run_outside_avmatch(sizes_snippet + "\nprint(n_faces)", shard_root)
    manifest = json.loads((shard_root / "shards" / "manifest.json").read_text())
    assert int(out) == manifest["splits"]["train"]["samples"]["face"]


def test_hugging_face_datasets_keeps_every_column(shard_root):
    hf_snippet = _doc_snippets()[2]
    out = _run_outside_avmatch(
        hf_snippet + "\nimport numpy as np\n"
        "print(sorted(faces.column_names), faces[0]['jpg'].size, len(faces))\n"
        "print(sorted(spectrograms.column_names), np.asarray(spectrograms[0]['npy']).shape, len(spectrograms))",
        shard_root,
    )
    face_line, audio_line = out.strip().splitlines()
    manifest = json.loads((shard_root / "shards" / "manifest.json").read_text())
    train = manifest["splits"]["train"]["samples"]
    assert face_line == f"['__key__', '__url__', 'cls', 'jpg', 'json'] (224, 224) {train['face']}"
    assert audio_line == f"['__key__', '__url__', 'cls', 'json', 'npy'] (224, 125) {train['audio']}"
