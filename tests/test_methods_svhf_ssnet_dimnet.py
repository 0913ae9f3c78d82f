"""The baselines svhf, ssnet and dimnet on the method seam: their losses against values worked out by
hand, embed / head-score shapes, settings checks, a short real fit each (checkpoint loads back), and
the gender / nationality labels DIMNet needs, from the meta file through make-tuples to the batch."""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
import torch

from avdata.corpora.voxceleb1 import read_meta
from avdata.tuples import check_tuples, read_tuple_manifest
from avdata.untrusted import UnsafeShardError
from avtrain.losses import center_loss, center_update, softmax_loss
from avtrain.methods import LabelSpace, StepContext, build_method, get_method
from avtrain.methods.batch_views import item_classes
from avtrain.run.checkpoint import load_run
from avtrain.run.config import ConfigError, load_config
from avtrain.train.data import TupleStream, label_space, load_sizes, make_loader
from avtrain.train.loop import fit, to_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METHODS = ("svhf", "ssnet", "dimnet")
# small layers, so building and stepping the models takes little time
SMALL = {"svhf": ["svhf.embed_dim=16"], "ssnet": ["ssnet.hidden=32", "ssnet.embed_dim=8"], "dimnet": []}
LABELS = LabelSpace(
    {"identity": ["id1", "id2", "id3"], "gender": ["f", "m"], "nationality": ["India", "UK", "USA"]},
    {
        "id1": {"gender": "m", "nationality": "UK"},
        "id2": {"gender": "f", "nationality": "USA"},
        "id3": {"gender": "m", "nationality": "India"},
    },
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def cfg_for(method: str, *sets: str):
    return load_config(None, sets=[f"method={method}", *SMALL[method], *sets])


def inputs(B: int = 2, k: int = 2, direction: str = "a2v"):
    """Random normalised inputs of a batch of B tuples with k gallery items."""
    audio, face = (1, 224, 125), (3, 224, 224)
    q_shape, g_shape = (audio, face) if direction == "a2v" else (face, audio)
    return torch.randn(B, *q_shape), torch.randn(B, k, *g_shape)


# ------------------------------------------------------------------------- losses by hand


def test_softmax_loss_by_hand():
    # item 0: logits (0, ln 3) -> softmax (1/4, 3/4); target 1: nll = -ln(3/4) = ln(4/3)
    # item 1: logits (ln 2, 0) -> softmax (2/3, 1/3); target 1: nll = -ln(1/3) = ln 3
    # item 2: target -1 (outside the label space): left out, nll 0
    # loss = (ln(4/3) + ln 3) / 2 = ln(4) / 2 = ln 2
    logits = t([0.0, math.log(3)], [math.log(2), 0.0], [5.0, 5.0])
    out = softmax_loss(logits, torch.tensor([1, 1, -1]))
    assert out["nll"].tolist() == pytest.approx([math.log(4 / 3), math.log(3), 0.0])
    assert out["valid"].tolist() == [True, True, False]
    assert float(out["loss"]) == pytest.approx(math.log(2))


def test_softmax_loss_without_valid_items_is_zero_with_zero_gradients():
    logits = t([1.0, 2.0]).requires_grad_()
    out = softmax_loss(logits, torch.tensor([-1]))
    out["loss"].backward()
    assert float(out["loss"].detach()) == 0.0 and logits.grad.tolist() == [[0.0, 0.0]]


def test_center_loss_by_hand():
    # centers c0 = (0, 0), c1 = (1, 1)
    # item 0 = (1, 2), class 0: x - c0 = (1, 2), 1/2 (1 + 4) = 2.5
    # item 1 = (3, 1), class 1: x - c1 = (2, 0), 1/2 (4 + 0) = 2.0
    # item 2 = (9, 9), class -1: left out
    # loss = (2.5 + 2.0) / 2 valid items = 2.25
    # d loss / d x_i = (x_i - c_{y_i}) / 2: item 0 (0.5, 1.0), item 1 (1.0, 0.0), item 2 (0, 0)
    x = t([1.0, 2.0], [3.0, 1.0], [9.0, 9.0]).requires_grad_()
    centers = torch.nn.Parameter(t([0.0, 0.0], [1.0, 1.0]))
    out = center_loss(x, torch.tensor([0, 1, -1]), centers)
    assert out["center"].tolist() == pytest.approx([2.5, 2.0, 0.0])
    assert float(out["loss"].detach()) == pytest.approx(2.25)
    out["loss"].backward()
    assert x.grad.tolist() == [[0.5, 1.0], [1.0, 0.0], [0.0, 0.0]]
    assert centers.grad is None  # the centers move by center_update, not by this gradient


def test_center_update_by_hand_and_the_alpha_step():
    # centers c0 = (0, 0), c1 = (1, 1), c2 = (7, 7); items (1,2) class 0, (3,1) and (5,3) class 1,
    # (9,9) class -1 (left out).
    # class 0, n = 1: (c0 - x) = (-1, -2);                  / (1 + 1) = (-0.5, -1)
    # class 1, n = 2: (1-3, 1-1) + (1-5, 1-3) = (-6, -2);  / (1 + 2) = (-2, -2/3)
    # class 2, n = 0: 0
    # alpha = 0.5: c0 = (0.25, 0.5), c1 = (1 + 1, 1 + 1/3) = (2, 4/3), c2 unchanged
    x = t([1.0, 2.0], [3.0, 1.0], [5.0, 3.0], [9.0, 9.0])
    centers = torch.nn.Parameter(t([0.0, 0.0], [1.0, 1.0], [7.0, 7.0]))
    delta = center_update(x, torch.tensor([0, 1, 1, -1]), centers)
    assert torch.allclose(delta, t([-0.5, -1.0], [-2.0, -2 / 3], [0.0, 0.0]))
    centers.grad = delta
    torch.optim.SGD([centers], lr=0.5).step()
    assert torch.allclose(centers.detach(), t([0.25, 0.5], [2.0, 4 / 3], [7.0, 7.0]))


# ------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["method=svhf", "svhf.embed_dim=0"], "svhf: embed_dim must be >= 1, got 0"),
        (["method=svhf", "svhf.dropout=1"], "svhf.dropout: must be in [0, 1), got 1.0"),
        (["method=ssnet", "ssnet.center_alpha=0"], "ssnet: center_alpha must be in (0, 1], got 0.0"),
        (["method=ssnet", "ssnet.center_weight=-1"], "ssnet: center_weight must be >= 0, got -1.0"),
        (["method=ssnet", "ssnet.hidden=0"], "ssnet: hidden must be >= 1, got 0"),
        (["method=dimnet", "dimnet.gender_weight=-0.5"], "dimnet: gender_weight must be >= 0, got -0.5"),
        (
            ["method=dimnet", *(f"dimnet.{c}_weight=0" for c in ("identity", "gender", "nationality"))],
            "dimnet: at least one of identity_weight, gender_weight, nationality_weight must be > 0",
        ),
        (["method=svhf", "dimnet.embed_dim=8"], "dimnet.embed_dim: a setting of method dimnet"),
    ],
)
def test_bad_settings_are_one_line_naming_the_key(sets, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, sets=sets)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_paper_defaults():
    assert load_config(None, sets=["method=svhf"]).options.embed_dim == 1024
    ssnet = load_config(None, sets=["method=ssnet"]).options
    assert (ssnet.center_weight, ssnet.center_alpha) == (0.003, 0.5)
    dimnet = load_config(None, sets=["method=dimnet"]).options
    assert (dimnet.identity_weight, dimnet.gender_weight, dimnet.nationality_weight) == (1.0, 1.0, 1.0)
    assert {m: get_method(m).default_score for m in METHODS} == {
        "svhf": "head",
        "ssnet": "l2",
        "dimnet": "cosine",
    }


