"""Plain helpers shared by several test modules (pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avdata.io import sha256_file


def tar_hashes(root: Path) -> dict[str, str]:
    """sha256 of every .tar below root, keyed by its path relative to root: what byte-identity
    tests compare between builds."""
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*.tar"))}


def box_iou(a, b) -> float:
    """IoU of two [x1, y1, x2, y2] boxes (torchvision's)."""
    import torch
    from torchvision.ops import box_iou as tv_box_iou

    return float(
        tv_box_iou(
            torch.as_tensor(np.array([a], dtype=np.float64)), torch.as_tensor(np.array([b], dtype=np.float64))
        )[0, 0]
    )
