"""AML networks: the shape contract, parameter counts worked out by hand, Xavier init, inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from avtrain.methods.aml.model import (
    AML,
    MATCHING_HEADS,
    PAIR_HEADS,
    DiffMLPHead,
    Generator,
    MatchingHead,
    MatchingMLPHead,
    ModalityDiscriminator,
    ModelConfig,
    RetrievalHead,
    VerificationHead,
    VerificationScoreHead,
)
from avtrain.methods.encoders import AudioBranch, VisualBranch, normalise_audio, normalise_face


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv(c_in, c_out, kh, kw):  # weights + one bias per output channel
    return c_out * (c_in * kh * kw + 1)


def bn(c):  # affine weight and bias (running stats are buffers, not parameters)
    return 2 * c


def linear(n_in, n_out):
    return n_out * (n_in + 1)


# Parameter counts, layer by layer from docs/aml-spec.md
AUDIO_PARAMS = (
    conv(1, 3, 5, 5)
    + bn(3)  # 78 + 6
    + conv(3, 5, 3, 6)
    + bn(5)  # 275 + 10
    + conv(5, 8, 3, 3)
    + bn(8)  # 368 + 16
    + conv(8, 16, 3, 3)
    + bn(16)  # 1168 + 32
    + conv(16, 32, 3, 3)  # 4640
)  # = 6593
VISUAL_PARAMS = (
    conv(3, 3, 7, 7)
    + bn(3)  # 444 + 6
    + conv(3, 5, 5, 5)
    + bn(5)  # 380 + 10
    + conv(5, 8, 2, 2)
    + bn(8)  # 168 + 16
    + conv(8, 16, 3, 3)
    + bn(16)  # 1168 + 32
    + conv(16, 32, 3, 3)  # 4640
)  # = 6864
GENERATOR_PARAMS = linear(3200, 128) + linear(128, 128)  # 409728 + 16512 = 426240
DISCRIMINATOR_PARAMS = linear(128, 2)  # 258


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _layer_counts(module: nn.Module) -> list[tuple[str, int]]:
    return [
        (type(m).__name__, n_params(m))
        for m in module.modules()
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))
    ]


def test_hand_counts_match_the_model_layer_by_layer():
    """Each parameterised layer of the model, in order, has the count of its spec formula
    (a wrong kernel, channel count or missing layer fails here, not only in the total)."""
    C, B, L = "Conv2d", "BatchNorm2d", "Linear"
    assert _layer_counts(AudioBranch()) == [
        (C, conv(1, 3, 5, 5)),
        (B, bn(3)),
        (C, conv(3, 5, 3, 6)),
        (B, bn(5)),
        (C, conv(5, 8, 3, 3)),
        (B, bn(8)),
        (C, conv(8, 16, 3, 3)),
        (B, bn(16)),
        (C, conv(16, 32, 3, 3)),
    ]
    assert _layer_counts(VisualBranch()) == [
        (C, conv(3, 3, 7, 7)),
        (B, bn(3)),
        (C, conv(3, 5, 5, 5)),
        (B, bn(5)),
        (C, conv(5, 8, 2, 2)),
        (B, bn(8)),
        (C, conv(8, 16, 3, 3)),
        (B, bn(16)),
        (C, conv(16, 32, 3, 3)),
    ]
    assert _layer_counts(Generator()) == [(L, linear(3200, 128)), (L, linear(128, 128))]
    assert _layer_counts(ModalityDiscriminator()) == [(L, linear(128, 2))]
    assert sum(n for _, n in _layer_counts(AudioBranch())) == AUDIO_PARAMS
    assert sum(n for _, n in _layer_counts(VisualBranch())) == VISUAL_PARAMS


def _assert_stage_shapes(layers: nn.Sequential, x: torch.Tensor, expected: list[tuple[int, ...]]) -> None:
    """Run x through the layers one at a time; each output's (C, H, W) must be the expected one."""
    assert len(layers) == len(expected)
    for layer, shape in zip(layers, expected):
        x = layer(x)
        assert tuple(x.shape[1:]) == shape, layer


