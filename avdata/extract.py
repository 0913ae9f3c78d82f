"""Extractors: one media row in, model-ready samples (or one reject reason) out.

A sample is what lands in a shard: a key (no dots), the modality ("audio" or
"face"), the array, and JSON-able metadata. Extractors never raise on bad input:
they return the samples they could make and the rejects they met, each reject a
one-line reason naming the file, so one bad file never costs the good work around it.

Videos feed both modalities: the audio track is extracted like a wav (audio
shards), frames sampled at ``video_fps`` are aligned like photos (face shards).
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from dataclasses import dataclass, field, fields

import numpy as np

from avdata.errors import AvmatchError, InputError
from avdata.io import sha256_text


class ExtractConfigError(AvmatchError, ValueError):
    """An extract setting that is unknown, of the wrong type or out of range (one line naming
    the key). Also a ValueError, as the dataclass's own checks were."""


# Allowed values of each ExtractConfig setting, and why where it is not obvious. The face search
# is bounded by min_face_fraction (MTCNN's first pyramid level has a shorter side of ~12 px /
# min_face_fraction, whatever the image size): on a 39 MP PNG, 0.05 costs 0.3 s and +50 MB, 0.02
# 1-4 s and +0.5-0.9 GB, 0 (plain MTCNN down to 20 px) 40-90 s and +7-10 GB (docs/security.md).
_RANGES = {
    "windows": (lambda v: v >= 1, ">= 1"),
    "face_margin": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "detect_max_side": (lambda v: 64 <= v <= 4096, "in [64, 4096]"),
    "min_face_fraction": (
        lambda v: 0.05 <= v < 1,
        "in [0.05, 1) (a smaller face search costs GBs per image)",
    ),
    "min_face_prob": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "video_fps": (lambda v: 0 < v <= 120, "in (0, 120]"),
    "max_frames_per_video": (lambda v: 1 <= v <= 100, "in [1, 100] (frames of a video are held in memory)"),
    "jpeg_quality": (lambda v: 1 <= v <= 100, "in [1, 100]"),
}


@dataclass(frozen=True)
class ExtractConfig:
    """Settings that change extracted arrays; recorded in every manifest. Checked when made
    (types and the ranges of ``_RANGES``): a bad value is one line (:class:`ExtractConfigError`)."""

    windows: int = 1  # max 125-frame spectrogram windows per clip
    face_margin: float = 0.2  # margin around the MTCNN box, fraction of box size
    detect_max_side: int = 640  # images are downscaled to this before detection
    min_face_fraction: float = 0.125  # smallest face searched, fraction of the shorter side
    min_face_prob: float = 0.9  # MTCNN probability below this is "no face"
    video_fps: float = 1.0  # frames per second sampled from videos
    max_frames_per_video: int = 8  # cap on aligned frames per video
    jpeg_quality: int = 95  # quality of the aligned-face JPEG in shards

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            if f.type == "int" and is_int:
                value = int(value)
            elif (
                f.type == "float"
                and (is_int or isinstance(value, numbers.Real))
                and not isinstance(value, bool)
            ):
                value = float(value)
                if not math.isfinite(value):
                    raise ExtractConfigError(f"extract.{f.name}: expected a finite number, got {value!r}")
            else:
                what = "an integer" if f.type == "int" else "a number"
                raise ExtractConfigError(f"extract.{f.name}: expected {what}, got {value!r}")
            ok, allowed = _RANGES[f.name]
            if not ok(value):
                raise ExtractConfigError(f"extract.{f.name}: must be {allowed}, got {value!r}")
            object.__setattr__(self, f.name, value)

    @classmethod
    def from_dict(cls, d) -> ExtractConfig:
        """From a mapping read from a file (an export's config.json): known keys only, each
        checked as when made; missing keys keep their defaults."""
        if not isinstance(d, dict):
            raise ExtractConfigError(f"extract: expected a mapping of settings, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        for key in d:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(known)}"
                raise ExtractConfigError(f"extract: unknown setting {key!r}{hint}")
        return cls(**d)


FACE_BATCH_ROWS = 64  # face rows per MTCNN batch on the batched (CUDA) path
DECODE_THREADS = 4  # threads decoding images / videos and cutting crops for that path


@dataclass
class Sample:
    key: str
    modality: str  # "audio" | "face"
    array: np.ndarray
    meta: dict  # goes into the shard (hashed): only values that are exact on every CPU
    # Face detection floats (box, probability, faces found): CPU kernels move them in the last
    # bits, so they go to the shard's detections sidecar, which manifests do not fingerprint.
    detection: dict | None = None


@dataclass
class Extracted:
    samples: list[Sample] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)  # {"path", "reason", ...}


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_PLAIN_DIR = re.compile(r"^[A-Za-z0-9_-]+$")
_PLAIN_FILE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9]+$")


