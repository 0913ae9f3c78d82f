"""MTCNN detection for a batch of images of *different* sizes on one canvas.

Adapted from ``detect_face`` in facenet-pytorch 2.5.3 (facenet_pytorch/models/utils/detect_face.py,
MIT licence, Copyright (c) 2019 Timothy Esler), whose helpers it reuses. facenet-pytorch batches only
images of one size, and letterboxing images onto a canvas before its ``detect_face`` changes the
answer: its pyramid levels would be resampled from the canvas (other pooling bins), it would add the
canvas's coarser levels, and boxes crossing an image's right or bottom edge would be cut at the
canvas's edge instead of the image's. Here each image is resampled at its own size into its level
of the batch, takes part only in its own pyramid levels, keeps only first-stage windows that lie on
its own map, has its boxes clipped to its own size, and goes through non-maximum suppression
alone (see `_nms_each`). So a batch gives the boxes each image gets
alone (up to float rounding of batched convolutions), and a batch of one image gives exactly what
facenet-pytorch's ``detect_face`` gives.
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
    generateBoundingBox,
    imresample,
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


def _crops(imgs, boxes, image_inds, widths, heights, side: int):
    y, ey, x, ex = _clip(boxes, widths[image_inds.cpu().numpy()], heights[image_inds.cpu().numpy()])
    data = []
    for k in range(len(y)):
        if ey[k] > (y[k] - 1) and ex[k] > (x[k] - 1):
            crop = imgs[image_inds[k], :, (y[k] - 1) : ey[k], (x[k] - 1) : ex[k]].unsqueeze(0)
            data.append(imresample(crop, (side, side)))
    return (torch.cat(data, dim=0) - 127.5) * 0.0078125


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


def detect_faces(
    images: list[np.ndarray],
    min_face: float,
    pnet,
    rnet,
    onet,
    thresholds,
    factor: float,
    device,
    canvas: tuple[int, int] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Boxes (n, 4) and probabilities (n,) of the faces of each uint8 HxWx3 image.

    canvas: (width, height) of the batch tensor, at least every image's size (None: the largest
    width and height in the batch). Boxes are in each image's own pixel coordinates, largest first.
    """
    n = len(images)
    widths = np.array([im.shape[1] for im in images])
    heights = np.array([im.shape[0] for im in images])
    width, height = canvas if canvas is not None else (int(widths.max()), int(heights.max()))
    if (widths > width).any() or (heights > height).any():
        raise ValueError(f"canvas {width}x{height} is smaller than an image of the batch")
    board = torch.zeros((n, height, width, 3), dtype=torch.uint8)
    for i, image in enumerate(images):
        board[i, : heights[i], : widths[i]] = torch.from_numpy(np.array(image, dtype=np.uint8))
    model_dtype = next(pnet.parameters()).dtype
    # contiguous NCHW: torch's area resampling of the pyramid is ~10% faster than on facenet's
    # NHWC-strided view, with the same result
    imgs = board.to(device).permute(0, 3, 1, 2).type(model_dtype).contiguous()

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

    boxes, image_inds, scale_picks, offset = [], [], [], 0
    for level, scale in enumerate(scales):
        members = [i for i in range(n) if depth[i] > level]
        level_h, level_w = int(height * scale + 1), int(width * scale + 1)
        if n == 1 and canvas is None:
            data = imresample(imgs, (level_h, level_w))
        else:
            data = torch.zeros((n, 3, level_h, level_w), dtype=model_dtype, device=imgs.device)
            for i in members:
                h, w = int(heights[i] * scale + 1), int(widths[i] * scale + 1)
                data[i, :, :h, :w] = imresample(imgs[i : i + 1, :, : heights[i], : widths[i]], (h, w))[0]
        reg, probs = pnet((data - 127.5) * 0.0078125)
        face_probs = probs[:, 1].clone()
        for i in range(n):  # windows off image i's own map (or levels it is not in) never pass
            if i not in members:
                face_probs[i] = -1
                continue
            map_h = _pnet_map_side(int(heights[i] * scale + 1))
            map_w = _pnet_map_side(int(widths[i] * scale + 1))
            face_probs[i, max(map_h, 0) :, :] = -1
            face_probs[i, :, max(map_w, 0) :] = -1
        boxes_scale, image_inds_scale = generateBoundingBox(reg, face_probs, scale, thresholds[0])
        boxes.append(boxes_scale)
        image_inds.append(image_inds_scale)
        pick = _nms_each(batched_nms, boxes_scale[:, :4], boxes_scale[:, 4], image_inds_scale, 0.5)
        scale_picks.append(pick + offset)
        offset += boxes_scale.shape[0]

    if not scales:
        return [(np.zeros((0, 4)), np.zeros(0)) for _ in range(n)]
    boxes = torch.cat(boxes, dim=0)
    image_inds = torch.cat(image_inds, dim=0)
    scale_picks = torch.cat(scale_picks, dim=0)
    boxes, image_inds = boxes[scale_picks], image_inds[scale_picks]
    pick = _nms_each(batched_nms, boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]

    regw = boxes[:, 2] - boxes[:, 0]
    regh = boxes[:, 3] - boxes[:, 1]
    qq1 = boxes[:, 0] + boxes[:, 5] * regw
    qq2 = boxes[:, 1] + boxes[:, 6] * regh
    qq3 = boxes[:, 2] + boxes[:, 7] * regw
    qq4 = boxes[:, 3] + boxes[:, 8] * regh
    boxes = rerec(torch.stack([qq1, qq2, qq3, qq4, boxes[:, 4]]).permute(1, 0))

    if len(boxes) > 0:  # second stage: RNet on 24x24 crops
        out = fixed_batch_process(_crops(imgs, boxes, image_inds, widths, heights, 24), rnet)
        out0, score = out[0].permute(1, 0), out[1].permute(1, 0)[1, :]
        ipass = score > thresholds[1]
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds = image_inds[ipass]
        mv = out0[:, ipass].permute(1, 0)
        pick = _nms_each(batched_nms, boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
        boxes = rerec(bbreg(boxes, mv))

    if len(boxes) > 0:  # third stage: ONet on 48x48 crops
        out = fixed_batch_process(_crops(imgs, boxes, image_inds, widths, heights, 48), onet)
        out0, score = out[0].permute(1, 0), out[2].permute(1, 0)[1, :]
        ipass = score > thresholds[2]
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds = image_inds[ipass]
        mv = out0[:, ipass].permute(1, 0)
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
