"""MTCNN detection for a batch of images of *different* sizes, with facenet-pytorch's networks.

Adapted from ``detect_face`` in facenet-pytorch 2.5.3 (facenet_pytorch/models/utils/detect_face.py,
MIT licence, Copyright (c) 2019 Timothy Esler), whose helpers it reuses. Two things differ from it:

* Batches of images of different sizes. facenet-pytorch batches only images of one size, and
  letterboxing images onto a canvas before its ``detect_face`` changes the answer: its pyramid
  levels would be resampled from the canvas (other pooling bins), it would add the canvas's
  coarser levels, and boxes crossing an image's right or bottom edge would be cut at the
  canvas's edge instead of the image's. Here each image is resampled at its own size, takes
  part only in its own pyramid levels, keeps only first-stage windows that lie on its own map,
  has its boxes clipped to its own size, and goes through non-maximum suppression alone (see
  `_nms_each`). So a batch gives the boxes each image gets alone.
* Fewer, larger operations, for the CPU's sake (docs/benchmarks.md, "Face path"). facenet's
  fixed cost per image is many small calls: one area resampling per pyramid level and per
  stage-2/3 crop, one PNet call, box generation and NMS per level. Here every resampling reads
  one summed-area table (`_integral`; `_area_resample` is bit-identical to facenet's
  ``imresample``), all pyramid levels go through PNet in one call on a mosaic
  (`_first_stage`), and the candidates keep facenet's order. The mosaic's convolutions
  round differently from the per-level ones, so boxes agree with facenet's ``detect_face`` to
  about 1e-4 px (the same boxes, the same count), not bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from facenet_pytorch.models.utils.detect_face import (
    batched_nms,
    batched_nms_numpy,
    bbreg,
    fixed_batch_process,
    rerec,
)

__all__ = ["detect_faces"]


def _pnet_map_side(side: int) -> int:
    """PNet's output length for an input length: conv 3, max-pool 2/2 (ceil), conv 3, conv 3."""
    return math.ceil((side - 2) / 2) - 4


def _clip(boxes: torch.Tensor, widths: np.ndarray, heights: np.ndarray):
    """facenet-pytorch's ``pad`` with each box's own image size."""
    boxes = boxes.trunc().int().cpu().numpy()
    x, y, ex, ey = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    x[x < 1] = 1
    y[y < 1] = 1
    ex = np.minimum(ex, widths)
    ey = np.minimum(ey, heights)
    return y, ey, x, ex


def _integral(board: torch.Tensor) -> torch.Tensor:
    """Summed-area table of a uint8 (n, H, W, C) batch: (n, H+1, W+1, C) with a zero first row
    and column. The pixels are whole numbers, so every sum is exact: int32 while 255 * H * W
    fits (any image up to 2,900 px square), int64 above (a large image with no detection cap)."""
    _, height, width, _ = board.shape
    dtype = torch.int32 if 255 * height * width < 2**31 else torch.int64
    table = board.to(dtype).cumsum(1, dtype=dtype).cumsum(2, dtype=dtype)
    return torch.nn.functional.pad(table, (0, 0, 1, 0, 1, 0))


def _area_bins(start: torch.Tensor, length: torch.Tensor, side: int):
    """First and one-past-last input index of each of `side` output bins of each crop: torch's
    adaptive-pool bins, floor(i * length / side) to ceil((i + 1) * length / side)."""
    i = torch.arange(side, device=start.device)
    first = start[:, None] + (i[None, :] * length[:, None]) // side
    end = start[:, None] + ((i[None, :] + 1) * length[:, None] + side - 1) // side
    return first, end


def _area_resample(table: torch.Tensor, image_inds, top, bottom, left, right, out_h: int, out_w: int):
    """facenet's ``imresample`` (area interpolation) of every region [top:bottom, left:right] of
    its image to out_h x out_w, all at once from the summed-area table: bit-identical to
    ``interpolate(mode="area")`` (exact integer bin sums, then the same two float32 divisions,
    by the bin's height and then its width, as torch's adaptive average pool). One call replaces
    a resampling call per crop (the largest share of stages 2-3 on the CPU) and pyramid levels
    cost their output's size, not a pass over the whole image each. Returns (k, C, out_h, out_w)."""
    _, rows, cols, channels = table.shape
    first_row, end_row = _area_bins(top, bottom - top, out_h)
    first_col, end_col = _area_bins(left, right - left, out_w)
    base = (image_inds * (rows * cols))[:, None, None]
    row0, row1 = (first_row * cols)[:, :, None] + base, (end_row * cols)[:, :, None] + base
    col0, col1 = first_col[:, None, :], end_col[:, None, :]
    # one gather for the four corners (index_select is ~3x faster than advanced indexing here)
    corners = torch.stack([row1 + col1, row0 + col1, row1 + col0, row0 + col0]).reshape(-1)
    a, b, c, d = torch.index_select(table.reshape(-1, channels), 0, corners).reshape(4, -1, channels)
    sums = a - b - c + d
    heights = (end_row - first_row)[:, :, None].expand(-1, -1, out_w).reshape(-1, 1)
    widths = (end_col - first_col)[:, None, :].expand(-1, out_h, -1).reshape(-1, 1)
    means = sums.to(torch.float32) / heights.to(torch.float32) / widths.to(torch.float32)
    return means.reshape(len(top), out_h, out_w, channels).permute(0, 3, 1, 2)