def sample_key(vox_id: str, rel_path: str, suffix: str = "") -> str:
    """A key unique within the corpus and free of dots (webdataset splits keys at dots):
    the vox id, then the path below the identity folder with the extension kept (a
    clip's wav and its mp4 must not collide), '/' -> '__'.

    A plain path (only ``[A-Za-z0-9_-]`` and the extension's dot) keeps that readable
    key. Any other path has its unsafe characters replaced by '-' and, because that
    replacement can map two names onto one (``clip 1.wav`` / ``clip-1.wav``), a
    ``__x`` + 16 hex digits of the sha256 of the true path appended. Such a key never
    equals a plain one: a plain key's last ``__`` part holds the '-' of its extension.
    The few collisions left among plain paths (``yt__a/b.wav`` / ``yt/a__b.wav``) are
    found by :func:`duplicate_keys` and the later file is rejected."""
    parts = rel_path.split("/")
    below = parts[1:] if len(parts) > 1 else parts  # drop the identity folder
    base = _UNSAFE.sub("-", "__".join([vox_id, *below]))
    plain = (
        _PLAIN_DIR.match(vox_id)
        and all(_PLAIN_DIR.match(p) for p in below[:-1])
        and _PLAIN_FILE.match(below[-1])
    )
    if not plain:
        base += "__x" + sha256_text("/".join([vox_id, *below]))[:16]
    return base + suffix


def duplicate_keys(rows) -> dict[int, int]:
    """Rows whose sample key is already taken by an earlier row: {later index: earlier index}.
    ``rows``: (vox_id, rel_path) pairs in their fixed (sorted) order."""
    first: dict[str, int] = {}
    dups = {}
    for i, (vox_id, rel_path) in enumerate(rows):
        key = sample_key(vox_id, rel_path)
        if key in first:
            dups[i] = first[key]
        else:
            first[key] = i
    return dups


def _base_meta(row: dict) -> dict:
    meta = {
        "name": row["name"],
        "vox_id": row["vox_id"],
        "source": row["rel_path"],
        "source_id": row["source_id"],
        "source_modality": row["modality"],
    }
    if row.get("language"):  # a corpus whose files carry a language (MAV-Celeb, a CSV's column)
        meta["language"] = row["language"]
    return meta


