"""Metric-learning losses on one AML tuple: query h0, positive h1, negatives h2..hk.

Shapes: h0 (B, D), h1 (B, D), hneg (B, k-1, D); B = M tuples in the batch.
Each loss returns a dict of NAMED per-tuple (or per-triplet) terms plus the reduced
scalar under "loss" (pytorch-metric-learning style: terms first, then one reduction), so a
trainer can log the terms and a test can check each one.

Table IX of the paper compares Lifted Struct [19] (the default) with Triplet [67] and
RankList [14]; the paper gives no hyper-parameters for the latter two, so the defaults
below are the cited papers' own (documented per function).
"""

from __future__ import annotations

import torch

# sqrt is not differentiable at 0 (d = 0 when two features coincide): clamp the squared
# distance from below so the gradient there is 0 instead of NaN. 1e-12 -> d >= 1e-6.
_MIN_SQUARED_DISTANCE = 1e-12


def euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean (not squared) distance over the last axis, broadcasting a against b."""
    return (a - b).pow(2).sum(-1).clamp_min(_MIN_SQUARED_DISTANCE).sqrt()


def lifted_structured_loss(
    h0: torch.Tensor,
    h1: torch.Tensor,
    hneg: torch.Tensor,
    margin: float = 1.0,
    squared: bool = True,
) -> dict:
    """Lifted structured loss, Eqs. (4)-(5) of the paper (after Oh Song et al. 2016).

    J_i = log( sum_j exp(λ - d(h0, hj)) + sum_q exp(λ - d(h1, hq)) ) + d(h0, h1),
    j, q running over the negatives, λ = margin.
    squared=True  (paper, Eq. 4): L = 1/(2M) sum_i max(0, J_i)^2
    squared=False (reference):    L = 1/(2M) sum_i max(0, J_i)
    The log-sum-exp is computed with torch.logsumexp (stable for large λ - d).
    Returns J (B,), hinge = max(0, J)[^2] (B,), d_pos (B,), loss.
    """
    B = h0.shape[0]
    d_pos = euclidean(h0, h1)  # (B,)
    if hneg.shape[1] == 0:  # k = 1: no negatives, log(0) = -inf, hinge 0 (and no NaN grads)
        zero = d_pos * 0.0
        return {"J": torch.full_like(d_pos, -torch.inf), "hinge": zero, "d_pos": d_pos, "loss": zero.sum()}
    d_query_neg = euclidean(h0.unsqueeze(1), hneg)  # (B, k-1)
    d_pos_neg = euclidean(h1.unsqueeze(1), hneg)  # (B, k-1)
    J = torch.logsumexp(torch.cat([margin - d_query_neg, margin - d_pos_neg], dim=1), dim=1) + d_pos
    hinge = J.clamp_min(0.0)
    if squared:
        hinge = hinge.pow(2)
    return {"J": J, "hinge": hinge, "d_pos": d_pos, "loss": hinge.sum() / (2 * B)}


def triplet_loss(h0: torch.Tensor, h1: torch.Tensor, hneg: torch.Tensor, margin: float = 1.0) -> dict:
    """Triplet loss (Schroff et al. 2015 [67]) with one triplet per negative (paper, Sec. IV-E:
    "k - 1 triplet-tuples"): t_ij = max(0, d(h0, h1) - d(h0, hj) + margin), mean over all
    B(k-1) triplets (= F.triplet_margin_loss with p=2 on the expanded triplets).

    The margin defaults to 1.0, the same as the lifted loss's λ, since the paper does not give
    one (FaceNet's 0.2 was for L2-normalised embeddings; ours live in (-1, 1)^128).
    Returns triplet (B, k-1), loss.
    """
    d_pos = euclidean(h0, h1).unsqueeze(1)  # (B, 1)
    d_neg = euclidean(h0.unsqueeze(1), hneg)  # (B, k-1)
    triplet = (d_pos - d_neg + margin).clamp_min(0.0)
    loss = triplet.mean() if triplet.numel() else triplet.sum()
    return {"triplet": triplet, "d_pos": d_pos.squeeze(1), "d_neg": d_neg, "loss": loss}


def ranked_list_loss(
    h0: torch.Tensor,
    h1: torch.Tensor,
    hneg: torch.Tensor,
    alpha: float = 1.2,
    margin: float = 0.4,
    temperature: float = 10.0,
    negative_weight: float = 1.0,
) -> dict:
    """Ranked list loss (Wang et al., CVPR 2019 [14]), anchor = the query h0.

    Positives are pulled inside the boundary α - m, negatives pushed beyond α:
      L_P,i = max(0, d(h0, h1) - (α - m))                  (one positive per tuple)
      L_N,i = sum_j w_ij max(0, α - d(h0, hj)) / sum_j w_ij, over negatives with d < α,
              w_ij = exp(T (α - d(h0, hj)))                  (harder negatives weigh more)
      L_i   = L_P,i + negative_weight * L_N,i;  loss = mean_i L_i.
    As in the RLL paper the weights w are constants in the gradient (detached). Defaults
    α = 1.2, m = 0.4, T = 10, balance 1 are the RLL paper's; they were tuned for
    L2-normalised embeddings (distances in [0, 2]), so expect to retune α, m for AML's
    unnormalised 128-d tanh features. The anchor is the query only, mirroring the triplet
    construction (the lifted loss additionally uses h1 as an anchor).
    Returns positive (B,), negative (B,), loss.
    """
    d_pos = euclidean(h0, h1)
    positive = (d_pos - (alpha - margin)).clamp_min(0.0)
    d_neg = euclidean(h0.unsqueeze(1), hneg)  # (B, k-1)
    violation = alpha - d_neg  # > 0 for negatives inside the boundary
    active = violation > 0
    # softmax over the active negatives = w / sum w, stable for large T (α - d)
    logw = (temperature * violation).detach().masked_fill(~active, -torch.inf)
    weights = torch.softmax(logw, dim=1).nan_to_num(0.0)  # all-inactive rows: NaN -> 0
    negative = (weights * violation.clamp_min(0.0)).sum(1)
    per_tuple = positive + negative_weight * negative
    return {"positive": positive, "negative": negative, "weights": weights, "loss": per_tuple.mean()}


METRIC_LOSSES = {"lifted": lifted_structured_loss, "triplet": triplet_loss, "ranked_list": ranked_list_loss}
