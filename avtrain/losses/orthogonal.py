"""Orthogonal projection loss (OPL; Ranasinghe, Naseer, Hayat, Khan and Khan, ICCV 2021), as FOP
(Saeed et al., ICASSP 2022) uses it on its fused face-voice embeddings.

On L2-normalised features of a batch with class labels, OPL pulls same-class features to cosine
1 and pushes different-class ones towards orthogonality (cosine 0):

    s = mean cos(f_i, f_j) over pairs i != j of the same class
    d = mean |cos(f_i, f_j)| over pairs of different classes
    L = (1 - s) + gamma * d

Every pair is counted in both orders (the mean is over the off-diagonal of the cosine matrix).
gamma = 0.7 and the absolute value on d are FOP's code's (OPL's own code: gamma 0.5, no abs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def orthogonal_projection_loss(features: torch.Tensor, classes: torch.Tensor, gamma: float = 0.7) -> dict:
    """features (N, D) (normalised here), classes (N,) class indices; -1 = unknown (such a row
    takes part in no pair). Returns cos (N, N), same_pair / different_pair (N, N) bool masks,
    positive_mean (s), negative_mean (d) and loss. A batch without same-class pairs has s = 0
    (and without different-class pairs d = 0), as in FOP's code (0 / (0 + 1e-6))."""
    f = F.normalize(features, p=2, dim=1)
    cos = f @ f.t()
    known = classes >= 0
    both = known.unsqueeze(0) & known.unsqueeze(1)
    same = classes.unsqueeze(0) == classes.unsqueeze(1)
    off_diagonal = ~torch.eye(len(classes), dtype=torch.bool, device=classes.device)
    same_pair = same & both & off_diagonal
    different_pair = ~same & both
    positive_mean = (cos * same_pair).sum() / same_pair.sum().clamp_min(1)
    negative_mean = (cos.abs() * different_pair).sum() / different_pair.sum().clamp_min(1)
    loss = (1.0 - positive_mean) + gamma * negative_mean
    return {
        "cos": cos,
        "same_pair": same_pair,
        "different_pair": different_pair,
        "positive_mean": positive_mean,
        "negative_mean": negative_mean,
        "loss": loss,
    }