def test_svhf_trains_on_matching_only():
    with pytest.raises(ConfigError, match="^task: method svhf classifies which of k gallery items"):
        build_method(cfg_for("svhf", "task=verification"))


def test_dimnet_refuses_a_covariate_the_tuples_do_not_record():
    identities_only = LabelSpace({"identity": LABELS.classes["identity"]}, {})
    with pytest.raises(ConfigError, match=r"^dimnet.gender_weight: the training list records no gender"):
        build_method(cfg_for("dimnet"), identities_only)
    # without gender and nationality, DIMNet-I trains on identities alone
    model = build_method(
        cfg_for("dimnet", "dimnet.gender_weight=0", "dimnet.nationality_weight=0"), identities_only
    )
    assert set(model.classifiers) == {"identity"} and model.log_terms == ("loss", "L_identity")


# ------------------------------------------------------------------------- shapes and scores


@pytest.mark.parametrize("method", METHODS)
def test_embed_shapes(method):
    torch.manual_seed(0)
    model = build_method(cfg_for(method), LABELS).eval()
    q, g = inputs(B=3, k=2)
    with torch.no_grad():
        audio, face = model.embed("audio", q), model.embed("face", g[:, 0])
        h, f = model.embed_with_features("face", g[:, 0])
    D = {"svhf": 16, "ssnet": 8, "dimnet": 128}[method]
    assert model.embed_dim == D and audio.shape == face.shape == h.shape == (3, D)
    assert f.shape == (3, 3200) and torch.equal(h, face)  # one pass gives both, the same embedding
    with pytest.raises(ValueError, match="modality must be one of"):
        model.embed("video", q)


