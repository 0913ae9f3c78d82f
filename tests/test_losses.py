"""AML losses against values worked out by hand on tiny 2-D inputs (3-4-5 triangles)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avtrain.losses import (
    AMLLoss,
    LossConfig,
    critic_score,
    generator_adversarial_loss,
    lifted_structured_loss,
    modality_loss,
    ranked_list_loss,
    split_gallery,
    task_loss,
    triplet_loss,
)
from avtrain.methods.aml.model import AML, ModalityDiscriminator, ModelConfig


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


# One tuple: query h0 = (0,0), positive h1 = (3,0), negative h2 = (0,4).
# d(h0,h1) = 3, d(h0,h2) = 4, d(h1,h2) = sqrt(9 + 16) = 5.
H0, H1, HNEG = t([0.0, 0.0]), t([3.0, 0.0]), t([0.0, 4.0])[None]  # (1,2) (1,2) (1,1,2)
# λ = 1: J = log(e^(1-4) + e^(1-5)) + 3 = log(e^-3 (1 + e^-1)) + 3 = log(1 + 1/e)
J_345 = math.log(1 + math.exp(-1))  # 0.3132617


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------- lifted


def test_lifted_single_tuple_squared_and_unsquared():
    assert HNEG.shape == (1, 1, 2)
    out = lifted_structured_loss(H0, H1, HNEG, margin=1.0, squared=True)
    assert out["J"].shape == out["hinge"].shape == (1,)
    assert out["J"].item() == pytest.approx(J_345)
    assert out["d_pos"].item() == pytest.approx(3.0)
    # M = 1: L = 1/(2M) max(0, J)^2 = 0.3132617^2 / 2 = 0.0490664
    assert out["loss"].item() == pytest.approx(J_345**2 / 2)
    assert out["loss"].item() == pytest.approx(0.0490664, abs=1e-7)
    # reference form, not squared: 0.3132617 / 2 = 0.1566308
    unsquared = lifted_structured_loss(H0, H1, HNEG, margin=1.0, squared=False)
    assert unsquared["loss"].item() == pytest.approx(J_345 / 2)


def test_lifted_two_negatives():
    # negatives (0,4) and (0,-4): d(h0,hj) = 4, 4; d(h1,hq) = 5, 5
    # J = log(2 e^-3 + 2 e^-4) + 3 = log 2 + log(1 + 1/e) = 0.6931472 + 0.3132617 = 1.0064089
    hneg = t([0.0, 4.0], [0.0, -4.0])[None]
    out = lifted_structured_loss(H0, H1, hneg, margin=1.0)
    assert out["J"].item() == pytest.approx(math.log(2) + J_345)
    assert out["loss"].item() == pytest.approx((math.log(2) + J_345) ** 2 / 2)


def test_lifted_margin_shifts_J():
    # λ = 3: every exponent grows by 2, so J grows by exactly 2: 2.3132617
    out = lifted_structured_loss(H0, H1, HNEG, margin=3.0)
    assert out["J"].item() == pytest.approx(J_345 + 2)


def test_lifted_hinge_at_zero_and_batch_mean():
    # tuple B: h0 = h1 = (0,0), negative (3,4): d0 = 0 (1e-6 after the clamp), d(h0,h2) =
    # d(h1,h2) = 5, J = log(2 e^(1-5)) + 0 = log 2 - 4 = -3.3068528 < 0 -> hinge 0
    h0 = torch.cat([H0, t([0.0, 0.0])])
    h1 = torch.cat([H1, t([0.0, 0.0])])
    hneg = torch.cat([HNEG, t([3.0, 4.0])[None]])
    out = lifted_structured_loss(h0, h1, hneg, margin=1.0)
    assert out["J"][1].item() == pytest.approx(math.log(2) - 4, abs=1e-5)
    assert out["hinge"][1].item() == 0.0
    # M = 2: L = 1/(2*2) (0.3132617^2 + 0) = 0.0245332
    assert out["loss"].item() == pytest.approx(J_345**2 / 4)
    # unsquared: 1/4 (0.3132617 + 0)
    assert lifted_structured_loss(h0, h1, hneg, squared=False)["loss"].item() == pytest.approx(J_345 / 4)


def test_lifted_is_stable_for_huge_margin_and_no_negatives():
    # λ = 1000 would overflow exp(): logsumexp keeps J = 1000 - 4 + log(1 + 1/e) + ... exact
    out = lifted_structured_loss(H0.float(), H1.float(), HNEG.float(), margin=1000.0)
    assert torch.isfinite(out["loss"])
    assert out["J"].item() == pytest.approx(J_345 + 999, rel=1e-6)
    h0 = H0.clone().requires_grad_()
    empty = lifted_structured_loss(h0, H1, HNEG[:, :0])  # k = 1: nothing to push away
    assert empty["loss"].item() == 0.0
    empty["loss"].backward()
    assert torch.isfinite(h0.grad).all()


def test_lifted_gradient_at_coincident_points_is_finite():
    h = torch.zeros(1, 2, requires_grad=True)
    out = lifted_structured_loss(h, h * 1.0, HNEG.float())  # d(h0,h1) = 0 exactly
    out["loss"].backward()
    assert torch.isfinite(h.grad).all()


# ---------------------------------------------------------------------- triplet


def test_triplet_by_hand():
    # negatives (0,4) and (0,2): d(h0,hj) = 4, 2; d(h0,h1) = 3; margin 1
    # terms: max(0, 3 - 4 + 1) = 0, max(0, 3 - 2 + 1) = 2; mean = 1
    hneg = t([0.0, 4.0], [0.0, 2.0])[None]
    out = triplet_loss(H0, H1, hneg, margin=1.0)
    torch.testing.assert_close(out["triplet"], t([0.0, 2.0]))
    assert out["loss"].item() == pytest.approx(1.0)
    # margin 2: max(0, 3 - 4 + 2) = 1, max(0, 3 - 2 + 2) = 3; mean 2
    assert triplet_loss(H0, H1, hneg, margin=2.0)["loss"].item() == pytest.approx(2.0)


def test_triplet_matches_torch_triplet_margin_loss():
    torch.manual_seed(0)
    B, k, D = 6, 5, 16
    h0, h1, hneg = torch.randn(B, D), torch.randn(B, D), torch.randn(B, k - 1, D)
    ours = triplet_loss(h0, h1, hneg, margin=1.0)["loss"]
    # one (anchor, positive, negative) triplet per negative
    theirs = F.triplet_margin_loss(
        h0[:, None].expand(B, k - 1, D).reshape(-1, D),
        h1[:, None].expand(B, k - 1, D).reshape(-1, D),
        hneg.reshape(-1, D),
        margin=1.0,
        p=2,
    )
    # torch adds eps = 1e-6 inside the norm (||a - b + eps||): agree to ~1e-5
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------- ranked list


def test_ranked_list_by_hand():
    # α = 4.5, m = 2, T = 1: positive boundary α - m = 2.5
    # positive: d(h0,h1) = 3 -> max(0, 3 - 2.5) = 0.5
    # negatives (0,4), (0,2), (0,5): d = 4, 2, 5; α - d = 0.5, 2.5, -0.5 (third is inactive)
    # weights e^0.5, e^2.5 (normalised): L_N = (0.5 e^0.5 + 2.5 e^2.5) / (e^0.5 + e^2.5)
    #   = 0.5 + 2 / (1 + e^-2) = 0.5 + 2 * 0.8807971 = 2.2615942
    hneg = t([0.0, 4.0], [0.0, 2.0], [0.0, 5.0])[None]
    out = ranked_list_loss(H0, H1, hneg, alpha=4.5, margin=2.0, temperature=1.0)
    assert out["positive"].item() == pytest.approx(0.5)
    assert out["negative"].item() == pytest.approx(0.5 + 2 / (1 + math.exp(-2)))
    assert out["weights"][0, 2].item() == 0.0
    assert out["loss"].item() == pytest.approx(0.5 + 2.2615942, abs=1e-6)
    # negative_weight scales L_N only
    half = ranked_list_loss(H0, H1, hneg, alpha=4.5, margin=2.0, temperature=1.0, negative_weight=0.5)
    assert half["loss"].item() == pytest.approx(0.5 + 0.5 * 2.2615942, abs=1e-6)


def test_ranked_list_satisfied_tuple_is_zero():
    # defaults α = 1.2, m = 0.4: positive at 0.6 < 0.8, negative at 5 > 1.2 -> no loss, no NaN
    h0 = t([0.0, 0.0]).requires_grad_()
    out = ranked_list_loss(h0, t([0.6, 0.0]), t([3.0, 4.0])[None])
    assert out["loss"].item() == 0.0
    out["loss"].backward()
    assert torch.isfinite(h0.grad).all()


# ---------------------------------------------------------------- adversarial


def test_gan_discriminator_loss_by_hand_and_against_cross_entropy():
    # audio logits (0, 0), label 0: CE = log 2; face logits (0, ln 3), label 1: CE = log(4/3)
    audio, face = t([0.0, 0.0]), t([0.0, math.log(3)])
    out = modality_loss(audio, face, "gan")
    assert out["audio"].item() == pytest.approx(math.log(2))
    assert out["face"].item() == pytest.approx(math.log(4 / 3))
    # mean over items: (log 2 + log 4/3) / 2 = log(8/3) / 2 = 0.4904146
    assert out["loss"].item() == pytest.approx(math.log(8 / 3) / 2)
    # Eq. 3 (sum over the tuple's items, one tuple): log(8/3) = 0.9808293
    assert modality_loss(audio, face, "gan", num_tuples=1)["loss"].item() == pytest.approx(math.log(8 / 3))
    torch.manual_seed(0)
    a, v = torch.randn(4, 2), torch.randn(12, 2)
    expected = F.cross_entropy(torch.cat([a, v]), torch.tensor([0] * 4 + [1] * 12))
    torch.testing.assert_close(modality_loss(a, v, "gan")["loss"], expected)
    torch.testing.assert_close(modality_loss(a, v, "gan", num_tuples=4)["loss"], expected * 16 / 4)
    # generator side: minimise -L_dis
    torch.testing.assert_close(generator_adversarial_loss(a, v, "gan")["loss"], -expected)


def test_lsgan_by_hand():
    # audio D(h) = (0.5, 0): D: 1/2 ((0.5-1)^2 + 0^2) = 0.125; G (target face (0,1)): 1/2 (0.25 + 1) = 0.625
    # face  D(h) = (0, 2):   D: 1/2 (0^2 + (2-1)^2) = 0.5;     G (target audio (1,0)): 1/2 (1 + 4) = 2.5
    audio, face = t([0.5, 0.0]), t([0.0, 2.0])
    dis = modality_loss(audio, face, "lsgan")
    assert dis["audio"].item() == pytest.approx(0.125) and dis["face"].item() == pytest.approx(0.5)
    assert dis["loss"].item() == pytest.approx((0.125 + 0.5) / 2)
    gen = generator_adversarial_loss(audio, face, "lsgan")
    assert gen["audio"].item() == pytest.approx(0.625) and gen["face"].item() == pytest.approx(2.5)
    assert gen["loss"].item() == pytest.approx((0.625 + 2.5) / 2)


def test_wgan_by_hand():
    # critic s = D1 - D0. audio rows (1,3) -> 2 and (0,0) -> 0: mean 1; face (2,1) -> -1
    # L_dis = mean_a s - mean_v s = 1 - (-1) = 2; the generator minimises -L_dis = -2
    audio, face = t([1.0, 3.0], [0.0, 0.0]), t([2.0, 1.0])
    torch.testing.assert_close(critic_score(audio), torch.tensor([2.0, 0.0], dtype=torch.float64))
    assert modality_loss(audio, face, "wgan")["loss"].item() == pytest.approx(2.0)
    assert modality_loss(audio, face, "wgan", num_tuples=1)["loss"].item() == pytest.approx(2.0)  # ignored
    assert generator_adversarial_loss(audio, face, "wgan")["loss"].item() == pytest.approx(-2.0)
    with pytest.raises(ValueError):
        modality_loss(audio, face, "hinge")


# ----------------------------------------------------------------- task + AML


def test_task_loss_is_cross_entropy():
    logits, labels = t([2.0, 0.0], [0.0, 0.0]), torch.tensor([0, 1])
    out = task_loss(logits, labels)
    # row 1: log(1 + e^-2) = 0.1269280; row 2: log 2
    expected = torch.tensor([math.log(1 + math.exp(-2)), math.log(2)], dtype=torch.float64)
    torch.testing.assert_close(out["per_tuple"], expected)
    assert out["loss"].item() == pytest.approx(F.cross_entropy(logits, labels).item())


def test_split_gallery_uses_the_label():
    g = torch.arange(12.0).view(2, 3, 2)  # tuple 0 items (0,1),(2,3),(4,5); tuple 1 (6,7),(8,9),(10,11)
    pos, neg = split_gallery(g, torch.tensor([1, 2]))
    torch.testing.assert_close(pos, torch.tensor([[2.0, 3.0], [10.0, 11.0]]))
    torch.testing.assert_close(neg, torch.tensor([[[0.0, 1.0], [4.0, 5.0]], [[6.0, 7.0], [8.0, 9.0]]]))


def test_task_defaults():
    m = LossConfig("matching")
    assert (m.lambda_margin, m.beta, m.gamma) == (1, 3, 2)
    assert (LossConfig("retrieval").beta, LossConfig("retrieval").gamma) == (3, 2)
    v = LossConfig("verification")
    assert (v.lambda_margin, v.beta, v.gamma) == (0, 0, 2)
    assert LossConfig("matching", beta=5.0).beta == 5.0
    with pytest.raises(ValueError):
        LossConfig(metric_kind="contrastive")


def small_batch(task="matching", k=3, direction="v2a", shared=True, B=3, seed=0):
    """A real AML forward pass on tiny random inputs (training mode)."""
    torch.manual_seed(seed)
    model = AML(ModelConfig(task=task, k=k, shared_generator=shared))
    faces = torch.randn(B, 3, 224, 224)
    audio = torch.randn(B, k, 1, 224, 125)
    if direction == "a2v":
        faces, audio = torch.randn(B, k, 3, 224, 224), torch.randn(B, 1, 224, 125)
        out = model(audio, faces, "a2v")
    else:
        out = model(faces, audio, "v2a")
    labels = torch.randint(0, 2 if task == "verification" else k, (B,))
    return model, out, labels


def test_aml_objective_composition():
    model, out, labels = small_batch()
    loss_fn = AMLLoss(LossConfig("matching"))
    e = loss_fn.encoder_loss(out, labels, model.discriminator)
    torch.testing.assert_close(e["L_total"], 3.0 * e["L_metric"] + 2.0 * e["L_cls"])
    torch.testing.assert_close(e["objective"], e["L_total"] - e["L_dis"])  # Eq. 10 (gan)
    torch.testing.assert_close(e["L_cls"], F.cross_entropy(out["logits"], labels))
    h_pos, h_neg = split_gallery(out["h_gallery"], labels)
    torch.testing.assert_close(e["L_metric"], lifted_structured_loss(out["h_query"], h_pos, h_neg)["loss"])
    assert e["L_dis"].item() > 0


@pytest.mark.parametrize("adversarial_kind", ["gan", "lsgan", "wgan"])
@pytest.mark.parametrize("metric_kind", ["lifted", "triplet", "ranked_list"])
def test_gradients_flow_through_every_term(metric_kind, adversarial_kind):
    # large ranked-list α so its negatives are active on random tanh features
    cfg = LossConfig(
        "matching",
        metric_kind=metric_kind,
        adversarial_kind=adversarial_kind,
        rll_alpha=50.0,
        rll_margin=49.0,
    )
    loss_fn = AMLLoss(cfg)
    model, out, labels = small_batch(k=3, direction="a2v")
    e = loss_fn.encoder_loss(out, labels, model.discriminator)
    for name in ("L_metric", "L_cls", "L_adv"):
        model.zero_grad()
        params = [model.generator.layers[1].weight, model.audio_branch.layers[0].weight]
        grads = torch.autograd.grad(e[name], params, retain_graph=True)
        assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads), name
    e["objective"].backward(retain_graph=True)
    # the encoder step leaves the discriminator untouched (θ̂_D fixed in Eq. 10)
    assert all(p.grad is None for p in model.discriminator.parameters())
    d = loss_fn.discriminator_loss(out, model.discriminator)
    model.zero_grad(set_to_none=True)
    d["L_dis"].backward()
    weight, bias = model.discriminator.layers[1].weight, model.discriminator.layers[1].bias
    assert torch.isfinite(weight.grad).all() and weight.grad.abs().sum() > 0
    if adversarial_kind == "wgan":
        # mean_a s - mean_v s: the bias adds the same constant to both means and cancels
        assert torch.all(bias.grad == 0)
    else:
        assert torch.isfinite(bias.grad).all() and bias.grad.abs().sum() > 0
    # ... and the discriminator step leaves the encoders untouched (h detached)
    assert all(p.grad is None for p in model.encoder_parameters())


def test_discriminator_loss_sees_both_modalities_with_the_right_labels():
    model, out, labels = small_batch(direction="v2a", k=3, B=2)
    d = AMLLoss(LossConfig(dis_reduction="mean")).discriminator_loss(out, model.discriminator.eval())
    h_audio, h_face = out["h_gallery"].flatten(0, 1), out["h_query"]  # v2a: gallery is audio
    logits = model.discriminator(torch.cat([h_audio, h_face]))
    expected = F.cross_entropy(logits, torch.tensor([0] * 6 + [1] * 2))
    torch.testing.assert_close(d["L_dis"], expected)
    # Eq. 3 reduction: summed over the 4 items of each tuple, averaged over the 2 tuples
    d_eq3 = AMLLoss(LossConfig()).discriminator_loss(out, model.discriminator)
    torch.testing.assert_close(d_eq3["L_dis"], expected * 8 / 2)


def test_ablation_switches_zero_the_right_terms():
    model, out, labels = small_batch()
    disc = model.discriminator.eval()
    full = AMLLoss(LossConfig()).encoder_loss(out, labels, disc)

    no_ml = AMLLoss(LossConfig(metric=False)).encoder_loss(out, labels, disc)  # Table VII (b)
    assert no_ml["L_metric"].item() == 0.0
    torch.testing.assert_close(no_ml["L_total"], 2.0 * full["L_cls"])
    torch.testing.assert_close(no_ml["L_dis"], full["L_dis"])
    torch.testing.assert_close(no_ml["objective"], 2.0 * full["L_cls"] - full["L_dis"])

    no_al_loss = AMLLoss(LossConfig(adversarial=False))  # Table VII (c)
    no_al = no_al_loss.encoder_loss(out, labels)  # no discriminator needed
    assert no_al["L_dis"].item() == 0.0 and no_al["L_adv"].item() == 0.0
    torch.testing.assert_close(no_al["objective"], full["L_total"])
    assert not no_al_loss.uses_discriminator
    assert no_al_loss.discriminator_loss(out, disc)["L_dis"].item() == 0.0

    neither = AMLLoss(LossConfig(metric=False, adversarial=False)).encoder_loss(out, labels)  # (a)
    torch.testing.assert_close(neither["objective"], 2.0 * full["L_cls"])

    with pytest.raises(ValueError):
        AMLLoss(LossConfig()).encoder_loss(out, labels)  # adversarial needs the discriminator


def test_verification_defaults_give_the_metric_no_weight():
    model, out, labels = small_batch(task="verification", k=1, direction="a2v")
    e = AMLLoss(LossConfig("verification")).encoder_loss(out, labels, model.discriminator)
    assert e["L_metric"].item() == 0.0
    torch.testing.assert_close(e["L_total"], 2.0 * F.cross_entropy(out["logits"], labels))
    # the objective's gradient equals that of γ L_cls - L_dis alone
    params = [model.generator.layers[1].weight]
    (g_obj,) = torch.autograd.grad(e["objective"], params, retain_graph=True)
    (g_ref,) = torch.autograd.grad(2.0 * e["L_cls"] - e["L_dis"], params)
    torch.testing.assert_close(g_obj, g_ref)


def test_squared_switch_reaches_the_metric_term():
    model, out, labels = small_batch()
    disc = model.discriminator
    sq = AMLLoss(LossConfig(lifted_squared=True)).encoder_loss(out, labels, disc)["metric_terms"]
    un = AMLLoss(LossConfig(lifted_squared=False)).encoder_loss(out, labels, disc)["metric_terms"]
    torch.testing.assert_close(sq["J"], un["J"])
    torch.testing.assert_close(sq["hinge"], un["hinge"] ** 2)


def test_wgan_clip_after_discriminator_step():
    # one D step as the trainer does it: gradient step, then clip
    model, out, _ = small_batch()
    opt = torch.optim.SGD(model.discriminator.parameters(), lr=10.0)
    loss_fn = AMLLoss(LossConfig(adversarial_kind="wgan"))
    loss_fn.discriminator_loss(out, model.discriminator)["L_dis"].backward()
    opt.step()
    model.discriminator.clip_weights()
    assert all(p.abs().max() <= 0.01 for p in model.discriminator.parameters())
    assert isinstance(model.discriminator, ModalityDiscriminator)
