"""Modality adversarial losses: discriminator side (L_dis) and generator side.

The discriminator D maps every h (query and gallery items alike) to two outputs, column 0 =
audio, column 1 = visual; modality labels are audio = 0, visual = 1 (AUDIO, FACE below).

kind       discriminator minimises                 encoders/generator add to L_total
"gan"      cross-entropy on modality labels (Eq. 3)  -L_dis  (Eq. 10: minimise L_total - L_dis)
"lsgan"    1/2 ||D(h) - onehot(y)||^2               1/2 ||D(h) - onehot(1 - y)||^2 (flipped)
"wgan"     mean_a s - mean_v s, s = D1 - D0          -L_dis  (the Wasserstein estimate)

Paper vs variants. The paper's own method (Sec. III-C) is Eq. 3's cross-entropy with WGAN
weight clipping of D, and Table VIII calls that row "WGAN" (93.33, the headline). So the
headline setting is kind="gan" + ModalityDiscriminator.clip_weights() after each D step;
Table VIII's "GANs" row is kind="gan" without clipping, "LSGANs" is kind="lsgan". kind="wgan"
is the textbook critic (Arjovsky et al.), kept for completeness.

WGAN critic score: s = D(h)[:, 1] - D(h)[:, 0], the "visual-ness" margin. Using the
difference (rather than one column) lets the same two-output head read as a classifier
(softmax) and as a critic, and s is exactly the logit of P(visual) under the softmax.

Reductions (gan, lsgan): Eq. 3 sums the per-item terms over the k+1 items of a tuple and
averages over tuples; pass num_tuples for that ("tuple_sum"), or None for the plain mean over
all items (= F.cross_entropy on the concatenation). WGAN always uses per-modality means, the
only form that estimates a distance between the two distributions (audio and visual items
are 1 : k per tuple).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUDIO, FACE = 0, 1  # modality labels for the discriminator (audio=0, visual=1)

ADVERSARIAL_KINDS = ("gan", "lsgan", "wgan")


def critic_score(d_logits: torch.Tensor) -> torch.Tensor:
    """WGAN critic value of each h: visual logit minus audio logit, (N, 2) -> (N,)."""
    return d_logits[:, FACE] - d_logits[:, AUDIO]


def _reduce(audio: torch.Tensor, face: torch.Tensor, num_tuples: int | None) -> torch.Tensor:
    total = audio.sum() + face.sum()
    return total / (num_tuples if num_tuples is not None else audio.numel() + face.numel())


def _least_squares(d_logits: torch.Tensor, target: int) -> torch.Tensor:
    """1/2 sum_c (D_c(h) - onehot(target)_c)^2 per item (LSGAN's a-b coding on 2 outputs)."""
    onehot = F.one_hot(torch.full(d_logits.shape[:1], target, device=d_logits.device), 2)
    return 0.5 * (d_logits - onehot.to(d_logits.dtype)).pow(2).sum(1)


def modality_loss(
    d_logits_audio: torch.Tensor,
    d_logits_face: torch.Tensor,
    kind: str = "gan",
    num_tuples: int | None = None,
) -> dict:
    """L_dis, minimised by the discriminator. Inputs are D's outputs (N_a, 2) and (N_v, 2).

    Returns per-item terms "audio" (N_a,), "face" (N_v,) and the reduced "loss".
    """
    if kind == "gan":
        audio = F.cross_entropy(d_logits_audio, _labels(d_logits_audio, AUDIO), reduction="none")
        face = F.cross_entropy(d_logits_face, _labels(d_logits_face, FACE), reduction="none")
        return {"audio": audio, "face": face, "loss": _reduce(audio, face, num_tuples)}
    if kind == "lsgan":
        audio = _least_squares(d_logits_audio, AUDIO)
        face = _least_squares(d_logits_face, FACE)
        return {"audio": audio, "face": face, "loss": _reduce(audio, face, num_tuples)}
    if kind == "wgan":
        # the critic lowers s on audio and raises it on faces
        audio, face = critic_score(d_logits_audio), -critic_score(d_logits_face)
        return {"audio": audio, "face": face, "loss": audio.mean() + face.mean()}
    raise ValueError(f"adversarial kind must be one of {ADVERSARIAL_KINDS}, got {kind!r}")


def generator_adversarial_loss(
    d_logits_audio: torch.Tensor,
    d_logits_face: torch.Tensor,
    kind: str = "gan",
    num_tuples: int | None = None,
) -> dict:
    """The adversarial term the encoders/generator add to L_total (D held fixed).

    gan, wgan: -L_dis (Eq. 10's minimax). lsgan: least squares towards the *other*
    modality's target (LSGAN's generator objective with flipped labels).
    Returns per-item "audio", "face" and the reduced "loss".
    """
    if kind == "lsgan":
        audio = _least_squares(d_logits_audio, FACE)
        face = _least_squares(d_logits_face, AUDIO)
        return {"audio": audio, "face": face, "loss": _reduce(audio, face, num_tuples)}
    dis = modality_loss(d_logits_audio, d_logits_face, kind, num_tuples)
    return {"audio": -dis["audio"], "face": -dis["face"], "loss": -dis["loss"]}


def _labels(d_logits: torch.Tensor, modality: int) -> torch.Tensor:
    return torch.full(d_logits.shape[:1], modality, dtype=torch.long, device=d_logits.device)
