"""The baselines on the seam, Learnable PINs (``pins``) and FOP (``fop``): settings, embedding and
score shapes, one training step's behaviour, and a short real fit whose checkpoint loads back."""

from __future__ import annotations

import json
import math

import pytest
import torch

from avtrain.methods import SCORE_RULES, Batch, LabelSpace, StepContext, build_method, get_method
from avtrain.methods.fop import FOP, GatedFusion
from avtrain.methods.pins import LearnablePINs
from avtrain.run.checkpoint import load_run
from avtrain.run.config import ConfigError, load_config
from avtrain.train.loop import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IDENTITIES = LabelSpace({"identity": ["id0", "id1", "id2", "id3"]})


def build(method: str, *sets: str):
    cfg = load_config(sets=[f"method={method}", *sets])
    torch.manual_seed(0)
    return build_method(cfg, IDENTITIES if method == "fop" else None)


def audio(n):
    return torch.randn(n, 1, 224, 125)


def faces(n):
    return torch.randn(n, 3, 224, 224)


def tuple_batch(identities=("id0", "id1", "id2", "id3"), direction="a2v") -> Batch:
    """B = 4 matching tuples, k = 2: tuple i's query is identities[i], its positive sits at
    position i % 2 and its negative is identities[i + 1]."""
    B = len(identities)
    q, g = (audio(B), faces(B * 2)) if direction == "a2v" else (faces(B), audio(B * 2))
    label = torch.tensor([i % 2 for i in range(B)])
    g_ids = []
    for i, ident in enumerate(identities):
        other = identities[(i + 1) % B]
        g_ids.append([ident, other] if i % 2 == 0 else [other, ident])
    return Batch(q, g.view(B, 2, *g.shape[1:]), label, direction, list(identities), g_ids, IDENTITIES)


# ------------------------------------------------------------------ settings