def test_audio_branch_shapes_stage_by_stage():
    # (C, freq, time) after each layer, worked out in the docstring of avtrain/methods/aml/model.py
    expected = [
        (3, 111, 123),
        (3, 55, 60),
        (3, 55, 60),
        (3, 55, 60),  # conv, avgpool, BN, act
        (5, 28, 29),
        (5, 28, 29),
        (5, 13, 14),
        (5, 13, 14),  # conv, BN, avgpool, act
        (8, 13, 14),
        (8, 13, 14),
        (16, 13, 14),
        (16, 13, 14),
        (32, 13, 14),
        (32, 10, 10),
        (32, 10, 10),  # maxpool k(4,5) s1, act
    ]
    _assert_stage_shapes(AudioBranch().eval().layers, torch.randn(2, 1, 224, 125), expected)


def test_visual_branch_shapes_stage_by_stage():
    expected = [
        (3, 112, 112),
        (3, 56, 56),
        (3, 56, 56),
        (3, 56, 56),
        (5, 28, 28),
        (5, 14, 14),
        (5, 14, 14),
        (5, 14, 14),
        (8, 21, 21),
        (8, 21, 21),
        (8, 21, 21),  # conv k2 s1 p4: 14 + 8 - 2 + 1 = 21
        (16, 21, 21),
        (16, 21, 21),
        (32, 21, 21),
        (32, 10, 10),
        (32, 10, 10),  # maxpool 2 s2: floor(19 / 2) + 1 = 10
    ]
    _assert_stage_shapes(VisualBranch().eval().layers, torch.randn(2, 3, 224, 224), expected)


def test_features_and_embeddings():
    model = AML().eval()
    audio, face = torch.randn(3, 1, 224, 125), torch.randn(3, 3, 224, 224)
    assert model.features_audio(audio).shape == (3, 3200)
    assert model.features_face(face).shape == (3, 3200)
    h_a, h_v = model.embed_audio(audio), model.embed_face(face)
    assert h_a.shape == h_v.shape == (3, 128)
    assert h_a.abs().max() < 1 and h_v.abs().max() < 1  # tanh output


@pytest.mark.parametrize("k", [2, 10])
@pytest.mark.parametrize("task", ["matching", "retrieval"])
@pytest.mark.parametrize("direction", ["a2v", "v2a"])
def test_forward_gallery_tasks(task, k, direction):
    model = AML(ModelConfig(task=task, k=k)).eval()
    B = 2
    audio_q, face_q = torch.randn(B, 1, 224, 125), torch.randn(B, 3, 224, 224)
    face_g, audio_g = torch.randn(B, k, 3, 224, 224), torch.randn(B, k, 1, 224, 125)
    query, gallery = (audio_q, face_g) if direction == "a2v" else (face_q, audio_g)
    out = model(query, gallery, direction)
    assert out["h_query"].shape == (B, 128)
    assert out["h_gallery"].shape == (B, k, 128)
    assert out["logits"].shape == (B, k)
    assert out["direction"] == direction


def test_forward_verification():
    model = AML(ModelConfig(task="verification", k=1)).eval()
    out = model(torch.randn(2, 1, 224, 125), torch.randn(2, 3, 224, 224), "a2v")  # 4-D gallery
    assert out["h_gallery"].shape == (2, 1, 128) and out["logits"].shape == (2, 2)
    out = model(torch.randn(2, 3, 224, 224), torch.randn(2, 1, 1, 224, 125), "v2a")  # 5-D gallery
    assert out["logits"].shape == (2, 2)


def test_forward_embeds_gallery_items_independently():
    # the gallery is flattened into one batch and reshaped back: item j of tuple b must be
    # the embedding of gallery[b, j] (eval mode: BN uses running stats, no dropout)
    model = AML(ModelConfig(k=2)).eval()
    query, gallery = torch.randn(2, 1, 224, 125), torch.randn(2, 2, 3, 224, 224)
    out = model(query, gallery, "a2v")
    torch.testing.assert_close(out["h_gallery"][1, 0], model.embed_face(gallery[1, 0:1])[0])
    torch.testing.assert_close(out["h_query"], model.embed_audio(query))


