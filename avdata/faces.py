"""Face images -> one aligned 224x224 RGB face crop, with facenet-pytorch's MTCNN.

Why it is built this way:

* Cost. facenet-pytorch's MTCNN searches faces down to 20 px with an image pyramid whose
  first level is 0.6x the input, so its cost grows with the pixel count and with how small a
  face it looks for. Faces in VGGFace / VoxCeleb media are large, so the aligner looks only for
  faces of at least `min_face_fraction` of the image's shorter side: it skips the first levels
  of plain MTCNN's pyramid (the smallest face size is moved up plain MTCNN's own ladder,
  20 / 0.709^k px, so the levels kept are exactly plain MTCNN's levels and the chosen box stays
  close to plain MTCNN's), and it runs on a copy downscaled (PIL, antialiased) until that
  smallest face is `detect_min_face` (default `DETECT_MIN_FACE`, 40) px (`bench/faces.py
  --sweep`: with a 32 px copy the worst IoU to plain MTCNN's box on the web portraits fell to
  0.90, with 24 px to 0.86, for no gain in speed; docs/benchmarks.md). The copy's longest side
  is also capped at
  `detect_max_side`. Boxes are mapped back to the original's coordinates and the crop is cut
  from the *original* full-resolution image, so no detail is lost. The three networks run on
  channels-last tensors: the same arithmetic (boxes agree to 1e-4 px) but torch's CPU max-pool
  with ``ceil_mode`` is several times faster in that layout. Once the search is that small,
  what is left is MTCNN's fixed cost per image (a resampling call per pyramid level and per
  candidate box, a PNet call per level), so detection runs through avdata.mtcnn_batch, which
  does each of those in one call (summed-area table, pyramid mosaic) and finds facenet's boxes
  to ~1e-4 px. Measured shares: docs/benchmarks.md, "Face path".
* Batches. `align_batch` batches MTCNN over images of one detection-copy size (video frames).
  With ``letterbox=True`` (the CUDA path) every copy, at most `detect_max_side` square, is
  pasted at the top-left of one batch tensor as large as the largest copy, so any mix of image
  sizes forms one batch; detection
  (avdata.mtcnn_batch) resamples, searches and clips each image within its own extent, so the
  chosen faces match the per-image path (IoU >= 0.99, tests/test_faces_speed.py).
* Memory. `load_image` refuses images above `MAX_IMAGE_PIXELS` from their header, before
  decoding, except JPEGs, which are decoded reduced (DCT scaling, ``Image.draft``) by the
  smallest power of two that brings them under the cap.
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

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from avdata.errors import AvmatchError, InputError, check_readable_file

__all__ = [
    "MAX_IMAGE_PIXELS",
    "DeviceError",
    "FaceAligner",
    "FaceCrop",
    "load_image",
    "resolve_device",
]

# Largest image decoded (pixels): 40 MP is 120 MB as 8-bit RGB, several times any VGGFace or
# VoxCeleb image; a 12000x12000 PNG (144 MP, 432 MB decoded) is refused from its header.
MAX_IMAGE_PIXELS = 40_000_000
MTCNN_MIN_FACE = 20.0  # facenet-pytorch's default min_face_size: plain MTCNN's finest level
MTCNN_FACTOR = 0.709  # facenet-pytorch's pyramid factor, kept so our levels are plain's levels
MAX_BATCH = 64  # images per MTCNN call: a 640x640 canvas is 4.9 MB as float32, 64 of them 315 MB
DETECT_MIN_FACE = 40.0  # px: the smallest searched face in the detection copy


def load_image(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image file fully decoded, upright (EXIF orientation applied) and in RGB.

    Grayscale, CMYK, palette, 16-bit and alpha images are converted to 8-bit RGB (alpha is
    composited over white). The pixels are decoded here (``img.load()``) so that a truncated
    file fails in this function with a clear reason, not later inside the detector.
    Images above ``max_pixels`` are refused from their header (``Image.open`` reads only the
    header), before any decoding, except JPEGs, which are decoded reduced by 2, 4 or 8
    (``Image.draft``: the decoder's DCT scaling, so the full image is never in memory).
    """
    path = Path(path)
    check_readable_file(path)
    try:
        with warnings.catch_warnings():
            # PIL warns above 89 MP at open; our own cap decides, below, before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                _cap_pixels(opened, path, max_pixels)
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