def _crops(table, boxes, image_inds, widths, heights, side: int):
    """facenet-pytorch's stage 2/3 input: each box clipped to its own image (``pad``), resampled
    to side x side, normalised. Boxes with nothing left after clipping are dropped, as facenet does."""
    inds = image_inds.cpu().numpy()
    y, ey, x, ex = _clip(boxes, widths[inds], heights[inds])
    valid = (ey > y - 1) & (ex > x - 1)
    as_tensor = lambda values: torch.as_tensor(values[valid], dtype=torch.int64, device=table.device)  # noqa: E731
    data = _area_resample(
        table, as_tensor(inds), as_tensor(y - 1), as_tensor(ey), as_tensor(x - 1), as_tensor(ex), side, side
    )
    return (data - 127.5) * 0.0078125


def _nms_each(
    nms, boxes: torch.Tensor, scores: torch.Tensor, image_inds: torch.Tensor, *args
) -> torch.Tensor:
    """facenet-pytorch's batched NMS run image by image. Batched, it lets images interact: its
    offsets (max coordinate + 1) assume coordinates >= 0, and its score sorts are not stable, so
    a tie between two boxes of one image (ONet's scores saturate near 1) can fall the other way
    when other images' boxes are in the array. Image by image, each image's boxes arrive in the
    order they have when it is alone, so it keeps what it keeps alone."""
    if boxes.numel() == 0 or bool((image_inds == image_inds[0]).all()):
        return nms(boxes, scores, image_inds, *args)
    keep = []
    for i in torch.unique(image_inds).tolist():
        mine = torch.nonzero(image_inds == i).flatten()
        keep.append(mine[nms(boxes[mine], scores[mine], image_inds[mine], *args)])
    return torch.cat(keep)


def _refine(net, side: int, score_output: int, threshold: float, boxes, image_inds, table, widths, heights):
    """Stage 2 or 3 of facenet's ``detect_face``: the net on side x side crops of the boxes;
    returns the boxes whose face score passes the threshold as [x1, y1, x2, y2, score], their
    image indices and their box offsets (the net's first output)."""
    out = fixed_batch_process(_crops(table, boxes, image_inds, widths, heights, side), net)
    score = out[score_output][:, 1]
    passed = score > threshold
    return (
        torch.cat((boxes[passed, :4], score[passed].unsqueeze(1)), dim=1),
        image_inds[passed],
        out[0][passed],
    )