def test_head_logits_shapes_and_parameter_counts():
    for k in (2, 10):
        head = MatchingHead(k)
        assert head(torch.randn(4, 128), torch.randn(4, k, 128)).shape == (4, k)
        assert n_params(head) == linear((k + 1) * 128, k)  # k=2: 770, k=10: 14090
        retrieval = RetrievalHead()
        assert retrieval(torch.randn(4, 128), torch.randn(4, k, 128)).shape == (4, k)
    assert n_params(MatchingHead(2)) == 770 and n_params(MatchingHead(10)) == 14090
    verification = VerificationHead()
    assert verification(torch.randn(4, 128), torch.randn(4, 1, 128)).shape == (4, 2)
    assert n_params(verification) == linear(256, 2) == 514
    assert n_params(RetrievalHead()) == linear(128, 1) == 129
    # retrieval against one shared gallery: (Q, 1, D) vs (1, G, D) -> (Q, G)
    assert RetrievalHead()(torch.randn(5, 1, 128), torch.randn(1, 7, 128)).shape == (5, 7)


def test_retrieval_head_scores_the_difference():
    head = RetrievalHead().eval()
    q, g = torch.randn(2, 128), torch.randn(2, 3, 128)
    linear_layer = head.layers[1]
    expected = (q[:, None] - g) @ linear_layer.weight[0] + linear_layer.bias
    torch.testing.assert_close(head(q, g), expected)


def test_parameter_counts():
    assert n_params(AudioBranch()) == AUDIO_PARAMS
    assert n_params(VisualBranch()) == VISUAL_PARAMS
    assert n_params(Generator()) == GENERATOR_PARAMS
    assert n_params(ModalityDiscriminator()) == DISCRIMINATOR_PARAMS
    shared = AML(ModelConfig(task="matching", k=2))
    head = linear(3 * 128, 2)
    assert n_params(shared) == AUDIO_PARAMS + VISUAL_PARAMS + GENERATOR_PARAMS + head + DISCRIMINATOR_PARAMS
    assert shared.face_generator is shared.generator
    separate = AML(ModelConfig(task="matching", k=2, shared_generator=False))
    assert n_params(separate) == n_params(shared) + GENERATOR_PARAMS
    # the encoder optimiser group is everything but the discriminator
    assert sum(p.numel() for p in shared.encoder_parameters()) == n_params(shared) - DISCRIMINATOR_PARAMS


def test_separate_generators_give_different_face_embeddings():
    model = AML(ModelConfig(shared_generator=False)).eval()
    f = torch.randn(2, 3200)
    assert not torch.allclose(model.generator(f), model.face_generator(f))


def test_channels_last_input_matches_contiguous():
    model = AML(ModelConfig(k=2)).eval()
    audio, face = torch.randn(2, 1, 224, 125), torch.randn(2, 3, 224, 224)
    cl_audio = audio.to(memory_format=torch.channels_last)
    cl_face = face.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model.embed_audio(cl_audio), model.embed_audio(audio), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.embed_face(cl_face), model.embed_face(face), rtol=1e-4, atol=1e-5)
    model_cl = model.to(memory_format=torch.channels_last)
    assert model_cl.features_face(cl_face).shape == (2, 3200)
    out = model_cl(cl_audio, face[:, None].expand(2, 2, 3, 224, 224), "a2v")
    assert out["logits"].shape == (2, 2)


def test_xavier_init():
    model = AML(ModelConfig(task="matching", k=10))
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 5 + 5 + 2 + 1 + 1  # convs, convs, generator, head, discriminator
    for m in layers:
        fan_in = m.weight[0].numel()  # in_channels * kh * kw
        fan_out = m.weight.shape[0] * m.weight[0, 0].numel()  # out_channels * kh * kw
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # Glorot uniform: U(-bound, bound)
        assert m.weight.abs().max() <= bound + 1e-7
        assert torch.all(m.bias == 0)
        if m.weight.numel() >= 4000:  # enough samples for a tight std estimate
            expected_std = math.sqrt(2.0 / (fan_in + fan_out))
            assert m.weight.std().item() == pytest.approx(expected_std, rel=0.05), m


def test_discriminator_weight_clipping():
    d = ModalityDiscriminator(clip_value=0.01)
    with torch.no_grad():
        d.layers[1].weight.normal_(0, 1)
        d.layers[1].bias.fill_(0.5)
    d.clip_weights()
    assert all(p.abs().max() <= 0.01 for p in d.parameters())
    d.clip_weights(0.001)
    assert all(p.abs().max() <= 0.001 for p in d.parameters())