def test_options_are_config_sections_with_range_checks():
    cfg = load_config(sets=["method=pins", "pins.margin=0.5", "pins.tau_every=100"])
    assert cfg.options.margin == 0.5 and cfg.options.tau_every == 100 and cfg.options.tau_start == 0.3
    assert cfg.to_dict()["pins"]["margin"] == 0.5
    assert load_config(sets=["method=fop", "fop.alpha=2"]).options.alpha == 2.0
    for bad, key in (
        ("pins.margin=0", "margin"),
        ("pins.margin=2.5", "margin"),
        ("pins.tau_start=1.5", "tau_start"),
        ("pins.tau_end=0.2", "tau_end"),
        ("pins.tau_every=0", "tau_every"),
        ("pins.embed_dim=0", "embed_dim"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_config(sets=["method=pins", bad])
    for bad, key in (
        ("fop.alpha=-1", "alpha"),
        ("fop.opl_gamma=-0.1", "opl_gamma"),
        ("fop.embed_dropout=1", "dropout"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_config(sets=["method=fop", bad])
    with pytest.raises(ConfigError, match="pins.margin"):  # another method's section
        load_config(sets=["method=fop", "pins.margin=0.5"])


def test_fop_needs_the_label_space():
    with pytest.raises(ValueError, match="LabelSpace"):
        build_method(load_config(sets=["method=fop"]))


# ------------------------------------------------------------------ embed and score shapes


@pytest.mark.parametrize("method", ["pins", "fop"])
def test_embed_shapes_and_scoring(method):
    model = build(method).eval()
    assert model.default_score in SCORE_RULES and model.default_score == "l2"
    with torch.no_grad():
        h_a, f_a = model.embed_with_features("audio", audio(3))
        h_v = model.embed("face", faces(2))
    assert h_a.shape == (3, 128) and h_v.shape == (2, 128) and f_a.shape == (3, 3200)
    assert model.embed_dim == 128
    if method == "pins":  # L2-normalised
        assert torch.allclose(h_a.norm(dim=1), torch.ones(3), atol=1e-5)
    else:  # tanh of an L2-normalised vector: every entry in (-1, 1), norm below 1
        assert h_a.abs().max() < 1 and (h_a.norm(dim=1) < 1).all()
    # no learned head: evaluation scores -L2 between the embeddings (every task, k, direction)
    for task, q, g in (
        ("matching", h_a[:2], h_v[None].expand(2, 2, 128)),
        ("verification", h_a[:2], h_v),
        ("retrieval", h_a[:, None], h_v[None]),
    ):
        assert model.head_scores(task, 2, "a2v", q, g) is None
    with pytest.raises(ValueError, match="modality"):
        model.embed("video", faces(1))


@pytest.mark.parametrize("method", ["pins", "fop"])
def test_embed_dim_option(method):
    model = build(method, f"{method}.embed_dim=16").eval()
    with torch.no_grad():
        assert model.embed("audio", audio(2)).shape == (2, 16)
        assert model.embed("face", faces(2)).shape == (2, 16)
    assert model.embed_dim == 16


def test_fop_fused_and_logit_shapes():
    model = build("fop").eval()
    with torch.no_grad():
        out = model(audio(3), faces(3))
    assert out["fused"].shape == (3, 128) and out["logits"].shape == (3, 4)


def test_gated_fusion_with_a_closed_gate_averages_the_modalities():
    # gate weights 0: g = sigmoid(0) = 0.5 everywhere (BatchNorm in eval: (0 - 0) / sqrt(1 + eps) = 0),
    # fused = 0.5 tanh(e_face) + 0.5 tanh(e_voice); e_face = (1, 0), e_voice = (0, 1):
    # fused = (0.5 tanh 1, 0.5 tanh 1) = (0.3807971, 0.3807971)
    fusion = GatedFusion(2, 3).eval()
    for p in fusion.parameters():
        torch.nn.init.zeros_(p)
    fused = fusion(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert fused.tolist()[0] == pytest.approx([0.5 * math.tanh(1.0)] * 2)


# ------------------------------------------------------------------ one step


def one_step(model, batch):
    model.train()
    opts = model.optimizers(load_config(sets=[f"method={model.name}"]))
    return model.train_step(batch, opts, StepContext(model))


@pytest.mark.parametrize("direction", ["a2v", "v2a"])
def test_pins_step_counts_steps_and_changes_the_streams(direction):
    model = build("pins", "pins.tau_every=1")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    terms = one_step(model, tuple_batch(direction=direction))
    assert set(terms) == set(LearnablePINs.log_terms)
    assert terms["tau"] == pytest.approx(0.3) and all(math.isfinite(v) for v in terms.values())
    assert int(model.steps_taken) == 1 and model.hardness == pytest.approx(0.4)
    changed = {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {"audio_branch", "visual_branch", "audio_head", "face_head"} <= changed


def test_pins_mines_only_other_identities():
    # queries id0 and id1; every gallery item is id0 or id1, so each anchor has exactly the other
    # identity's items to choose from, and with τ = 1 (the nearest allowed) the step runs on them
    batch = tuple_batch(identities=("id0", "id1", "id0", "id1"))
    model = build("pins", "pins.tau_start=1", "pins.tau_end=1")
    terms = one_step(model, batch)
    assert terms["tau"] == 1.0 and terms["d_neg"] > 0 and math.isfinite(terms["loss"])
    # one identity only: nothing may be a negative; the loss is the positive pairs' alone
    batch.query_identities = ["id0"] * 4
    batch.gallery_identities = [["id0", "id0"]] * 4
    terms = one_step(build("pins"), batch)
    assert terms["d_neg"] == 0.0 and terms["loss"] > 0


def test_fop_step_trains_classifier_fusion_and_streams():
    model = build("fop")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    terms = one_step(model, tuple_batch())
    assert set(terms) == set(FOP.log_terms)
    # 4 identities, untrained: L_ce near log 4 = 1.386; no same-class pair in the batch, so OPL's
    # s = 0 and L_opl = 1 + 0.7 d
    assert terms["L_ce"] == pytest.approx(math.log(4), abs=0.5)
    assert terms["opl_same_cos"] == 0.0 and terms["L_opl"] == pytest.approx(
        1 + 0.7 * terms["opl_different_cos"]
    )
    assert terms["loss"] == pytest.approx(terms["L_ce"] + terms["L_opl"])
    changed = {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {"audio_branch", "visual_branch", "audio_head", "face_head", "fusion", "classifier"} <= changed


def test_fop_skips_a_verification_batch_with_one_positive_pair():
    # k = 1, labels [1, 0]: one same-person pair; BatchNorm needs two, so no update
    g_ids = [["id0"], ["id2"]]
    batch = Batch(audio(2), faces(2), torch.tensor([1, 0]), "a2v", ["id0", "id1"], g_ids, IDENTITIES)
    model = build("fop")
    before = [p.detach().clone() for p in model.parameters()]
    assert one_step(model, batch) == {"pairs": 1.0}
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


# ------------------------------------------------------------------ a short real fit


@pytest.mark.parametrize("method", ["pins", "fop"])
def test_short_fit_writes_a_checkpoint_that_loads(method, train_tuples, tmp_path):
    sets = ["batch_size=8", "workers=0", "threads=1", "max_steps_per_epoch=3", "epochs=1"]
    cfg = load_config(sets=[f"method={method}", *sets])
    summary = fit(cfg, train_tuples, tmp_path / "run", progress=False)
    assert summary["steps"] == 3
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3
    for rec in log:
        assert all(math.isfinite(rec[k]) for k in get_method(method).log_terms)
    model, state, saved = load_run(tmp_path / "run")
    assert saved.method == method and type(model).name == method
    if method == "pins":
        assert int(model.steps_taken) == 3  # the τ schedule goes on from here on resume
    else:
        assert "labels" in state and model.classifier.out_features == len(
            state["labels"]["classes"]["identity"]
        )
    with torch.no_grad():
        assert model.embed("audio", audio(2)).shape == (2, 128)
