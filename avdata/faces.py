"""Face images -> one aligned 224x224 RGB face crop, with facenet-pytorch's MTCNN.

Why it is built this way:

* Cost. MTCNN's cost grows with the pixel count (its image pyramid starts at 0.6x the input
  for a 20 px minimum face), so a 3-4 MP photo takes ~0.6-0.8 s on one CPU core. Faces in VoxCeleb /
  VGGFace media are large, so detection runs on a copy whose longest side is at most
  `detect_max_side` (640 px) and the boxes are mapped back to the original's coordinates.
  The crop is then cut from the *original* full-resolution image, so no detail is lost:
  a 2 MP photo costs about what a 640 px one does. The trade-off: faces smaller than about
  20 px in the downscaled copy (20 * longest_side / 640 px in the original) are not found.
* Crop geometry. The crop is a square centred on the detected box, with side
  ``max(box width, box height) * (1 + margin)``; `margin` is a *fraction of the box size*
  (0.2 = 10% of the box on each side of its longer dimension). A square crop keeps the face's
  aspect ratio when it is resized to 224x224. Where the square runs past the image border the
  missing part is black (zero) padding, rather than shifting the window, so the face stays
  centred. The crop is resized with PIL's bilinear filter, which widens its support when
  shrinking (i.e. it antialiases like an area filter).
* Choice among several faces: the most confident detection; ties go to the largest box.
  Detections below `min_prob` do not count.
* Threads. This module never calls ``torch.set_num_threads``; the caller decides. For
  throughput run one process per core with ``torch.set_num_threads(1)`` in each worker:
  MTCNN's small convolutions gain little from intra-op threads, and extra threads
  oversubscribe the cores as soon as anything else runs (on a 2-core machine with one other
  busy process, 2 threads were 4-25x slower per image than 1).

Bad files (missing, empty, truncated, not an image) and images without a usable face raise
:class:`avdata.errors.InputError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from avdata.errors import InputError, check_readable_file

__all__ = ["FaceCrop", "FaceAligner", "load_image", "box_iou"]


def load_image(path: str | Path) -> Image.Image:
    """Open an image file fully decoded, upright (EXIF orientation applied) and in RGB.

    Grayscale, CMYK, palette, 16-bit and alpha images are converted to 8-bit RGB (alpha is
    composited over white). The pixels are decoded here (``img.load()``) so that a truncated
    file fails in this function with a clear reason, not later inside the detector.
    """
    path = Path(path)
    check_readable_file(path)
    try:
        with Image.open(path) as opened:
            opened.load()
            image = _upright(opened)
    except UnidentifiedImageError:
        raise InputError(path, "not a recognised image file") from None
    except Image.DecompressionBombError as error:
        raise InputError(path, f"image too large ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        reason = str(error) or type(error).__name__
        if "truncated" in reason:
            reason = f"truncated image ({reason})"
        raise InputError(path, f"unreadable image: {reason}") from None
    return _to_rgb(image)


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF Orientation tag; a malformed EXIF block is ignored, not fatal."""
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - Pillow raises many types on broken EXIF
        upright = None
    return image.copy() if upright is None or upright is image else upright


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        pixels = np.asarray(image, dtype=np.uint16)
        image = Image.fromarray((pixels >> 8).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class FaceCrop:
    """One aligned face.

    face: uint8 (image_size, image_size, 3) RGB crop.
    box: [x1, y1, x2, y2] of the detection in the original image's pixel coordinates
        (it may extend past the image border, as MTCNN boxes do).
    prob: MTCNN's face probability for that box.
    n_faces: how many faces at or above the aligner's min_prob the image held.
    """

    face: np.ndarray
    box: list[float]
    prob: float
    n_faces: int


def box_iou(a, b) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes."""
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    inter_w = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    inter_h = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = inter_w * inter_h
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


class FaceAligner:
    """Detect faces with MTCNN on a downscaled copy, crop the best one from the original.

    image_size: side of the square output crop (224 for the AML visual branch).
    margin: extra context as a fraction of the detected box's longer side (see module doc).
    detect_max_side: images whose longest side exceeds this are downscaled to it for
        detection only (None: always detect at full resolution).
    min_prob: detections below this MTCNN probability are ignored.
    device: torch device for MTCNN.
    """

    def __init__(
        self,
        image_size: int = 224,
        margin: float = 0.2,
        detect_max_side: int | None = 640,
        min_prob: float = 0.9,
        device: str | torch.device = "cpu",
    ):
        from facenet_pytorch import MTCNN  # imported here: importing it is slowish

        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.image_size = int(image_size)
        self.margin = float(margin)
        self.detect_max_side = detect_max_side
        self.min_prob = float(min_prob)
        self.device = torch.device(device)
        self.mtcnn = MTCNN(keep_all=True, post_process=False, device=self.device)

    def config(self) -> dict:
        """The settings that determine the crops (for reproducibility manifests)."""
        return {
            "detector": "facenet-pytorch MTCNN (min_face_size 20, thresholds 0.6/0.7/0.7)",
            "image_size": self.image_size,
            "margin": self.margin,
            "margin_unit": "fraction of the box's longer side; square crop, black padding",
            "detect_max_side": self.detect_max_side,
            "min_prob": self.min_prob,
            "selection": "max probability, ties -> largest box",
            "resize": "PIL bilinear (antialiased)",
        }

    # -- detection ---------------------------------------------------------------------------

    def _detection_copy(self, img: Image.Image) -> tuple[Image.Image, float, float]:
        """The image MTCNN sees and the (x, y) factors mapping its coordinates back."""
        width, height = img.size
        longest = max(width, height)
        if self.detect_max_side is None or longest <= self.detect_max_side:
            return img, 1.0, 1.0
        scale = self.detect_max_side / longest
        small_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = img.resize(small_size, Image.BILINEAR, reducing_gap=3.0)
        return small, width / small_size[0], height / small_size[1]

    @staticmethod
    def _to_original(boxes, probs, sx: float, sy: float) -> tuple[np.ndarray, np.ndarray]:
        """MTCNN output for one image -> float arrays (n, 4) in original coordinates, (n,)."""
        if boxes is None or len(boxes) == 0:
            return np.zeros((0, 4)), np.zeros(0)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * [sx, sy, sx, sy]
        return boxes, np.asarray(probs, dtype=np.float64).reshape(-1)

    def _choose(self, img, boxes: np.ndarray, probs: np.ndarray, source) -> FaceCrop:
        if len(boxes) == 0:
            raise InputError(source, "no face detected")
        keep = probs >= self.min_prob
        if not keep.any():
            best = f"best face probability {probs.max():.2f} < {self.min_prob}"
            raise InputError(source, f"no face detected ({best})")
        boxes, probs = boxes[keep], probs[keep]
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        best = int(np.lexsort((-areas, -probs))[0])  # highest prob, then largest area
        box = boxes[best]
        return FaceCrop(
            face=self._crop(img, box),
            box=[float(v) for v in box],
            prob=float(probs[best]),
            n_faces=int(len(probs)),
        )

    def _crop(self, img: Image.Image, box: np.ndarray) -> np.ndarray:
        x1, y1, x2, y2 = box
        side = max(x2 - x1, y2 - y1) * (1.0 + self.margin)
        cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        left, top = round(cx - side / 2.0), round(cy - side / 2.0)
        size = max(1, round(side))
        # PIL fills the part of a crop outside the image with zeros.
        square = img.crop((left, top, left + size, top + size))
        face = square.resize((self.image_size, self.image_size), Image.BILINEAR)
        return np.asarray(face, dtype=np.uint8).copy()

    # -- public ------------------------------------------------------------------------------

    def detect(self, img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """All MTCNN detections of an image, whatever their probability.

        Returns (boxes, probs): float arrays of shape (n, 4) as [x1, y1, x2, y2] in the
        original image's coordinates (they may extend past its border, as MTCNN's do) and (n,).
        """
        small, sx, sy = self._detection_copy(_to_rgb(img))
        boxes, probs = self.mtcnn.detect(small)
        return self._to_original(boxes, probs, sx, sy)

    def align(self, img: Image.Image, source: str | Path = "<image>") -> FaceCrop:
        """The best face of one RGB image; raises InputError(source, ...) if there is none."""
        img = _to_rgb(img)
        boxes, probs = self.detect(img)
        return self._choose(img, boxes, probs, source)

    def align_path(self, path: str | Path) -> FaceCrop:
        """load_image + align, errors naming the file."""
        return self.align(load_image(path), source=path)

    def align_batch(
        self, images: list[Image.Image], sources: list[str | Path] | None = None
    ) -> list[FaceCrop | InputError]:
        """Align many images, batching MTCNN over those whose detection copies share a size.

        Video frames all have one size, so a clip's frames go through MTCNN as one batch.
        Returns one entry per image, in order: a FaceCrop, or the InputError for an image
        without a usable face (so that one bad frame does not lose the others).
        """
        if sources is None:
            sources = [f"<image {i}>" for i in range(len(images))]
        if len(sources) != len(images):
            raise ValueError("sources must have one entry per image")
        prepared = []
        groups: dict[tuple[int, int], list[int]] = {}
        for index, img in enumerate(images):
            img = _to_rgb(img)
            small, sx, sy = self._detection_copy(img)
            prepared.append((img, small, sx, sy))
            groups.setdefault(small.size, []).append(index)
        results: list[FaceCrop | InputError | None] = [None] * len(images)
        for indices in groups.values():
            batch_boxes, batch_probs = self.mtcnn.detect([prepared[i][1] for i in indices])
            for i, boxes, probs in zip(indices, batch_boxes, batch_probs):
                img, _, sx, sy = prepared[i]
                boxes, probs = self._to_original(boxes, probs, sx, sy)
                try:
                    results[i] = self._choose(img, boxes, probs, sources[i])
                except InputError as error:
                    results[i] = error
        return results  # type: ignore[return-value]