class Extractor:
    """Holds the (lazily built) MTCNN so a worker process builds it once."""

    def __init__(
        self,
        config: ExtractConfig,
        device: str = "cpu",
        torch_threads: int | None = None,
        batch_faces: bool | None = None,
    ):
        self.config = config
        self.device = device
        self.torch_threads = torch_threads
        # The batched face path (many images per MTCNN call, letterboxed, CPU threads decoding
        # ahead) is the CUDA path; on CPU the per-image path is as fast and stays the reference.
        self.batch_faces = str(device).startswith("cuda") if batch_faces is None else batch_faces
        self._aligner = None

    @property
    def aligner(self):
        if self._aligner is None:
            import torch

            from avdata.faces import FaceAligner

            if self.torch_threads:
                # Set here, not at start-up, so audio-only workers never import torch.
                torch.set_num_threads(self.torch_threads)

            c = self.config
            self._aligner = FaceAligner(
                margin=c.face_margin,
                detect_max_side=c.detect_max_side,
                min_prob=c.min_face_prob,
                device=self.device,
                min_face_fraction=c.min_face_fraction,
            )
        return self._aligner

    def extract(self, row: dict, modality: str) -> Extracted:
        """Samples of ``modality`` from one media row (a dict of the ingest table's columns)."""
        try:
            if modality == "audio":
                return self._audio(row)
            if modality == "face":
                return self._video_faces(row) if row["modality"] == "video" else self._photo_face(row)
            raise ValueError(f"unknown output modality {modality!r}")
        except InputError as exc:
            return Extracted(rejects=[{"path": row["path"], "reason": exc.reason, "modality": modality}])

    def extract_rows(self, rows: list[dict], modality: str):
        """``extract`` for each row, in order (a generator). Face rows on the batched path go
        through MTCNN FACE_BATCH_ROWS rows at a time, while threads decode the next rows."""
        if modality != "face" or not self.batch_faces:
            for row in rows:
                yield self.extract(row, modality)
            return
        from concurrent.futures import ThreadPoolExecutor

        chunks = [rows[i : i + FACE_BATCH_ROWS] for i in range(0, len(rows), FACE_BATCH_ROWS)]
        with ThreadPoolExecutor(DECODE_THREADS) as pool:

            def submit(chunk):
                return [pool.submit(self._decode_faces, row) for row in chunk]

            pending = [submit(chunk) for chunk in chunks[:2]]  # two chunks decoding ahead of MTCNN
            for n in range(len(chunks)):
                decoded = [future.result() for future in pending.pop(0)]
                if n + 2 < len(chunks):
                    pending.append(submit(chunks[n + 2]))
                yield from self._align_decoded(decoded, pool.map)

    def _decode_faces(self, row) -> tuple[dict, list, Extracted]:
        """(row, [(image, suffix, extra meta)], rejects so far) for one face row, on a CPU thread."""
        from PIL import Image

        from avdata.faces import load_image
        from avdata.media import decode_video_frames

        out = Extracted()
        try:
            if row["modality"] != "video":
                return row, [(load_image(row["path"]), "", {})], out
            c = self.config
            frames = decode_video_frames(row["path"], fps=c.video_fps, max_frames=c.max_frames_per_video)
        except InputError as exc:
            out.rejects.append({"path": row["path"], "reason": exc.reason, "modality": "face"})
            return row, [], out
        if not frames:
            out.rejects.append({"path": row["path"], "reason": "no video frames decoded", "modality": "face"})
        items = [
            (Image.fromarray(f), f"_f{i}", {"frame": i, "time_s": round(i / self.config.video_fps, 3)})
            for i, f in enumerate(frames)
        ]
        return row, items, out

    def _align_decoded(self, decoded, crop_map):
        images = [image for _, items, _ in decoded for image, _, _ in items]
        sources = [row["path"] for row, items, _ in decoded for _ in items]
        results = iter(self.aligner.align_batch(images, sources, letterbox=True, crop_map=crop_map))
        for row, items, out in decoded:
            samples, rejects = [], []
            for (_, suffix, extra), result in zip(items, results):
                if isinstance(result, InputError):
                    reason = f"frame {extra['frame']}: {result.reason}" if "frame" in extra else result.reason
                    rejects.append({"path": row["path"], "reason": reason, "modality": "face"})
                else:
                    samples.append(self._sample_from_crop(row, result, suffix, extra))
            # the per-image path's order: frame rejects, then a "no frames" reject
            yield Extracted(samples=samples, rejects=rejects + out.rejects)

    def _audio(self, row) -> Extracted:
        from avdata.audio import audio_features

        windows = audio_features(row["path"], max_windows=self.config.windows)
        out = Extracted()
        for w, spec in enumerate(windows):
            meta = _base_meta(row) | {"window": w, "frames": [w * spec.shape[1], (w + 1) * spec.shape[1]]}
            out.samples.append(
                Sample(sample_key(row["vox_id"], row["rel_path"], f"_w{w}"), "audio", spec, meta)
            )
        return out

    def _face_sample(self, row, img, suffix: str, extra: dict) -> Sample:
        return self._sample_from_crop(row, self.aligner.align(img, source=row["path"]), suffix, extra)

    def _sample_from_crop(self, row, crop, suffix: str, extra: dict) -> Sample:
        key = sample_key(row["vox_id"], row["rel_path"], suffix)
        detection = {
            "key": key,
            "box": [float(v) for v in crop.box],
            "prob": float(crop.prob),
            "n_faces": int(crop.n_faces),
        }
        meta = _base_meta(row) | extra | {"crop": [int(v) for v in crop.crop]}
        return Sample(key, "face", crop.face, meta, detection)

    def _photo_face(self, row) -> Extracted:
        from avdata.faces import load_image

        img = load_image(row["path"])
        return Extracted(samples=[self._face_sample(row, img, "", {})])

    def _video_faces(self, row) -> Extracted:
        from PIL import Image

        from avdata.media import decode_video_frames

        c = self.config
        frames = decode_video_frames(row["path"], fps=c.video_fps, max_frames=c.max_frames_per_video)
        out = Extracted()
        for i, frame in enumerate(frames):
            try:
                out.samples.append(
                    self._face_sample(
                        row,
                        Image.fromarray(frame),
                        f"_f{i}",
                        {"frame": i, "time_s": round(i / c.video_fps, 3)},
                    )
                )
            except InputError as exc:
                out.rejects.append(
                    {"path": row["path"], "reason": f"frame {i}: {exc.reason}", "modality": "face"}
                )
        if not frames:
            out.rejects.append({"path": row["path"], "reason": "no video frames decoded", "modality": "face"})
        return out
