"""Methods on frozen pretrained encoder features (#24, the consumer side): model.voice_encoder /
model.face_encoder, the FeatureAdapter branch, training input from feature stores (checked,
recorded, rejects skipped and counted), resume, evaluation, and the loop that never names an
encoder. Stores are real: built by ``avtrain features`` with the real encoder on a small synthetic
corpus; one voice of a training identity and one of a test identity are cut to 0.5 s in the media
the store is built from, so Resemblyzer really rejects them (too short after VAD)."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import build_shards_args, make_tuples_args

from avtrain.run.config import ConfigError, load_config

FIT = ["batch_size=8", "workers=0", "threads=1", "lr_start=0.001"]
VOICE = "model.voice_encoder=resemblyzer"


def _cli(main, args) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def _cut(path: Path, seconds: float) -> None:
    """Keep the first ``seconds`` of a wav (in place)."""
    with wave.open(str(path)) as r:
        params, frames = r.getparams(), r.readframes(int(seconds * r.getframerate()))
    with wave.open(str(path), "wb") as w:
        w.setparams(params)
        w.writeframes(frames)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Synthetic corpus -> item shards -> train tuples (matching k=2 a2v) and test lists (matching
    k=2, verification) -> the Resemblyzer feature store at its default place, built from a copy of
    the voices in which the query voice of the first training tuple and of the first test tuple are
    cut to 0.5 s (so Resemblyzer rejects both), and the dlib store of the faces."""
    from avdata.cli import main as avdata
    from avdata.reader import index_items
    from avdata.synth import synth_corpus
    from avtrain.cli import main as avtrain

    root = tmp_path_factory.mktemp("feature_methods")
    c = root / "corpus"
    synth_corpus(c, identities=12, clips_per_identity=2, faces_per_identity=2, seed=5)
    _cli(avdata, build_shards_args(c, root / "shards", shard_size=500))
    _cli(avdata, make_tuples_args(root / "shards", root / "tuples", direction="a2v"))
    _cli(avdata, make_tuples_args(root / "shards", root / "test", split="test", direction="a2v"))
    _cli(avdata, make_tuples_args(root / "shards", root / "test", task="verification", split="test"))
    _cli(avdata, make_tuples_args(root / "shards", root / "val", split="val", direction="a2v"))
    _cli(avdata, make_tuples_args(root / "shards", root / "val", task="verification", split="val"))
    shutil.copytree(c / "wav", root / "wav-cut")
    source = index_items(root / "shards").set_index("key")["source"]
    cut = []
    for index in (
        root / "tuples/index/matching_train_a2v_k2.jsonl",
        root / "test/index/matching_test_a2v_k2.jsonl",
    ):
        key = json.loads(index.read_text().splitlines()[0])["query"]
        _cut(root / "wav-cut" / source[key], 0.5)
        cut.append(key)
    voices = ["--encoder", "resemblyzer", "--audio", root / "wav-cut"]
    assert "2 rejected" in _cli(avtrain, ["features", "--shards", root / "shards", *voices])
    # the synthetic faces all have dlib landmarks
    assert " 0 rejected" in _cli(avtrain, ["features", "--shards", root / "shards", "--encoder", "dlib"])
    return {
        "root": root,
        "shards": root / "shards",
        "tuples": root / "tuples",
        "test": root / "test",
        "val": root / "val",
        "cut": cut,
    }


def _fit(corpus, out: Path, *sets: str, **kw) -> dict:
    from avtrain.train.loop import fit

    cfg = load_config(None, sets=[*FIT, *sets])
    return fit(cfg, corpus["tuples"], out, progress=False, items=corpus["shards"], **kw)


# --------------------------------------------------------------------------- settings