def detect_faces(
    images: list[np.ndarray],
    min_face: float,
    pnet,
    rnet,
    onet,
    thresholds,
    factor: float,
    device,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Boxes (n, 4) and probabilities (n,) of the faces of each uint8 HxWx3 image, images of
    any sizes. Boxes are in each image's own pixel coordinates, largest first.

    The batch's tensors are as large as its largest image: an image's answer does not depend
    on them (a fixed 640 px canvas under ~400 px detection copies made the first stage several
    times the work).
    """
    n = len(images)
    widths = np.array([im.shape[1] for im in images])
    heights = np.array([im.shape[0] for im in images])
    width, height = int(widths.max()), int(heights.max())
    board = torch.zeros((n, height, width, 3), dtype=torch.uint8)
    for i, image in enumerate(images):
        board[i, : heights[i], : widths[i]] = torch.from_numpy(np.array(image, dtype=np.uint8))
    model_dtype = next(pnet.parameters()).dtype
    # every resampling below (pyramid levels, stage 2-3 crops) reads this summed-area table
    table = _integral(board.to(device))

    def resample(i: int, h: int, w: int) -> torch.Tensor:  # image i, whole, to h x w: (1, C, h, w)
        whole = [torch.tensor([v], device=table.device) for v in (i, 0, heights[i], 0, widths[i])]
        return _area_resample(table, *whole, h, w).type(model_dtype)

    # pyramid: plain MTCNN's scales; image i takes part in the levels its own shorter side allows
    m = 12.0 / min_face
    scales, depth = [], []
    for i in range(n):
        minl, scale, d = min(heights[i], widths[i]) * m, m, 0
        while minl >= 12:
            if d == len(scales):
                scales.append(scale)
            scale, minl, d = scale * factor, minl * factor, d + 1
        depth.append(d)

    if not scales:
        return [(np.zeros((0, 4)), np.zeros(0)) for _ in range(n)]
    boxes, image_inds = _first_stage(
        table, widths, heights, (height, width), scales, depth, pnet, thresholds[0], model_dtype
    )
    pick = _nms_each(batched_nms, boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]

    regw = boxes[:, 2] - boxes[:, 0]
    regh = boxes[:, 3] - boxes[:, 1]
    qq1 = boxes[:, 0] + boxes[:, 5] * regw
    qq2 = boxes[:, 1] + boxes[:, 6] * regh
    qq3 = boxes[:, 2] + boxes[:, 7] * regw
    qq4 = boxes[:, 3] + boxes[:, 8] * regh
    boxes = rerec(torch.stack([qq1, qq2, qq3, qq4, boxes[:, 4]]).permute(1, 0))

    crops = (table, widths, heights)
    if len(boxes) > 0:  # second stage: RNet on 24x24 crops
        boxes, image_inds, mv = _refine(rnet, 24, 1, thresholds[1], boxes, image_inds, *crops)
        pick = _nms_each(batched_nms, boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
        boxes = rerec(bbreg(boxes, mv))

    if len(boxes) > 0:  # third stage: ONet on 48x48 crops
        boxes, image_inds, mv = _refine(onet, 48, 2, thresholds[2], boxes, image_inds, *crops)
        boxes = bbreg(boxes, mv)
        pick = _nms_each(batched_nms_numpy, boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
        boxes, image_inds = boxes[pick], image_inds[pick]

    boxes = boxes.cpu().numpy().astype(np.float64)
    image_inds = image_inds.cpu().numpy()
    results = []
    for i in range(n):
        mine = boxes[image_inds == i]
        order = np.argsort(-(mine[:, 2] - mine[:, 0]) * (mine[:, 3] - mine[:, 1]), kind="stable")
        results.append((mine[order, :4], mine[order, 4]))
    return results


# -- first stage: every pyramid level of every image through PNet in one call ----------------------

_MASKED = -1.0e4  # PReLU-1 output outside a level: below any real one (inputs are in [-1, 1])


def _mosaic_layout(level_sizes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Top-left (y, x) of each level's slot in one mosaic, and the mosaic's (height, width).

    Level 0 sits at the origin; each smaller level goes top-down into the first column that
    still has room for it (columns as tall as level 0, as wide as their first level): about
    21% more pixels than the levels hold, against 25% with one column after another. Slots
    start at even offsets so that PNet's 2x2/2 pooling windows fall on a level where they fall
    when the level is alone."""
    even = [(h + h % 2, w + w % 2) for h, w in level_sizes]
    mosaic_h = even[0][0]
    columns: list[list[int]] = []  # [x, width, used height]
    positions = []
    for h, w in even:
        column = next((c for c in columns if c[2] + h <= mosaic_h and w <= c[1]), None)
        if column is None:
            column = [sum(c[1] for c in columns), w, 0]
            columns.append(column)
        positions.append((column[2], column[0]))
        column[2] += h
    return positions, (mosaic_h, sum(c[1] for c in columns))


def _pnet_mosaic(pnet, x: torch.Tensor, conv1_valid: torch.Tensor):
    """facenet-pytorch's PNet.forward on a mosaic. Conv1 outputs whose 3x3 window is not inside
    one level are set far below any real value before the ceil-mode max-pool, so that a level's
    last, partial pooling window takes the max of its own pixels only, as when it is alone; the
    remaining layers read, at each level's valid map positions, only that level's pooled cells."""
    net = getattr(pnet, "net", pnet)  # FaceAligner wraps the stages (channels-last)
    x = x.contiguous(memory_format=torch.channels_last)
    x = net.prelu1(net.conv1(x)).masked_fill(~conv1_valid, _MASKED)
    x = net.prelu3(net.conv3(net.prelu2(net.conv2(net.pool1(x)))))
    return net.conv4_2(x), net.softmax4_1(net.conv4_1(x))


def _first_stage(table, widths, heights, batch_hw, scales, depth, pnet, threshold, model_dtype):
    """PNet over every image's pyramid at once: facenet-pytorch's per-level loop (resample, PNet,
    generateBoundingBox, NMS 0.5 per level) on one mosaic per image, with the candidates in
    facenet's order (level, then image, then each level's NMS order). Returns (boxes (k, 9),
    image_inds (k,)) as facenet's ``boxes[scale_picks], image_inds[scale_picks]``."""
    n, device = len(widths), table.device
    height, width = batch_hw
    slots = [(int(height * scale + 1), int(width * scale + 1)) for scale in scales]
    positions, (mosaic_h, mosaic_w) = _mosaic_layout(slots)
    _, rows, cols, channels = table.shape
    map_h, map_w = _pnet_map_side(mosaic_h), _pnet_map_side(mosaic_w)

    sources, targets, bin_h, bin_w = [], [], [], []
    conv1_valid = np.zeros((n, 1, mosaic_h - 2, mosaic_w - 2), dtype=bool)
    level_map = np.full((n, map_h, map_w), -1, dtype=np.int64)
    for i in range(n):
        for level in range(depth[i]):
            scale, (top, left) = scales[level], positions[level]
            h, w = int(heights[i] * scale + 1), int(widths[i] * scale + 1)
            # torch's area-resampling bins (see _area_bins), whole image i -> h x w
            r, c = np.arange(h), np.arange(w)
            r0, r1 = (r * heights[i]) // h, ((r + 1) * heights[i] + h - 1) // h
            c0, c1 = (c * widths[i]) // w, ((c + 1) * widths[i] + w - 1) // w
            base = i * rows * cols
            sources.append(
                np.stack(
                    [
                        base + r1[:, None] * cols + c1[None, :],
                        base + r0[:, None] * cols + c1[None, :],
                        base + r1[:, None] * cols + c0[None, :],
                        base + r0[:, None] * cols + c0[None, :],
                    ]
                ).reshape(4, -1)
            )
            targets.append(((i * mosaic_h + top + r[:, None]) * mosaic_w + left + c[None, :]).reshape(-1))
            bin_h.append(np.broadcast_to((r1 - r0)[:, None], (h, w)).reshape(-1))
            bin_w.append(np.broadcast_to((c1 - c0)[None, :], (h, w)).reshape(-1))
            conv1_valid[i, 0, top : top + h - 2, left : left + w - 2] = True
            level_map[
                i, top // 2 : top // 2 + _pnet_map_side(h), left // 2 : left // 2 + _pnet_map_side(w)
            ] = level
    as_long = lambda parts: torch.from_numpy(np.concatenate(parts, axis=-1)).to(device)  # noqa: E731
    corners = torch.index_select(table.reshape(-1, channels), 0, as_long(sources).reshape(-1))
    a, b, c, d = corners.reshape(4, -1, channels)
    means = (a - b - c + d).to(torch.float32) / as_long(bin_h)[:, None].to(torch.float32)
    means = means / as_long(bin_w)[:, None].to(torch.float32)
    mosaic = torch.zeros((n * mosaic_h * mosaic_w, channels), dtype=torch.float32, device=device)
    mosaic[as_long(targets)] = means
    mosaic = mosaic.reshape(n, mosaic_h, mosaic_w, channels).permute(0, 3, 1, 2).type(model_dtype)

    reg, probs = _pnet_mosaic(pnet, (mosaic - 127.5) * 0.0078125, torch.from_numpy(conv1_valid).to(device))
    level_map = torch.from_numpy(level_map).to(device)
    face = probs[:, 1]
    image_inds, y, x = torch.nonzero((face >= threshold) & (level_map >= 0), as_tuple=True)
    levels = level_map[image_inds, y, x]
    # facenet's order: level by level, then image, then row-major within the level's map
    order = torch.sort(levels * n + image_inds, stable=True).indices
    image_inds, y, x, levels = image_inds[order], y[order], x[order], levels[order]
    offsets = torch.tensor(positions, dtype=torch.int64, device=device) // 2  # (level, [y, x])
    level_scales = torch.tensor(scales, dtype=torch.float32, device=device)[levels][:, None]
    bb = torch.stack([x - offsets[levels, 1], y - offsets[levels, 0]], dim=1).type(reg.dtype)
    q1 = ((2 * bb + 1) / level_scales).floor()
    q2 = ((2 * bb + 12) / level_scales).floor()
    boxes = torch.cat([q1, q2, face[image_inds, y, x].unsqueeze(1), reg[image_inds, :, y, x]], dim=1)
    # NMS 0.5 within each level of each image (boxes are whole numbers, so batched_nms's
    # per-level coordinate offsets are exact); kept in facenet's order, as above
    keep = []
    for i in range(n):
        mine = torch.nonzero(image_inds == i).flatten()
        if len(mine):
            keep.append(mine[batched_nms(boxes[mine, :4], boxes[mine, 4], levels[mine], 0.5)])
    if not keep:
        return boxes[:0], image_inds[:0]
    keep = torch.cat(keep)
    keep = keep[torch.sort(levels[keep] * n + image_inds[keep], stable=True).indices]
    return boxes[keep], image_inds[keep]