def test_model_config_validation():
    with pytest.raises(ValueError):
        ModelConfig(task="verification", k=2)
    with pytest.raises(ValueError):
        ModelConfig(task="matching", k=1)
    with pytest.raises(ValueError):
        ModelConfig(task="ranking")
    with pytest.raises(ValueError, match="head must be one of"):
        ModelConfig(head="cosine")
    with pytest.raises(ValueError, match="matching head"):
        ModelConfig(task="retrieval", k=3, head="diff_mlp")
    with pytest.raises(ValueError):
        AML()(torch.randn(1, 1, 224, 125), torch.randn(1, 2, 3, 224, 224), "a2a")


def test_normalise_audio():
    spec = np.array([[-80.0, 0.0], [-1.0, 0.5]], dtype=np.float32)
    x = normalise_audio(spec)
    assert x.shape == (1, 2, 2) and x.dtype == torch.float32
    # (x - 0.5) / 0.5: -80 -> -161, 0 -> -1, -1 -> -3, 0.5 -> 0
    torch.testing.assert_close(x[0], torch.tensor([[-161.0, -1.0], [-3.0, 0.0]]))
    assert normalise_audio(np.zeros((4, 224, 125), np.float32)).shape == (4, 1, 224, 125)
    assert normalise_audio(torch.zeros(224, 125), add_channel=False).shape == (224, 125)


def test_normalise_face():
    img = np.zeros((224, 224, 3), np.uint8)
    img[0, 0] = (0, 255, 51)
    x = normalise_face(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    # 0 -> -1, 255 -> 1, 51 -> (0.2 - 0.5) / 0.5 = -0.6
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([-1.0, 1.0, -0.6]))
    assert normalise_face(np.zeros((5, 224, 224, 3), np.uint8)).shape == (5, 3, 224, 224)
    with pytest.raises(TypeError):
        normalise_face(np.zeros((224, 224, 3), np.float32))


# --------------------------------------------------------------------- matching heads


def head_params(head: str, k: int) -> int:
    """Hand counts of each matching head (ModelConfig.head)."""
    if head == "concat_linear":
        return linear((k + 1) * 128, k)
    if head == "concat_mlp":  # SVHF-Net style: (k+1)*128 -> 1024 -> 512 -> k
        return linear((k + 1) * 128, 1024) + linear(1024, 512) + linear(512, k)
    return linear(128, 256) + linear(256, 1)  # diff_mlp: 128 -> 256 -> 1, shared by the k items


def test_matching_head_hand_counts():
    assert head_params("concat_linear", 3) == 1539
    assert head_params("concat_mlp", 3) == 525312 + 524800 + 1539 == 1051651
    assert head_params("diff_mlp", 3) == head_params("diff_mlp", 10) == 33024 + 257 == 33281


@pytest.mark.parametrize("head", MATCHING_HEADS)
def test_matching_head_variants_in_the_model(head):
    k = 3
    model = AML(ModelConfig(task="matching", k=k, head=head)).eval()
    expected_type = {"concat_linear": MatchingHead, "concat_mlp": MatchingMLPHead, "diff_mlp": DiffMLPHead}[
        head
    ]
    assert type(model.head) is expected_type
    assert n_params(model.head) == head_params(head, k)
    assert n_params(model) == (
        AUDIO_PARAMS + VISUAL_PARAMS + GENERATOR_PARAMS + head_params(head, k) + DISCRIMINATOR_PARAMS
    )
    out = model(torch.randn(2, 1, 224, 125), torch.randn(2, k, 3, 224, 224), "a2v")
    assert out["logits"].shape == (2, k)
    # every Linear of the head gets Glorot init and a zero bias, like the rest of the model
    for m in model.head.modules():
        if isinstance(m, nn.Linear):
            assert torch.all(m.bias == 0)
            assert m.weight.abs().max() <= math.sqrt(6.0 / (m.in_features + m.out_features)) + 1e-7


def test_default_head_keeps_the_checkpoint_layout():
    # runs trained before the variants existed must still load: same class, same state-dict keys
    keys = {k for k in AML(ModelConfig(k=3)).state_dict() if k.startswith("head.")}
    assert keys == {"head.layers.1.weight", "head.layers.1.bias"}
    assert ModelConfig().head == "concat_linear"


def test_concat_mlp_head_is_built_for_one_k():
    with pytest.raises(ValueError, match="k=3"):
        MatchingMLPHead(3)(torch.randn(2, 128), torch.randn(2, 4, 128))