def test_encoder_settings_are_checked_one_line_naming_the_key():
    from avtrain.encoders import TRAINED
    from avtrain.methods.encoders import TRAINED_BRANCH

    assert TRAINED_BRANCH == TRAINED
    cfg = load_config(None, sets=[VOICE])
    assert (cfg.model.voice_encoder, cfg.model.face_encoder) == ("resemblyzer", "aml")
    cases = {
        "model.voice_encoder=nope": "model.voice_encoder: expected aml or one of",
        "model.face_encoder=resemblyzer": "model.face_encoder: resemblyzer is a voice encoder",
        "model.voice_encoder=dlib": "model.voice_encoder: dlib is a face encoder; expected aml or one of ecapa, resemblyzer",
        "model.voice_encoder_weights=w.pt": "model.voice_encoder_weights: only for a frozen encoder",
    }
    for setting, message in cases.items():
        with pytest.raises(ConfigError, match=message) as err:
            load_config(None, sets=[setting])
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="features: recorded by fit"):
        load_config(None, sets=["features=somewhere"])


def test_the_default_branches_are_the_papers_and_a_frozen_one_is_an_adapter():
    """aml (the default) builds exactly today's networks; a frozen encoder's modality gets
    Linear(dim -> 3200) + leaky ReLU, whose output every method's layers take unchanged."""
    from avtrain.methods import build_method
    from avtrain.methods.encoders import FEATURE_DIM, AudioBranch, FeatureAdapter, VisualBranch

    default = build_method(load_config(None, sets=["method=pins"]))
    assert isinstance(default.audio_branch, AudioBranch) and isinstance(default.visual_branch, VisualBranch)
    frozen = build_method(load_config(None, sets=["method=pins", VOICE]))
    assert isinstance(frozen.audio_branch, FeatureAdapter) and isinstance(frozen.visual_branch, VisualBranch)
    assert frozen.audio_branch.layers[0].in_features == 256
    assert frozen.features("audio", torch.zeros(3, 256)).shape == (3, FEATURE_DIM)
    assert frozen.embed("audio", torch.zeros(3, 256)).shape == (3, frozen.embed_dim)


# --------------------------------------------------------------------------- training and evaluation


@pytest.mark.parametrize("method", ["fop", "pins", "aml"])
def test_methods_train_on_frozen_voice_features_resume_and_evaluate(
    method, corpus, tmp_path, capfd, one_torch_thread
):
    from avtrain.evaluation.evaluate import evaluate
    from avtrain.run.checkpoint import load_run

    run = tmp_path / "run"
    summary = _fit(corpus, run, f"method={method}", VOICE, "epochs=1")
    err = capfd.readouterr().err
    assert summary["steps"] > 0 and all(np.isfinite(v) for v in summary["final"].values())
    # the leakage warning (the corpus is laid out as VoxCeleb1, which Resemblyzer's weights saw)
    assert err.count("warning: encoder resemblyzer was trained on") == 1
    # the tuples naming the rejected training voice are skipped and counted, in one line
    skipped = [line for line in err.splitlines() if "tuples skipped" in line]
    assert len(skipped) == 1 and "audio item(s) rejected by resemblyzer" in skipped[0]
    assert "too short after VAD" in skipped[0]
    store = corpus["shards"] / "features" / "resemblyzer"
    manifest = json.loads((store / "manifest.json").read_text())
    model, state, cfg = load_run(run)
    assert cfg.features["audio"]["store"] == str(store.resolve())
    assert cfg.features["audio"]["weights_sha256"] == manifest["weights_sha256"]
    assert state["config"]["features"] == cfg.features  # in the checkpoint too
    assert (
        cfg.features["audio"]["manifest_sha256"]
        == __import__("hashlib").sha256((store / "manifest.json").read_bytes()).hexdigest()
    )
    # resume: epochs grow, same stores
    assert (
        _fit(corpus, run, f"method={method}", VOICE, "epochs=2", resume=True)["steps"] == 2 * summary["steps"]
    )
    capfd.readouterr()
    metrics = evaluate(run, corpus["shards"], corpus["test"], n_boot=20, echo=print)
    out = capfd.readouterr()
    assert out.err.count("warning: encoder resemblyzer") == 1
    assert metrics["features"]["audio"]["encoder"] == "resemblyzer"
    assert metrics["features"]["skipped_rows"], "the rejected test voice's rows are left out and counted"
    assert "left out: they name items the frozen encoder rejected" in out.out
    entry = metrics["matching"]["a2v"]["k2"]
    test_rows = (corpus["test"] / "index" / f"{entry['list']}.jsonl").read_text().splitlines()
    assert (
        sum(corpus["cut"][1] in row for row in test_rows)
        == metrics["features"]["skipped_rows"][entry["list"]]
    )
    assert (
        0 <= entry["value"] <= 1
        and entry["n"] == len(test_rows) - metrics["features"]["skipped_rows"][entry["list"]]
    )


