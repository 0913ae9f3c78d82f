"""The AML objective: L_total = β L_metric + γ L_cls (Eq. 9), L_dis (Eq. 3), and the
encoder/generator objective L_total - L_dis (Eq. 10) or its LSGAN/WGAN counterpart.

One training step (Algorithm 1), with `out = model(query, gallery, direction)`:

    for _ in range(T):                                   # discriminator steps
        d = loss_fn.discriminator_loss(out, model.discriminator)   # h detached
        opt_d.zero_grad(); d["L_dis"].backward(); opt_d.step(); model.discriminator.clip_weights()
    e = loss_fn.encoder_loss(out, labels, model.discriminator)      # D's weights held fixed
    opt_g.zero_grad(); e["objective"].backward(); opt_g.step()

encoder_loss evaluates D with detached copies of its parameters (θ̂_D in Eq. 10), so it never
leaves gradients on the discriminator. With adversarial=False the discriminator terms are 0
and `loss_fn.uses_discriminator` is False (skip the D steps).

Ablations: Table VII = the `metric` / `adversarial` switches; Table VIII = adversarial_kind
(see adversarial.py for which setting is the paper's "WGAN" row); Table IX = metric_kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from avtrain.losses.adversarial import ADVERSARIAL_KINDS, generator_adversarial_loss, modality_loss
from avtrain.losses.metric import METRIC_LOSSES

# (λ, β, γ) per task: the implementation details (Sec. IV) set (1, 3, 2) for matching and
# retrieval; the parameter-analysis paragraph (Fig. 9) says (1, 2, 3) - pass beta/gamma to
# try it. Verification has a one-item gallery, so no metric loss: (0, 0, 2).
TASK_DEFAULTS = {
    "matching": (1.0, 3.0, 2.0),
    "retrieval": (1.0, 3.0, 2.0),
    "verification": (0.0, 0.0, 2.0),
}


@dataclass
class LossConfig:
    task: str = "matching"
    lambda_margin: float | None = None  # λ of Eq. 5; None -> TASK_DEFAULTS
    beta: float | None = None  # weight of L_metric; None -> TASK_DEFAULTS
    gamma: float | None = None  # weight of L_cls; None -> TASK_DEFAULTS
    metric: bool = True  # Table VII switch: False drops L_metric
    adversarial: bool = True  # Table VII switch: False drops L_dis and the D steps
    metric_kind: str = "lifted"  # lifted | triplet | ranked_list (Table IX)
    adversarial_kind: str = "gan"  # gan | lsgan | wgan (Table VIII; see adversarial.py)
    lifted_squared: bool = True  # paper squares max(0, J); the reference does not
    # "tuple_sum": Eq. 3 literally, per-item terms summed over each tuple's k+1 items and
    # averaged over tuples; "mean": averaged over all items. Ignored by wgan.
    dis_reduction: str = "tuple_sum"
    triplet_margin: float = 1.0
    rll_alpha: float = 1.2  # ranked list: negatives pushed beyond α
    rll_margin: float = 0.4  # ranked list: positives pulled inside α - m
    rll_temperature: float = 10.0  # ranked list: negative weights exp(T (α - d))
    rll_negative_weight: float = 1.0

    def __post_init__(self):
        if self.task not in TASK_DEFAULTS:
            raise ValueError(f"task must be one of {tuple(TASK_DEFAULTS)}, got {self.task!r}")
        lam, beta, gamma = TASK_DEFAULTS[self.task]
        self.lambda_margin = lam if self.lambda_margin is None else self.lambda_margin
        self.beta = beta if self.beta is None else self.beta
        self.gamma = gamma if self.gamma is None else self.gamma
        if self.metric_kind not in METRIC_LOSSES:
            raise ValueError(f"metric_kind must be one of {tuple(METRIC_LOSSES)}, got {self.metric_kind!r}")
        if self.adversarial_kind not in ADVERSARIAL_KINDS:
            raise ValueError(
                f"adversarial_kind must be one of {ADVERSARIAL_KINDS}, got {self.adversarial_kind!r}"
            )
        if self.dis_reduction not in ("tuple_sum", "mean"):
            raise ValueError(f"dis_reduction must be 'tuple_sum' or 'mean', got {self.dis_reduction!r}")


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """L_cls, Eqs. 6-8: cross-entropy of the task head. Matching/retrieval: labels are the
    positive's gallery index (B,) over logits (B, k); verification: 1 = same identity."""
    per_tuple = F.cross_entropy(logits, labels, reduction="none")
    return {"per_tuple": per_tuple, "loss": per_tuple.mean()}