def test_diff_mlp_head_is_per_item():
    head = DiffMLPHead().eval()
    q, g = torch.randn(4, 128), torch.randn(4, 5, 128)
    logits = head(q, g)
    assert logits.shape == (4, 5)  # any gallery size
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(head(q, g[:, perm]), logits[:, perm])  # positions are interchangeable
    torch.testing.assert_close(logits[:, 2], head.layers(q - g[:, 2]).squeeze(-1))
    # one query set against one shared gallery, as RetrievalHead: (Q, 1, D) vs (1, G, D) -> (Q, G)
    assert head(torch.randn(6, 1, 128), torch.randn(1, 9, 128)).shape == (6, 9)


def _tiny_matching_tuples(n: int, k: int, prototypes: torch.Tensor, gen: torch.Generator, noise: float = 0.1):
    """k-way tuples over a few identities: each identity is a fixed 128-d point, every
    item that point plus a little noise; the query matches gallery position `label`."""
    ids = torch.stack([torch.randperm(len(prototypes), generator=gen)[:k] for _ in range(n)])  # distinct
    label = torch.randint(k, (n,), generator=gen)
    h_query = prototypes[ids[torch.arange(n), label]] + noise * torch.randn(n, 128, generator=gen)
    h_gallery = prototypes[ids] + noise * torch.randn(n, k, 128, generator=gen)
    return h_query.clamp(-1, 1), h_gallery.clamp(-1, 1), label


@pytest.mark.parametrize("head", MATCHING_HEADS)
def test_matching_head_learns_a_tiny_separable_problem(head):
    """Trained on 256 tuples, scored on 512 fresh ones (new draws of the same 12 identities):
    nearest-neighbour gets them all right, so a head that can compare query and gallery does
    well; the paper's concat_linear head memorises its training tuples but stays near chance
    (1/3) on new ones: its logits have no query-gallery interaction term."""
    k = 3
    gen = torch.Generator().manual_seed(1)
    prototypes = torch.tanh(torch.randn(12, 128, generator=gen))
    train = _tiny_matching_tuples(256, k, prototypes, gen)
    held_out = _tiny_matching_tuples(512, k, prototypes, gen)
    nearest = (held_out[1] - held_out[0][:, None]).norm(dim=2).argmin(1)
    assert (nearest == held_out[2]).float().mean() == 1.0  # separable
    model = AML(ModelConfig(task="matching", k=k, head=head))
    opt = torch.optim.Adam(model.head.parameters(), lr=3e-3)
    model.head.train()
    for _ in range(100):
        loss = nn.functional.cross_entropy(model.head(train[0], train[1]), train[2])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.head.eval()
    with torch.no_grad():
        fit = (model.head(train[0], train[1]).argmax(1) == train[2]).float().mean().item()
        new = (model.head(held_out[0], held_out[1]).argmax(1) == held_out[2]).float().mean().item()
    if head == "concat_linear":
        assert fit > 0.6 and new < 0.5, (fit, new)  # memorised, not learned
    else:
        assert fit > 0.95 and new > 0.75, (fit, new)  # learned the comparison


# ------------------------------------------------------- verification and retrieval heads


@pytest.mark.parametrize("task", ["verification", "retrieval"])
@pytest.mark.parametrize("pair_head", PAIR_HEADS)
def test_pair_head_variants_in_the_model(task, pair_head):
    k = 1 if task == "verification" else 3
    model = AML(ModelConfig(task=task, k=k, pair_head=pair_head)).eval()
    expected = {
        ("verification", "linear"): (VerificationHead, linear(256, 2)),
        ("verification", "diff_mlp"): (VerificationScoreHead, head_params("diff_mlp", 1)),
        ("retrieval", "linear"): (RetrievalHead, linear(128, 1)),
        ("retrieval", "diff_mlp"): (DiffMLPHead, head_params("diff_mlp", 1)),
    }[task, pair_head]
    assert type(model.head) is expected[0] and n_params(model.head) == expected[1]
    out = model(torch.randn(2, 1, 224, 125), torch.randn(2, k, 3, 224, 224), "a2v")
    assert out["logits"].shape == (2, 2 if task == "verification" else k)
    h_q, h_g = out["h_query"], out["h_gallery"]
    if task == "verification":  # head_scores: logit same - logit different
        torch.testing.assert_close(
            model.head_scores(task, 1, "a2v", h_q, h_g[:, 0]), out["logits"][:, 1] - out["logits"][:, 0]
        )
    else:  # one query set against one shared gallery: (Q, 1, D) vs (1, G, D) -> (Q, G)
        assert model.head_scores(task, 5, "a2v", h_q[:, None], torch.randn(1, 5, 128)).shape == (2, 5)