@pytest.mark.parametrize("method", ["dimnet", "fop"])
def test_both_modalities_frozen_train_and_evaluate_without_decoding_an_item(
    method, corpus, tmp_path, capfd, one_torch_thread
):
    """Resemblyzer voices and dlib faces, both stores given (--features): no item is read from
    an item source (no note about the tuple shards), validation embeds from the stores (best.pt),
    both stores recorded and read by evaluate."""
    from avtrain.evaluation.evaluate import evaluate
    from avtrain.train.loop import fit

    run = tmp_path / "run"
    cfg = load_config(None, sets=[*FIT, f"method={method}", VOICE, "model.face_encoder=dlib", "epochs=2"])
    stores = [corpus["shards"] / "features" / name for name in ("resemblyzer", "dlib")]
    summary = fit(  # no --items: nothing is read from an item source; validated on the stores too
        cfg,
        corpus["tuples"],
        run,
        progress=False,
        features=stores,
        val_tuples=corpus["val"],
        val_shards=corpus["shards"],
    )
    assert summary["steps"] > 0 and "note:" not in capfd.readouterr().err
    assert summary["best"]["value"] is not None and (run / "best.pt").is_file()
    metrics = evaluate(run, corpus["shards"], corpus["test"], n_boot=5, echo=None, checkpoint="best")
    assert set(metrics["features"]) == {"audio", "face", "skipped_rows"}
    assert metrics["features"]["face"]["encoder"] == "dlib"
    assert metrics["items"]["face"] > 0


def test_frozen_vectors_are_read_as_they_are(corpus, tmp_path, one_torch_thread):
    """Training input and evaluation give the method the store's rows, not normalised or flipped."""
    from avtrain.encoders.store import FeatureStore
    from avtrain.train.data import TrainingInput, to_model_inputs
    from avtrain.train.features import open_features

    cfg = load_config(None, sets=[VOICE])
    frozen = open_features(cfg.model, (), corpus["shards"])
    data = TrainingInput(
        corpus["tuples"], cfg.tuples, "matching", 2, "a2v", 4, frozen=frozen, items=corpus["shards"]
    )
    batch = next(iter(data.loader(0)))
    store = FeatureStore(corpus["shards"] / "features" / "resemblyzer")
    assert batch["query"].shape == (4, 256) and batch["gallery"].shape[:2] == (4, 2)
    q, g, _ = to_model_inputs(
        batch, "a2v", torch.device("cpu"), True, torch.Generator().manual_seed(0), frozen={"audio"}
    )
    assert torch.equal(q, batch["query"])
    rows = data.dataset.located.query_rows[data.dataset.tuples_of(0, 0)]
    assert np.array_equal(q.numpy(), store.array()[rows])
    assert g.shape == (4, 2, 3, 224, 224)  # the face gallery normalised as always


# --------------------------------------------------------------------------- refusals