def _cap_pixels(opened: Image.Image, path: Path, max_pixels: int) -> None:
    """Before decoding: draft-reduce a JPEG above the cap, refuse any other image above it."""
    width, height = opened.size
    if width * height <= max_pixels:
        return
    if opened.format == "JPEG":
        for reduce in (2, 4, 8):
            if (-(-width // reduce)) * (-(-height // reduce)) <= max_pixels:
                opened.draft(opened.mode, (-(-width // reduce), -(-height // reduce)))
                if opened.size[0] * opened.size[1] <= max_pixels:
                    return
    raise InputError(
        path,
        f"image too large: {width}x{height} = {width * height / 1e6:.1f} MP is above the "
        f"{max_pixels / 1e6:g} MP decoding cap" + (" even at 1/8 scale" if opened.format == "JPEG" else ""),
    )


class DeviceError(AvmatchError, ValueError):
    """A requested torch device that this machine does not have."""


def resolve_device(device: str, worker_index: int = 0) -> str:
    """'cpu', 'cuda', 'cuda:N' or 'auto' -> the torch device string this worker uses.

    'auto' is CUDA where a GPU is present, else CPU. With n GPUs, worker i uses cuda:(i mod n).
    Asking for 'cuda' where there is none is an error, not a silent fall-back to CPU.
    """
    if device not in ("cpu", "cuda", "auto") and not device.startswith("cuda:"):
        raise DeviceError(f"unknown device {device!r} (cpu, cuda, cuda:N or auto)")
    if device == "cpu":
        return "cpu"
    if device == "auto" and not cuda_present():
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: no CUDA device is available (torch {torch.__version__})")
    if device.startswith("cuda:"):
        return device
    return f"cuda:{worker_index % torch.cuda.device_count()}"


def cuda_present() -> bool:
    """Whether a CUDA device can be used, without importing torch where no NVIDIA driver is
    present (so CPU-only builds keep forking workers before torch is loaded)."""
    if not Path("/dev/nvidiactl").exists() and not Path("/proc/driver/nvidia").exists():
        return False
    import torch

    return torch.cuda.is_available()


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
    crop: [left, top, side] of the square cut from the original image, integer pixels (it
        may extend past the image border; PIL pads with black). This, not the float box, is
        what decides the face's pixels.
    box: [x1, y1, x2, y2] of the detection in the original image's pixel coordinates
        (it may extend past the image border, as MTCNN boxes do).
    prob: MTCNN's face probability for that box.
    n_faces: how many faces at or above the aligner's min_prob the image held.
    """

    face: np.ndarray
    crop: list[int]
    box: list[float]
    prob: float
    n_faces: int


class _ChannelsLast(torch.nn.Module):
    """Runs an MTCNN stage on a channels-last copy of its input: the same convolutions and
    pools, but torch's CPU max_pool2d(ceil_mode=True) is 5-10x faster in that layout."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        return self.net(x.contiguous(memory_format=torch.channels_last))


@dataclass(frozen=True)
class _DetectionPlan:
    size: tuple[int, int]  # detection copy (width, height)
    min_face: float  # MTCNN min_face_size in the copy's pixels
    sx: float  # original x per copy x
    sy: float


class FaceAligner:
    """Detect faces with MTCNN on a reduced copy, crop the best one from the original.

    image_size: side of the square output crop (224 for the AML visual branch).
    margin: extra context as a fraction of the detected box's longer side (see module doc).
    min_face_fraction: smallest face searched, as a fraction of the image's shorter side
        (rounded down onto plain MTCNN's pyramid ladder, never below its 20 px); 0 searches
        down to 20 px like plain MTCNN.
    detect_max_side: the detection copy's longest side is at most this (None: no cap); needed
        for ``letterbox=True`` batches, whose copies all fit one square of that side.
    detect_min_face: the smallest searched face's size in the detection copy (px).
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
        min_face_fraction: float = 0.125,
        detect_min_face: float = DETECT_MIN_FACE,
    ):
        from facenet_pytorch import MTCNN  # imported here: importing it is slowish

        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if not 0 <= min_face_fraction < 1:
            raise ValueError(f"min_face_fraction must be in [0, 1), got {min_face_fraction}")
        self.image_size = int(image_size)
        self.margin = float(margin)
        self.detect_max_side = detect_max_side
        self.min_prob = float(min_prob)
        self.min_face_fraction = float(min_face_fraction)
        self.detect_min_face = float(detect_min_face)
        self.device = torch.device(device)
        self.mtcnn = MTCNN(
            keep_all=True,
            post_process=False,
            device=self.device,
            min_face_size=MTCNN_MIN_FACE,
            factor=MTCNN_FACTOR,
        )
        for stage in ("pnet", "rnet", "onet"):
            setattr(self.mtcnn, stage, _ChannelsLast(getattr(self.mtcnn, stage)))

    def config(self) -> dict:
        """The settings that determine the crops (for reproducibility manifests)."""
        return {
            "detector": "facenet-pytorch MTCNN (thresholds 0.6/0.7/0.7, factor 0.709)",
            "image_size": self.image_size,
            "margin": self.margin,
            "margin_unit": "fraction of the box's longer side; square crop, black padding",
            "min_face_fraction": self.min_face_fraction,
            "detect_min_face": self.detect_min_face,
            "detect_max_side": self.detect_max_side,
            "min_prob": self.min_prob,
            "selection": "max probability, ties -> largest box",
            "resize": "PIL bilinear (antialiased)",
        }

    # -- detection ---------------------------------------------------------------------------

    def min_face(self, size: tuple[int, int]) -> float:
        """Smallest face searched in an image of this size (original pixels): the largest
        rung 20 / 0.709^k of plain MTCNN's ladder not above min_face_fraction * shorter side."""
        floor = self.min_face_fraction * min(size)
        face = MTCNN_MIN_FACE
        while face / MTCNN_FACTOR <= floor:
            face /= MTCNN_FACTOR
        return face

    def _plan(self, size: tuple[int, int]) -> _DetectionPlan:
        width, height = size
        face = self.min_face(size)
        scale = min(1.0, self.detect_min_face / face)
        if self.detect_max_side is not None:
            scale = min(scale, self.detect_max_side / max(width, height))
        if scale >= 1.0:
            return _DetectionPlan((width, height), face, 1.0, 1.0)
        small = (max(1, round(width * scale)), max(1, round(height * scale)))
        sx, sy = width / small[0], height / small[1]
        return _DetectionPlan(small, max(face / max(sx, sy), 1.0), sx, sy)

    def _detection_copy(self, img: Image.Image) -> tuple[Image.Image, _DetectionPlan]:
        """The image MTCNN sees and how it maps back to the original."""
        plan = self._plan(img.size)
        if plan.size == img.size:
            return img, plan
        return img.resize(plan.size, Image.BILINEAR, reducing_gap=3.0), plan

    def _run_mtcnn(self, images: list[Image.Image], min_face: float) -> list:
        """[(boxes, probs)] per image, in its own coordinates (see avdata.mtcnn_batch)."""
        from avdata.mtcnn_batch import detect_faces

        m = self.mtcnn
        with torch.no_grad():
            return detect_faces(
                [np.asarray(image) for image in images],
                min_face,
                m.pnet,
                m.rnet,
                m.onet,
                m.thresholds,
                m.factor,
                self.device,
            )

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
        crop = self.crop_square(box)
        return FaceCrop(
            face=self._cut(img, crop),
            crop=crop,
            box=[float(v) for v in box],
            prob=float(probs[best]),
            n_faces=int(len(probs)),
        )

    def crop_square(self, box) -> list[int]:
        """[left, top, side] in integer pixels: the square around ``box`` with the margin."""
        left, top, size = self.crop_square_float(box)
        return [round(left), round(top), max(1, round(size))]

    def crop_square_float(self, box) -> tuple[float, float, float]:
        """The values :meth:`crop_square` rounds (bench/isa_margins.py measures how near a
        rounding boundary they come)."""
        x1, y1, x2, y2 = (float(v) for v in box)
        side = max(x2 - x1, y2 - y1) * (1.0 + self.margin)
        cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        return cx - side / 2.0, cy - side / 2.0, side

    def _cut(self, img: Image.Image, crop: list[int]) -> np.ndarray:
        left, top, size = crop
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
        small, plan = self._detection_copy(_to_rgb(img))
        boxes, probs = self._run_mtcnn([small], plan.min_face)[0]
        return self._to_original(boxes, probs, plan.sx, plan.sy)

    def align(self, img: Image.Image, source: str | Path = "<image>") -> FaceCrop:
        """The best face of one RGB image; raises InputError(source, ...) if there is none."""
        img = _to_rgb(img)
        boxes, probs = self.detect(img)
        return self._choose(img, boxes, probs, source)

    def align_path(self, path: str | Path) -> FaceCrop:
        """load_image + align, errors naming the file."""
        return self.align(load_image(path), source=path)

    def align_batch(
        self,
        images: list[Image.Image],
        sources: list[str | Path] | None = None,
        letterbox: bool = False,
        crop_map=map,
    ) -> list[FaceCrop | InputError]:
        """Align many images, running MTCNN on batches of them.

        Without ``letterbox`` a batch is the images whose detection copies share a size (a
        clip's frames). With it (the CUDA path) each copy, at most ``detect_max_side`` square,
        is pasted at the top-left of one batch tensor (avdata.mtcnn_batch), so images of any
        size share a batch; a batch still needs one searched face size, so it groups by that
        (nearly always one value: ``detect_min_face``). ``crop_map`` maps the final crops (e.g. a thread pool's
        ``map``). Returns one entry per image, in order: a FaceCrop, or the InputError for an
        image without a usable face (so that one bad image does not lose the others).
        """
        if sources is None:
            sources = [f"<image {i}>" for i in range(len(images))]
        if len(sources) != len(images):
            raise ValueError("sources must have one entry per image")
        if letterbox and self.detect_max_side is None:
            raise ValueError("letterbox batches need detect_max_side (the side every copy fits)")
        prepared = []
        groups: dict[tuple, list[int]] = {}
        for index, img in enumerate(images):
            img = _to_rgb(img)
            small, plan = self._detection_copy(img)
            prepared.append((img, small, plan))
            key = (round(plan.min_face, 6),) if letterbox else (small.size, round(plan.min_face, 6))
            groups.setdefault(key, []).append(index)
        detections: list = [None] * len(images)
        batches = [
            indices[i : i + MAX_BATCH]
            for indices in groups.values()
            for i in range(0, len(indices), MAX_BATCH)
        ]
        for indices in batches:
            copies = [prepared[i][1] for i in indices]
            found = self._run_mtcnn(copies, prepared[indices[0]][2].min_face)
            for i, (boxes, probs) in zip(indices, found):
                plan = prepared[i][2]
                detections[i] = self._to_original(boxes, probs, plan.sx, plan.sy)

        def choose(i: int):
            try:
                return self._choose(prepared[i][0], *detections[i], sources[i])
            except InputError as error:
                return error

        return list(crop_map(choose, range(len(images))))
