"""Center loss (Wen, Zhang, Li, Qiao, ECCV 2016, "A Discriminative Feature Learning Approach for
Deep Face Recognition"): pulls each embedding towards a learned center of its class.

Two parts, as in the paper:

* :func:`center_loss`, the term of the objective (Eq. 2), whose gradient reaches the
  embeddings only: the centers are held fixed in it;
* :func:`center_update`, the step of the centers themselves (Eq. 4), which is not the gradient
  of Eq. 2 (it divides by 1 + the class's count in the batch): the caller applies
  c_j <- c_j - alpha * delta_c_j, e.g. by setting it as the centers' gradient of an SGD with
  learning rate alpha.

Items whose target is -1 (outside the label space) are left out of both. Like the metric
losses, :func:`center_loss` returns its named per-item terms and the reduced ``loss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def center_loss(features: torch.Tensor, targets: torch.Tensor, centers: torch.Tensor) -> dict:
    """Per item ``center`` = 1/2 ||x_i - c_{y_i}||^2 (0 for an ignored item), ``valid`` (the
    items with a class) and ``loss`` = the mean of ``center`` over the valid items (0 when none).

    The paper's Eq. 2 sums over the mini-batch, as does its softmax loss; avmatch takes means of
    both, which keeps their ratio (lambda) and only rescales the step. features (N, D), targets
    (N,) class indices or -1, centers (C, D) (detached here: they move by center_update).
    """
    valid = targets >= 0
    assigned = centers.detach()[targets.clamp_min(0)]  # (N, D): each item's class center
    center = 0.5 * (features - assigned).pow(2).sum(1) * valid
    return {"center": center, "valid": valid, "loss": center.sum() / valid.sum().clamp_min(1)}


@torch.no_grad()
def center_update(features: torch.Tensor, targets: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """The paper's Eq. 4: delta_c_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j), n_j the batch's
    items of class j; zero for a class without items. (C, D), same dtype and device as centers.

    Sums are a one-hot matrix product rather than index_add_ (whose CUDA kernel adds in a
    nondeterministic order)."""
    valid = targets >= 0
    onehot = F.one_hot(targets[valid], centers.shape[0]).to(centers.dtype)  # (n, C)
    counts = onehot.sum(0).unsqueeze(1)  # (C, 1): n_j
    sums = onehot.t() @ features.detach()[valid].to(centers.dtype)  # (C, D): sum of x_i per class
    return (counts * centers - sums) / (1 + counts)