def test_leakage_follows_the_shards_corpus_and_is_never_guessed(tmp_path, capsys):
    """The frozen encoders' leakage warnings are those of the corpus the item shards were built as:
    VoxCeleb1 (build-shards leaves its default out of the manifest) warns for both encoders,
    MAV-Celeb (no card names it) for none. Shards that are not known (tuples made before the
    source_shards link, trained from --features) or whose manifest is unreadable give one note that
    the check was not made, never a guessed corpus's warnings."""
    from avtrain.train.features import print_leakage

    model = load_config(None, sets=[VOICE, "model.face_encoder=dlib"]).model

    def shards(name: str, manifest: str) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(manifest)
        return tmp_path / name

    print_leakage(model, shards("vox", json.dumps({"config": {"face_margin": 0.2}})))
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" was trained on ")[0] for line in err] == [
        "warning: encoder dlib",
        "warning: encoder resemblyzer",
    ]
    print_leakage(model, shards("mav", json.dumps({"config": {"corpus": "mavceleb"}})))
    assert capsys.readouterr().err == ""
    print_leakage(model, None, "T/manifest.json records no source_shards (made before avmatch recorded it)")
    err = capsys.readouterr().err
    assert err.startswith("note: leakage not checked for dlib, resemblyzer: the corpus of the run's item")
    assert "records no source_shards" in err and err.count("\n") == 1 and "warning" not in err
    print_leakage(model, shards("bad", "[1"))
    err = capsys.readouterr().err
    assert err.startswith("note: leakage not checked") and str(tmp_path / "bad" / "manifest.json") in err
    assert err.count("\n") == 1


def test_a_store_of_other_shards_or_no_store_is_refused(corpus, tmp_path):
    """Tuples drawn from other item shards than the store's, a missing default store, and a store
    given to a run without a frozen encoder: one line each, nothing written."""
    from avdata.cli import main as avdata
    from avdata.errors import AvmatchError

    root = corpus["root"]
    other = tmp_path / "shards-other"
    _cli(avdata, build_shards_args(root / "corpus", other, shard_size=7))
    _cli(avdata, make_tuples_args(other, tmp_path / "tuples-other", direction="a2v"))
    from avtrain.train.loop import fit

    cfg = load_config(None, sets=[*FIT, VOICE])
    store = corpus["shards"] / "features" / "resemblyzer"
    with pytest.raises(AvmatchError, match="built from other item shards") as err:
        fit(cfg, tmp_path / "tuples-other", tmp_path / "run", progress=False, items=other, features=[store])
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()
    with pytest.raises(AvmatchError, match=r"no feature store at .*avtrain features --shards") as err:
        fit(cfg, tmp_path / "tuples-other", tmp_path / "run", progress=False, items=other)
    faces = corpus["shards"] / "features" / "dlib"
    with pytest.raises(AvmatchError, match="dlib embeds face items, but model.face_encoder is aml"):
        fit(cfg, corpus["tuples"], tmp_path / "run", progress=False, items=corpus["shards"], features=[faces])
    plain = load_config(None, sets=FIT)
    with pytest.raises(AvmatchError, match="no feature store is read"):
        fit(
            plain,
            corpus["tuples"],
            tmp_path / "run",
            progress=False,
            items=corpus["shards"],
            features=[store],
        )
    assert not (tmp_path / "run").exists()


def test_evaluate_refuses_a_changed_store_and_takes_features_override(corpus, tmp_path, one_torch_thread):
    """A run reads the store it recorded; once that store's manifest changed (rebuilt), evaluate
    refuses it in one line; --features names another store of the same encoder and weights."""
    from avdata.errors import AvmatchError
    from avtrain.evaluation.evaluate import evaluate

    store = corpus["shards"] / "features" / "resemblyzer"
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    run = tmp_path / "run"
    _fit(corpus, run, "method=pins", VOICE, "epochs=1", "max_steps_per_epoch=2", features=[copy])
    manifest = copy / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()), indent=3))  # same content, rebuilt
    with pytest.raises(AvmatchError, match="not the audio feature store the run trained on") as err:
        evaluate(run, corpus["shards"], corpus["test"], n_boot=5, echo=None)
    assert "\n" not in str(err.value)
    metrics = evaluate(run, corpus["shards"], corpus["test"], n_boot=5, echo=None, features=[store])
    assert metrics["features"]["audio"]["store"] == str(store.resolve())


