"""Issue #23 section 3: the item shards' extraction settings travel with the data. A run records
them (and the lists it trained on) from the manifests; embed, match, score and export preprocess
raw media with them; ``fit --val-tuples DIR`` finds its item shards through DIR's manifest; a run
without the record uses avdata's defaults and says so in one line."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import build_shards_args, make_tuples_args, tiny_fit_sets

from avdata.extract import ExtractConfig
from avtrain.cli import main as avtrain_main

MARGIN = 0.3  # not avdata's default (0.2)


def _invoke(main, args, code=0):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == code, res.output
    return res


def _avdata(args, code=0):
    from avdata.cli import main

    return _invoke(main, args, code)


def _avtrain(args, code=0):
    return _invoke(avtrain_main, args, code)


def _notes(res) -> list[str]:
    return [line for line in res.output.splitlines() if line.startswith("note: ")]


@pytest.fixture(scope="module")
def built(train_tuples, tmp_path_factory, one_torch_thread):
    """The session's synthetic corpus built again with --face-margin 0.3, its train and val lists,
    and a run of two tiny steps validated on --val-tuples alone (no --val-shards)."""
    corpus = train_tuples.parent / "corpus"
    tmp = tmp_path_factory.mktemp("settings")
    shards, tuples, val, run = tmp / "shards", tmp / "tuples", tmp / "val", tmp / "run"
    _avdata(build_shards_args(corpus, shards, "--face-margin", MARGIN, shard_size=100))
    _avdata(make_tuples_args(shards, tuples, "--no-tuple-shards", direction="a2v"))
    _avdata(make_tuples_args(shards, val, "--no-tuple-shards", split="val", direction="a2v"))
    fit = _avtrain(
        [
            "fit",
            "--shards",
            tuples,
            "--items",
            shards,
            "--val-tuples",
            val,
            "--out",
            run,
            "--epochs",
            1,
            "--device",
            "cpu",
            "--no-progress",
            *tiny_fit_sets(2),
        ]
    )
    assert not _notes(fit), fit.output  # the settings were found: nothing to say
    return {"corpus": corpus, "shards": shards, "tuples": tuples, "val": val, "run": run, "tmp": tmp}


def test_make_tuples_and_cache_link_their_item_shards(built, tmp_path):
    from avdata.tuples import linked_source_shards
    from avtrain.run.data_record import locate_item_shards

    manifest = json.loads((built["tuples"] / "manifest.json").read_text())
    assert manifest["source_shards"] == os.path.relpath(built["shards"], built["tuples"])
    assert linked_source_shards(built["tuples"], manifest) == (built["tuples"] / "../shards", "")
    # where the shards were is no part of what the tuples are: manifests (manifests/demo) leave it out
    from avdata.manifest.describe import describe

    assert "source_shards" not in describe(built["tuples"])
    # an item store links to them too, and fit --items STORE finds them through it
    store = tmp_path / "store"
    _avdata(["cache", "--shards", built["shards"], "--out", store])
    found, _ = locate_item_shards(built["tuples"], store)
    assert found.resolve() == built["shards"].resolve()
    # a link to another build (same path, other manifest bytes) is not followed
    other = tmp_path / "other"
    shutil.copytree(built["tuples"], other / "tuples")
    shutil.copytree(built["shards"], other / "shards")
    m = json.loads((other / "shards" / "manifest.json").read_text())
    (other / "shards" / "manifest.json").write_text(json.dumps(m | {"rejects": m["rejects"] + 1}))
    found, why = locate_item_shards(other / "tuples")
    assert found is None and "not the one it was made from" in why, why


def test_the_run_records_the_builds_settings_and_its_lists(built):
    from avdata.io import sha256_file
    from avtrain.run.checkpoint import load_checkpoint
    from avtrain.run.manifest import run_manifest

    state = load_checkpoint(built["run"] / "checkpoint.pt")
    record = state["data"]
    shards = record["item_shards"]
    assert shards["extract"]["face_margin"] == MARGIN
    assert (
        shards["extract"] == json.loads((built["shards"] / "manifest.json").read_text())["config"]["extract"]
    )
    assert shards["manifest_sha256"] == sha256_file(built["shards"] / "manifest.json")
    assert shards["format_version"] == 1 and shards["protocol"] == "matching" and shards["spectrogram"]
    assert record["tuples"] == {
        "dir": str(built["tuples"]),
        "manifest_sha256": sha256_file(built["tuples"] / "manifest.json"),
        "lists": [state["config"]["tuples"]],
    }
    # --val-tuples alone: its item shards were found through its manifest, and validation ran
    assert record["val"]["lists"] == ["matching_val_a2v_k2"]
    assert record["val"]["item_shards"] == str(built["val"] / "../shards")
    assert record["val"]["manifest_sha256"] == sha256_file(built["val"] / "manifest.json")
    assert (built["run"] / "best.pt").is_file() and "val_matching_a2v_k2" in state["val"]
    data = run_manifest(built["run"])["data"]  # the run manifest carries it, without paths
    assert data["item_shards"]["extract"]["face_margin"] == MARGIN and "path" not in data["item_shards"]
    assert data["val"]["lists"] == ["matching_val_a2v_k2"]


def test_embed_preprocesses_at_the_recorded_margin(built, real_photos, tmp_path):
    from avdata.reader import decode_jpg, index_items, read_member
    from avtrain import load_model
    from avtrain.serve.embed import read_embeddings

    model = load_model(built["run"])
    assert model.extract.face_margin == MARGIN
    # a face of the corpus gives exactly the crop the 0.3 build stored for it
    items = index_items(built["shards"])
    face = items[items["modality"] == "face"].iloc[0]
    stored = decode_jpg(
        read_member(built["shards"] / face["tar"], int(face["data_offset"]), int(face["data_size"]))
    )
    source = next((built["corpus"] / "faces").rglob(os.path.basename(face["source"])))
    assert np.array_equal(model.face_input(source), stored)
    # a real photo: the 0.3 crop and embedding differ from the 0.2 (default) ones
    photo = real_photos[0]
    at_default = load_model(built["run"], extract=ExtractConfig())
    assert not np.array_equal(model.face_input(photo), at_default.face_input(photo))
    assert not np.allclose(model.embed_face(photo), at_default.embed_face(photo), rtol=1e-3, atol=1e-4)
    res = _avtrain(
        ["embed", "--run", built["run"], "--faces", photo, "--out", tmp_path / "e.npz", "--no-progress"]
    )
    assert not _notes(res), res.output
    got = read_embeddings(tmp_path / "e.npz")
    np.testing.assert_array_equal(got.face[0], model.embed_face(photo))


def test_export_writes_the_recorded_settings(built, real_photos, tmp_path):
    from avtrain import load_model

    out = tmp_path / "model"
    res = _avtrain(["export", "--run", built["run"], "--out", out])
    assert not _notes(res), res.output
    meta = json.loads((out / "config.json").read_text())
    assert meta["extract"]["face_margin"] == MARGIN
    assert meta["data"]["item_shards"]["extract"]["face_margin"] == MARGIN
    exported = load_model(out)
    assert exported.extract == load_model(built["run"]).extract
    photo = real_photos[0]
    np.testing.assert_array_equal(exported.embed_face(photo), load_model(built["run"]).embed_face(photo))


def test_a_run_or_export_without_the_record_uses_the_defaults_and_says_so(built, real_photos, tmp_path):
    from avtrain import load_model
    from avtrain.run.checkpoint import load_checkpoint, save_checkpoint

    old = tmp_path / "old"
    old.mkdir()
    state = load_checkpoint(built["run"] / "checkpoint.pt")
    del state["data"]  # a checkpoint of a fit from before runs recorded their data
    save_checkpoint(old / "checkpoint.pt", state)
    shutil.copy(built["run"] / "config.yaml", old / "config.yaml")
    photo = real_photos[0]
    res = _avtrain(["embed", "--run", old, "--faces", photo, "--out", tmp_path / "e.npz", "--no-progress"])
    notes = _notes(res)
    assert len(notes) == 1 and "records no extraction settings" in notes[0] and "defaults" in notes[0], (
        res.output
    )
    assert load_model(old).extract == ExtractConfig(windows=1)
    # export of it: no record to write; loading that export says so once
    res = _avtrain(["export", "--run", old, "--out", tmp_path / "m"])
    assert len(_notes(res)) == 1, res.output
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "data" not in meta and meta["extract"]["face_margin"] == 0.2
    res = _avtrain(
        ["embed", "--run", tmp_path / "m", "--faces", photo, "--out", tmp_path / "f.npz", "--no-progress"]
    )
    notes = _notes(res)
    assert len(notes) == 1 and "does not record where its extract settings came from" in notes[0], res.output


def test_unknown_item_shards_are_recorded_as_unknown_with_the_reason(built, tmp_path):
    from avtrain.run.data_record import run_data_record, serving_extract

    tuples = tmp_path / "tuples"
    shutil.copytree(built["tuples"], tuples)
    m = json.loads((tuples / "manifest.json").read_text())
    del m["source_shards"]  # a tuple directory made before make-tuples recorded the link
    (tuples / "manifest.json").write_text(json.dumps(m))
    record, note = run_data_record(tuples, "matching_train_a2v_k2")
    assert record["item_shards"] is None and "records no source_shards" in record["item_shards_unknown"]
    assert "unknown" in note and "\n" not in note
    extract, line = serving_extract(record, "RUN")
    assert extract == ExtractConfig() and "unknown" in line and "defaults" in line
    # --val-tuples without a link and without --val-shards: one line saying what to pass
    val = tmp_path / "val"
    shutil.copytree(built["val"], val)
    m = json.loads((val / "manifest.json").read_text())
    del m["source_shards"]
    (val / "manifest.json").write_text(json.dumps(m))
    res = _avtrain(
        [
            "fit",
            "--shards",
            built["tuples"],
            "--items",
            built["shards"],
            "--val-tuples",
            val,
            "--out",
            tmp_path / "run",
            "--device",
            "cpu",
            "--no-progress",
            *tiny_fit_sets(1),
        ],
        code=1,
    )
    assert res.output.count("\n") == 1 and "pass them with --val-shards" in res.output, res.output
    assert not (tmp_path / "run").exists()


def test_evaluate_finds_the_item_shards_of_its_tuples(built, tmp_path):
    out = tmp_path / "metrics.json"
    common = [
        "evaluate",
        "--run",
        built["run"],
        "--tuples",
        built["val"],
        "--device",
        "cpu",
        "--bootstrap",
        10,
    ]
    _avtrain([*common, "--out", out])
    metrics = json.loads(out.read_text())
    _avtrain([*common, "--shards", built["shards"], "--out", tmp_path / "given.json"])
    given = json.loads((tmp_path / "given.json").read_text())
    assert metrics.pop("shards") == str(built["val"] / "../shards") and given.pop("shards") == str(
        built["shards"]
    )
    assert metrics == given


def test_a_bad_record_in_a_checkpoint_or_export_is_one_line(built, tmp_path):
    from avtrain.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    state = load_checkpoint(built["run"] / "checkpoint.pt")
    state["data"]["item_shards"]["extract"]["face_margin"] = 5  # outside [0, 1]
    save_checkpoint(tmp_path / "run" / "checkpoint.pt", state)
    with pytest.raises(
        CheckpointError, match=r"data\.item_shards\.extract\.face_margin: must be in \[0, 1\]"
    ):
        load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    out = tmp_path / "model"
    _avtrain(["export", "--run", built["run"], "--out", out])
    meta = json.loads((out / "config.json").read_text())
    meta["data"]["tuples"]["lists"] = "matching_train_a2v_k2"  # not a list of names
    (out / "config.json").write_text(json.dumps(meta))
    res = _avtrain(["embed", "--run", out, "--audio", "x.wav", "--out", tmp_path / "e.npz"], code=1)
    assert res.output.count("\n") == 1 and "data.tuples is not a record" in res.output, res.output