def test_svhf_head_scores_only_where_it_was_trained():
    torch.manual_seed(0)
    model = build_method(cfg_for("svhf", "k=3", "direction=v2a")).eval()
    hq, hg = torch.randn(4, 16), torch.randn(4, 3, 16)
    with torch.no_grad():
        scores = model.head_scores("matching", 3, "v2a", hq, hg)
        assert scores.shape == (4, 3) and torch.equal(scores, model.head(hq, hg))  # the trained head
        logits = model(*inputs(2, 3, "v2a"), "v2a")["logits"]  # what training classifies
    assert logits.shape == (2, 3)
    assert model.head_scores("matching", 2, "v2a", hq, hg[:, :2]) is None  # another k
    assert model.head_scores("matching", 3, "a2v", hq, hg) is None  # another direction
    assert model.head_scores("verification", 1, "a2v", hq, hg[:, 0]) is None
    assert model.head_scores("retrieval", 0, "v2a", hq[:, None], hg[None, 0]) is None


@pytest.mark.parametrize("method", ["ssnet", "dimnet"])
def test_embedding_methods_have_no_head(method):
    model = build_method(cfg_for(method), LABELS)
    hq, hg = torch.randn(2, model.embed_dim), torch.randn(2, 2, model.embed_dim)
    for task, k in (("matching", 2), ("verification", 1), ("retrieval", 0)):
        assert model.head_scores(task, k, "a2v", hq, hg) is None


def test_ssnet_maps_both_modalities_through_one_stream_and_dimnet_through_two():
    torch.manual_seed(0)
    f = torch.randn(5, 3200)
    ssnet = build_method(cfg_for("ssnet"), LABELS).eval()
    assert torch.equal(ssnet.embedding("audio", f), ssnet.embedding("face", f))
    dimnet = build_method(cfg_for("dimnet"), LABELS).eval()
    assert not torch.equal(dimnet.embedding("audio", f), dimnet.embedding("face", f))
    # DIMNet's covariate classifiers are one per covariate, shared by both modalities
    assert set(dimnet.classifiers) == {"identity", "gender", "nationality"}
    assert [dimnet.classifiers[c].out_features for c in dimnet.classifiers] == [3, 2, 3]


def test_forward_outputs():
    torch.manual_seed(0)
    q, g = inputs(B=2, k=2)
    with torch.no_grad():
        svhf = build_method(cfg_for("svhf"), LABELS)(q, g, "a2v")
        ssnet = build_method(cfg_for("ssnet"), LABELS)(q, g, "a2v")
        dimnet = build_method(cfg_for("dimnet"), LABELS)(q, g, "a2v")
    assert svhf["logits"].shape == (2, 2)
    # every item classified, queries first: B + B*k = 6 rows
    assert ssnet["h"].shape == (6, 8) and ssnet["logits"].shape == (6, 3)
    assert torch.equal(ssnet["h"][:2], ssnet["h_query"]) and torch.equal(
        ssnet["h"][2:4], ssnet["h_gallery"][0]
    )
    assert {k: tuple(v.shape) for k, v in dimnet.items() if k.startswith("logits")} == {
        "logits_identity": (6, 3),
        "logits_gender": (6, 2),
        "logits_nationality": (6, 3),
    }


# ------------------------------------------------------------------------- real fits


@pytest.mark.parametrize("method", METHODS)
def test_short_fit_writes_a_checkpoint_that_loads_back(method, train_tuples, tmp_path):
    sets = ["epochs=1", "batch_size=8", "workers=0", "threads=1", "max_steps_per_epoch=3"]
    cfg = cfg_for(method, *sets)
    summary = fit(cfg, train_tuples, tmp_path / "run", progress=False)
    assert summary["steps"] == 3
    assert set(summary["final"]) >= {"loss"} and all(math.isfinite(v) for v in summary["final"].values())
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(math.isfinite(r["loss"]) for r in log)
    model, state, saved = load_run(tmp_path / "run")
    assert type(model).name == method and saved.method == method and saved.options == cfg.options
    assert set(state) >= {"model", "opt_g", *model.optimizer_names}
    if model.needs_labels:  # trained on the list's identities, saved with the run
        assert (
            state["labels"]["classes"]["identity"]
            == label_space(train_tuples, cfg.tuples).classes["identity"]
        )
    with torch.no_grad():
        assert model.embed("audio", torch.zeros(2, 1, 224, 125)).shape == (2, model.embed_dim)