def test_the_loop_never_names_a_method_or_an_encoder():
    from avtrain.encoders import ENCODERS
    from avtrain.methods import METHODS

    source = (Path(__file__).parents[1] / "avtrain" / "train" / "loop.py").read_text()
    code = "\n".join(line.split("#")[0] for line in source.splitlines())
    for name in [*ENCODERS, *(m for m in METHODS if m != "aml")]:
        assert f'"{name}"' not in code and f"'{name}'" not in code, name


# --------------------------------------------------------------------------- serving


def test_serving_runs_the_frozen_encoders_on_raw_media_and_export_checks_their_weights(
    corpus, tmp_path, one_torch_thread
):
    """load_model of a run on Resemblyzer + dlib features embeds a raw voice file and a raw face
    photo through the encoders as avtrain features did: the same vectors as the stores' rows, so
    the same embeddings as the method gives those rows. An export records the encoders' weights
    sha256 (not the weights); other weights than recorded are refused at load in one line."""
    from avdata.reader import index_items
    from avtrain.encoders.store import FeatureStore
    from avtrain.serve.export import export_model
    from avtrain.serve.model import load_model
    from avtrain.train.loop import fit

    run = tmp_path / "run"
    cfg = load_config(None, sets=[*FIT, "method=pins", VOICE, "model.face_encoder=dlib", "epochs=1"])
    stores = {m: corpus["shards"] / "features" / n for m, n in (("audio", "resemblyzer"), ("face", "dlib"))}
    fit(cfg, corpus["tuples"], run, progress=False, features=list(stores.values()))
    items = index_items(corpus["shards"]).set_index("key")
    rows = {m: FeatureStore(p) for m, p in stores.items()}
    model = load_model(run)
    assert set(model.encoders) == {"audio", "face"}
    for modality, media, embed in (("audio", "wav", model.embed_voice), ("face", "faces", model.embed_face)):
        key = next(k for k in rows[modality].rows if items.loc[k, "split"] == "train")
        vector = rows[modality].array()[rows[modality].locate(key)]
        with torch.inference_mode():
            want = model.model.embed(modality, torch.from_numpy(np.array(vector[None]))).numpy()[0]
        got = embed(corpus["root"] / "corpus" / media / items.loc[key, "source"])
        # same encoder input and code as the store's build: equal up to float32 summation order
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # the encoders run on one torch thread, as the store's build ran them, whatever the caller's
    # count: a voice's vector is its store row bit for bit (and Resemblyzer's LSTM does not
    # spin-wait on busy cores)
    key = next(k for k in rows["audio"].rows if items.loc[k, "split"] == "train")
    encoder, threads_seen = model.encoders["audio"], []
    embed_audio = encoder.embed_audio
    encoder.embed_audio = lambda wave: (threads_seen.append(torch.get_num_threads()), embed_audio(wave))[1]
    torch.set_num_threads(2)
    try:
        got = model.extract_items(str(corpus["root"] / "corpus" / "wav" / items.loc[key, "source"]), "audio")
    finally:
        torch.set_num_threads(1)
        del encoder.embed_audio
    assert threads_seen == [1]
    assert np.array_equal(got[0].array, rows["audio"].array()[rows["audio"].locate(key)])
    export_model(run, tmp_path / "export")
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    assert meta["train_config"]["features"]["face"]["weights_sha256"] == rows["face"].weights_sha256
    from safetensors import safe_open

    with safe_open(str(tmp_path / "export" / "model.safetensors"), "pt") as f:  # the method's tensors only
        assert set(f.keys()) == set(model.model.state_dict())
    assert set(load_model(tmp_path / "export").encoders) == {"audio", "face"}
    meta["train_config"]["features"]["audio"]["weights_sha256"] = "0" * 64
    (tmp_path / "export" / "config.json").write_text(json.dumps(meta))
    from avdata.errors import AvmatchError

    with pytest.raises(
        AvmatchError, match="encoder resemblyzer: the weights here .* are not those the model"
    ):
        load_model(tmp_path / "export")