def test_pair_head_is_checked_and_the_default_keeps_the_layout():
    assert ModelConfig().pair_head == "linear"
    for task, k in (("verification", 1), ("retrieval", 3)):
        keys = {n for n in AML(ModelConfig(task=task, k=k)).state_dict() if n.startswith("head.")}
        assert keys == {"head.layers.1.weight", "head.layers.1.bias"}  # runs before pair_head load
    with pytest.raises(ValueError, match="pair_head must be one of"):
        ModelConfig(task="verification", k=1, pair_head="mlp")
    with pytest.raises(ValueError, match="matching's is head"):
        ModelConfig(task="matching", pair_head="diff_mlp")
    with pytest.raises(ValueError, match="retrieval's head is pair_head"):
        ModelConfig(task="retrieval", k=3, head="diff_mlp")


def _tiny_pairs(n: int, prototypes: torch.Tensor, gen: torch.Generator):
    """Balanced verification pairs from n binary tuples: each query once with its positive and
    once with its negative, so every voice and every identity's faces occur in positive and
    negative pairs alike (as in make-tuples' lists)."""
    q, g, label = _tiny_matching_tuples(n, 2, prototypes, gen)
    rows = torch.arange(n)
    faces = torch.cat([g[rows, label], g[rows, 1 - label]])
    return torch.cat([q, q]), faces, torch.cat([torch.ones(n), torch.zeros(n)]).long()


def _train_head(model: AML, h_query, h_gallery, labels, steps: int = 150):
    opt = torch.optim.Adam(model.head.parameters(), lr=3e-3)
    model.head.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model.head(h_query, h_gallery), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.head.eval()


@pytest.mark.parametrize("pair_head", PAIR_HEADS)
def test_verification_head_learns_a_tiny_separable_problem(pair_head):
    """512 training pairs, 1,024 new ones of the same 12 identities (-L2 separates them perfectly).
    The paper's C_V scores u·h_q + v·h_g + c, a voice term plus a face term: on new pairs its AUC
    stays near 0.5, while diff_mlp (an MLP on h_q - h_g) learns the comparison."""
    from avtrain.evaluation.metrics import roc_auc

    gen = torch.Generator().manual_seed(2)
    prototypes = torch.tanh(torch.randn(12, 128, generator=gen))
    train, held_out = _tiny_pairs(256, prototypes, gen), _tiny_pairs(512, prototypes, gen)
    assert roc_auc(-(held_out[0] - held_out[1]).norm(dim=1).numpy(), held_out[2].numpy()) == 1.0
    model = AML(ModelConfig(task="verification", k=1, pair_head=pair_head))
    _train_head(model, *train)
    with torch.no_grad():
        score = model.head_scores("verification", 1, "a2v", held_out[0], held_out[1]).numpy()
    auc = roc_auc(score, held_out[2].numpy())
    if pair_head == "linear":
        assert auc < 0.65, auc  # additive: nothing to learn from
    else:
        assert auc > 0.9, auc


@pytest.mark.parametrize("pair_head", PAIR_HEADS)
def test_retrieval_head_learns_a_tiny_separable_problem(pair_head):
    """C_R trained as the paper does (softmax over a 3-item gallery): one linear layer on
    h_q - h_j ranks every gallery by -w·h_j alone and stays near chance (1/3) on new tuples;
    diff_mlp learns to rank by closeness."""
    gen = torch.Generator().manual_seed(3)
    prototypes = torch.tanh(torch.randn(12, 128, generator=gen))
    train, held_out = (
        _tiny_matching_tuples(256, 3, prototypes, gen),
        _tiny_matching_tuples(512, 3, prototypes, gen),
    )
    model = AML(ModelConfig(task="retrieval", k=3, pair_head=pair_head))
    _train_head(model, *train)
    with torch.no_grad():
        new = (model.head(held_out[0], held_out[1]).argmax(1) == held_out[2]).float().mean().item()
    if pair_head == "linear":
        assert new < 0.5, new
    else:
        assert new > 0.75, new