def split_gallery(h_gallery: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, k, D), positive index (B,) -> positive h1 (B, D), negatives (B, k-1, D) in order."""
    B, k, D = h_gallery.shape
    is_positive = F.one_hot(labels, k).bool()  # (B, k)
    h_pos = h_gallery[is_positive].view(B, D)
    h_neg = h_gallery[~is_positive].view(B, k - 1, D)
    return h_pos, h_neg


def split_modalities(out: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Model output -> (h_audio (N_a, D), h_face (N_v, D)), every h of the batch."""
    h_query, h_gallery = out["h_query"], out["h_gallery"].flatten(0, 1)
    if out["direction"] == "a2v":
        return h_query, h_gallery
    return h_gallery, h_query


class AMLLoss:
    """Computes every AML term from the model's output dict (see the module docstring)."""

    def __init__(self, cfg: LossConfig | None = None):
        self.cfg = cfg or LossConfig()

    @property
    def uses_discriminator(self) -> bool:
        return self.cfg.adversarial

    def metric_loss(self, out: dict, labels: torch.Tensor) -> dict:
        """L_metric on (query, positive, negatives). Zero for verification (no negatives;
        its labels say same/different, not which gallery item is the positive)."""
        cfg = self.cfg
        if cfg.task == "verification":
            return {"loss": out["h_query"].sum() * 0.0}
        h_pos, h_neg = split_gallery(out["h_gallery"], labels)
        if cfg.metric_kind == "lifted":
            return METRIC_LOSSES["lifted"](
                out["h_query"], h_pos, h_neg, cfg.lambda_margin, cfg.lifted_squared
            )
        if cfg.metric_kind == "triplet":
            return METRIC_LOSSES["triplet"](out["h_query"], h_pos, h_neg, cfg.triplet_margin)
        return METRIC_LOSSES["ranked_list"](
            out["h_query"],
            h_pos,
            h_neg,
            cfg.rll_alpha,
            cfg.rll_margin,
            cfg.rll_temperature,
            cfg.rll_negative_weight,
        )

    def _num_tuples(self, out: dict) -> int | None:
        return out["h_query"].shape[0] if self.cfg.dis_reduction == "tuple_sum" else None

    def discriminator_loss(self, out: dict, discriminator: nn.Module) -> dict:
        """L_dis for the discriminator step: h detached, so only D receives gradients."""
        h_audio, h_face = split_modalities(out)
        if not self.cfg.adversarial:
            return {"L_dis": h_audio.new_zeros(())}
        dis = modality_loss(
            discriminator(h_audio.detach()),
            discriminator(h_face.detach()),
            self.cfg.adversarial_kind,
            self._num_tuples(out),
        )
        return {"L_dis": dis["loss"], "audio": dis["audio"], "face": dis["face"]}

    def encoder_loss(self, out: dict, labels: torch.Tensor, discriminator: nn.Module | None = None) -> dict:
        """Terms for the encoders/generator/head step.

        L_metric, L_cls, L_total = β L_metric + γ L_cls, L_dis (D fixed, gradients reach h),
        L_adv (the generator-side adversarial term: -L_dis for gan/wgan, flipped-target least
        squares for lsgan) and objective = L_total + L_adv (= L_total - L_dis for gan/wgan).
        Switched-off terms are exact zeros.
        """
        cfg = self.cfg
        cls = task_loss(out["logits"], labels)
        use_metric = cfg.metric and cfg.beta != 0.0 and cfg.task != "verification"
        metric = self.metric_loss(out, labels) if use_metric else {"loss": cls["loss"] * 0.0}
        L_total = cfg.beta * metric["loss"] + cfg.gamma * cls["loss"]

        zero = L_total * 0.0
        L_dis, L_adv = zero, zero
        if cfg.adversarial:
            if discriminator is None:
                raise ValueError("adversarial=True needs the discriminator")
            frozen = {name: p.detach() for name, p in discriminator.named_parameters()}
            h_audio, h_face = split_modalities(out)
            d_audio = functional_call(discriminator, frozen, (h_audio,))
            d_face = functional_call(discriminator, frozen, (h_face,))
            n = self._num_tuples(out)
            L_dis = modality_loss(d_audio, d_face, cfg.adversarial_kind, n)["loss"]
            L_adv = generator_adversarial_loss(d_audio, d_face, cfg.adversarial_kind, n)["loss"]
        return {
            "L_metric": metric["loss"],
            "L_cls": cls["loss"],
            "L_total": L_total,
            "L_dis": L_dis,
            "L_adv": L_adv,
            "objective": L_total + L_adv,
            "metric_terms": metric,
            "cls_terms": cls,
        }