def test_same_weights_for_any_worker_count_and_a_resume_on_another_store_is_refused(
    corpus, tmp_path, one_torch_thread
):
    """Voices from the store, faces from the item shards read by 2 worker processes (the store is
    mapped again in each) or in the main process: the same batches, so bit-identical weights. A
    resume whose store changed (its manifest) is refused like any changed setting; --tuple-shards
    is refused for a run on features."""
    from avdata.errors import AvmatchError

    sets = ("method=pins", VOICE, "epochs=1", "max_steps_per_epoch=3")
    store = tmp_path / "store"
    shutil.copytree(corpus["shards"] / "features" / "resemblyzer", store)
    weights = []
    for workers in (0, 2):
        _fit(corpus, tmp_path / f"w{workers}", *sets, f"workers={workers}", features=[store])
        weights.append(torch.load(tmp_path / f"w{workers}" / "checkpoint.pt", weights_only=True)["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    manifest = store / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()), indent=3))
    with pytest.raises(AvmatchError, match="cannot resume with other settings: features"):
        _fit(corpus, tmp_path / "w0", *sets, "epochs=2", resume=True, features=[store])
    with pytest.raises(AvmatchError, match="drop --tuple-shards"):
        _fit(corpus, tmp_path / "ts", *sets, "tuple_shards=true", features=[store])


def test_compare_pairs_a_frozen_run_with_a_scratch_run_on_the_rows_both_scored(corpus, tmp_path):
    """avtrain compare with AML from scratch and PINs on frozen voices: PINs' evaluation leaves out
    the rows naming the rejected voice; outcomes.npz records which rows each run scored, and the
    paired p against AML is computed on the rows both scored, with a line that says so."""
    from avtrain.cli import main as avtrain
    from avtrain.evaluation.outcomes import load_outcomes

    out = tmp_path / "cmp"
    store = corpus["shards"] / "features" / "resemblyzer"
    output = _cli(
        avtrain,
        ["compare", "--methods", "aml,pins", "--shards", corpus["tuples"], "--items", corpus["shards"],
         "--out", out, "--bootstrap", "50", "--set", "epochs=1", "--set", "max_steps_per_epoch=2",
         *(a for s in FIT for a in ("--set", s)), "--set", f"pins:{VOICE}", "--features", store],
    )  # fmt: skip
    pins = json.loads((out / "runs" / "pins-seed0" / "metrics.json").read_text())
    name = pins["matching"]["a2v"]["k2"]["list"]
    skipped = pins["features"]["skipped_rows"][name]
    rows = [
        json.loads(line) for line in (corpus["tuples"] / "index" / f"{name}.jsonl").read_text().splitlines()
    ]
    naming_cut = [i for i, r in enumerate(rows) if corpus["cut"][0] in (r["query"], *r["gallery"])]
    assert skipped == len(naming_cut) > 0
    # row positions: the scratch run scored every row, the frozen one every row but those
    aml_rows = load_outcomes(out / "runs" / "aml-seed0" / "outcomes.npz")["matching/a2v/k2/row"]
    pins_rows = load_outcomes(out / "runs" / "pins-seed0" / "outcomes.npz")["matching/a2v/k2/row"]
    np.testing.assert_array_equal(aml_rows, np.arange(len(rows)))
    np.testing.assert_array_equal(pins_rows, [i for i in range(len(rows)) if i not in naming_cut])
    cell = json.loads((out / "compare.json").read_text())["rows"]["matching/a2v/k2"]["pins"]
    assert cell["paired"] == {
        "rows": len(rows) - skipped,
        "of": len(rows),
        "one_run_only": skipped,
        "rejected_items": True,
    }
    assert 0 < cell["p_vs_reference"] <= 1 and cell["values"] == [pins["matching"]["a2v"]["k2"]["value"]]
    line = (
        f"pins vs aml, matching/a2v/k2: † paired on {len(rows) - skipped} of {len(rows)} rows: {skipped} "
        "rows scored by one run only (rows naming items a frozen encoder rejected)"
    )
    assert line in output and line in (out / "compare.md").read_text()
    assert line in (out / "compare.html").read_text()