def test_ssnet_step_moves_the_centers_by_the_papers_rule(train_tuples):
    """One step: the centers move by exactly -alpha * delta_c (Eq. 4) of the step's embeddings, and
    the network by its own optimiser."""
    cfg = cfg_for("ssnet", "batch_size=4", "ssnet.center_alpha=0.5")
    labels = label_space(train_tuples, cfg.tuples)
    torch.manual_seed(0)
    model = build_method(cfg, labels)
    batch = to_batch(first_batch(train_tuples, cfg), cfg, torch.device("cpu"), labels)
    before = model.centers.detach().clone()
    with torch.no_grad():  # the same forward the step will take (dropout-free, BN in train mode)
        model.train()
        h = model(batch.query, batch.gallery, batch.direction)["h"]
    terms = model.train_step(batch, model.optimizers(cfg), StepContext(model))
    expected = before - 0.5 * center_update(h, item_classes(batch, "identity"), before)
    assert torch.allclose(model.centers.detach(), expected, atol=1e-6)
    assert set(terms) == {"loss", "L_softmax", "L_center"}
    assert terms["loss"] == pytest.approx(terms["L_softmax"] + 0.003 * terms["L_center"], rel=1e-5)


# ------------------------------------------------------------------------- DIMNet's labels


def first_batch(tuples_dir, cfg) -> dict:
    urls, _ = load_sizes(tuples_dir, cfg.tuples)
    return next(iter(make_loader(TupleStream(urls, cfg.batch_size, cfg.seed), 0, pin_memory=False)))


def test_gender_and_nationality_reach_the_batch(train_tuples):
    """vox1_meta.csv (synth writes Gender and Nationality) -> SHARDS/splits.csv -> make-tuples
    records them for the training list -> LabelSpace -> Batch.classes."""
    meta = read_meta(train_tuples.parent / "corpus" / "vox1_meta.csv").set_index("vox_id")
    cfg = cfg_for("dimnet", "batch_size=8")
    labels = label_space(train_tuples, cfg.tuples)
    ids = labels.classes["identity"]
    assert labels.classes["gender"] == sorted(set(meta.loc[ids, "gender"]))
    assert labels.classes["nationality"] == sorted(set(meta.loc[ids, "nationality"]))
    assert len(labels.classes["gender"]) == 2 and len(labels.classes["nationality"]) >= 2
    assert labels.attributes == {
        i: {"gender": meta.loc[i, "gender"], "nationality": meta.loc[i, "nationality"]} for i in ids
    }
    batch = to_batch(first_batch(train_tuples, cfg), cfg, torch.device("cpu"), labels)
    for name in ("gender", "nationality"):
        query, gallery = batch.classes(name)
        assert query.tolist() == [
            labels.classes[name].index(meta.loc[i, name]) for i in batch.query_identities
        ]
        assert gallery.tolist() == [
            [labels.classes[name].index(meta.loc[i, name]) for i in row] for row in batch.gallery_identities
        ]


def test_tuple_manifest_attributes_are_checked(train_tuples, tmp_path):
    shards = train_tuples.parent / "shards"
    copy = tmp_path / "tuples"
    shutil.copytree(train_tuples, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (rel,) = [r for r, e in manifest["files"].items() if "identity_attributes" in e]
    table = manifest["files"][rel]["identity_attributes"]
    splits = pd.read_csv(shards / "splits.csv", dtype=str, keep_default_na=False).set_index("vox_id")
    assert table == {i: {a: splits.loc[i, a] for a in ("gender", "nationality")} for i in table}
    assert check_tuples(copy, shards) == []
    # an edited attribute is found by check-tuples ...
    first = sorted(table)[0]
    table[first]["gender"] = "x" if table[first]["gender"] != "x" else "y"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert check_tuples(copy, shards) == [
        f"{rel}: identity_attributes differ from its identities' in SHARDS/splits.csv"
    ]
    # ... and a malformed table is refused in one line before anything reads it
    manifest["files"][rel]["identity_attributes"] = {first: {"age": "40"}}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        UnsafeShardError, match=r"identity_attributes is not \{identity: \{gender\|nationality"
    ):
        read_tuple_manifest(copy, required=True)
