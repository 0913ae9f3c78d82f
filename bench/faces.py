"""Benchmark of the preprocessing hot paths on the real media in ../shared/data.

1. Faces, one torch thread, on two groups of real photos:
   * "web portraits": 22 JPEGs of 250-800 px, the size of typical VGGFace images, made at run
     time in a temporary directory (never committed) from the real photos in
     media/faces/facenet_pytorch: the 4 single-person photos resized with PIL (Lanczos) to a
     longest side of 256, 400, 560 and 800 px, and 6 single-face crops of multiface.jpg (a
     square twice the face's height) resized to 300 px;
   * "big photos": the 4 single-person photos (1.1-4.1 MP) and multiface.jpg (1200x630).
   Per image, from the file (decoding included): (a) plain facenet-pytorch MTCNN on the full
   image (load_image, detect, pick the most probable face, extract: what ``MTCNN(
   selection_method='probability')(img)`` does) against the levers one at a time and together:
   (b) the same with channels-last MTCNN stages, (c) "reduced search only": (b) + faces
   searched from min_face_fraction of the shorter side on a 40 px-per-smallest-face copy, still
   through facenet's own detect_face, (d) FaceAligner: (c) + avdata.mtcnn_batch's detection
   (one summed-area table for all resampling, all pyramid levels through PNet at once), (e) (d)
   with a smaller pyramid factor (0.6: fewer scales), (e2) (d) searching from one rung higher
   (min_face_fraction 0.125/0.709 with the copy's resolution kept: detect_min_face 40/0.709;
   its synthetic hit rate: bench/synth_faces.py --min-face-fraction 0.1763 --detect-min-face
   56.42), (f) FaceAligner.align_batch with
   letterboxing (the CUDA path's batching) run on the CPU, and (g) JPEG draft decoding of the
   detection copy (decode time only). Reports images/s, the ratio to (a) and the smallest IoU
   between each variant's chosen box and plain MTCNN's (single-face images: on multiface.jpg
   both pick one of 6 faces of probability ~0.9999, and either is right).
2. Spectrograms: avdata.audio (numpy + scipy.fft + soxr) against the same recipe written with
   librosa, ms per clip and ratio, both from the same decoded 16 kHz waveform and from the
   wav file (load included).

Every timing is a median over --repeats runs, with the variants interleaved image by image so
that load from other processes hits all of them alike. Prints tables; writes a JSON file only
with --out. Usage: python bench/faces.py [--repeats 3] [--out bench.json] [--sweep]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
WEB_SIDES = (256, 400, 560, 800)


def median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def make_web_portraits(face_dir: Path, out_dir: Path) -> list[Path]:
    """The "web portrait" group: 250-800 px JPEGs made from the real photos (see module doc)."""
    from facenet_pytorch import MTCNN
    from PIL import Image

    from avdata.faces import load_image

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for photo in sorted(face_dir.glob("test_images/*/1.jpg")):
        image = load_image(photo)
        for side in WEB_SIDES:
            small = image.copy()
            small.thumbnail((side, side), Image.LANCZOS)
            paths.append(out_dir / f"{photo.parent.name}_{side}.jpg")
            small.save(paths[-1], quality=95)
    group = load_image(face_dir / "multiface.jpg")
    boxes, _ = MTCNN().detect(group)
    for i, (x1, y1, x2, y2) in enumerate(sorted(np.asarray(boxes, dtype=float).tolist())):
        side = 2 * (y2 - y1)
        left = int(max(0, min((x1 + x2 - side) / 2, group.size[0] - side)))
        top = int(max(0, min((y1 + y2 - side) / 2, group.size[1] - side)))
        crop = group.crop((left, top, left + int(side), top + int(side))).resize((300, 300), Image.LANCZOS)
        paths.append(out_dir / f"multiface_crop{i}.jpg")
        crop.save(paths[-1], quality=95)
    return paths


def box_iou(a, b) -> float:
    """IoU of two [x1, y1, x2, y2] boxes (torchvision's)."""
    import torch
    from torchvision.ops import box_iou as tv_box_iou

    return float(
        tv_box_iou(
            torch.as_tensor(np.array([a], dtype=np.float64)), torch.as_tensor(np.array([b], dtype=np.float64))
        )[0, 0]
    )


def big_photos(face_dir: Path) -> list[Path]:
    return sorted(face_dir.glob("test_images/*/1.jpg")) + [face_dir / "multiface.jpg"]


def plain_mtcnn(**kwargs):
    """facenet-pytorch MTCNN as a user would run it: most probable face, 224 px crop."""
    from facenet_pytorch import MTCNN

    return MTCNN(image_size=224, selection_method="probability", post_process=False, **kwargs)


def plain_align(mtcnn, image):
    boxes, probs, points = mtcnn.detect(image, landmarks=True)
    boxes, probs, points = mtcnn.select_boxes(boxes, probs, points, image, method="probability")
    face = mtcnn.extract(image, boxes, None)
    return np.asarray(boxes[0], dtype=float), face


# --sweep: FaceAligner settings next to the chosen ones (min_face_fraction 0.125, a 40 px copy)
SWEEP = {
    "sweep: 32 px copy": {"detect_min_face": 32.0},
    "sweep: 24 px copy": {"detect_min_face": 24.0},
    "sweep: fraction 0.15": {"min_face_fraction": 0.15},
    "sweep: fraction 0.2": {"min_face_fraction": 0.2},
}


def facenet_stages_aligner_class():
    """FaceAligner detecting through facenet-pytorch's own ``detect_face`` (a resampling call
    per pyramid level and per candidate box, a PNet call per level) instead of
    avdata.mtcnn_batch (summed-area table, pyramid mosaic): the share of that lever."""
    from facenet_pytorch.models.utils.detect_face import detect_face

    from avdata.faces import FaceAligner

    class FacenetStagesAligner(FaceAligner):
        def _run_mtcnn(self, images, min_face):
            m, found = self.mtcnn, []
            with torch.no_grad():
                for image in images:
                    boxes, _ = detect_face(
                        np.asarray(image),
                        min_face,
                        m.pnet,
                        m.rnet,
                        m.onet,
                        m.thresholds,
                        m.factor,
                        self.device,
                    )
                    boxes = np.asarray(boxes[0], dtype=np.float64).reshape(-1, 5)
                    found.append((boxes[:, :4], boxes[:, 4]))
            return found

    return FacenetStagesAligner


def bench_face_group(paths: list[Path], repeats: int, sweep: bool = False) -> dict:
    """images/s of each variant on one group, its ratio to plain MTCNN and its worst IoU."""
    from PIL import Image

    from avdata.faces import FaceAligner, _ChannelsLast, load_image

    FacenetStagesAligner = facenet_stages_aligner_class()
    plain = plain_mtcnn()
    channels_last = plain_mtcnn()
    for stage in ("pnet", "rnet", "onet"):
        setattr(channels_last, stage, _ChannelsLast(getattr(channels_last, stage)))
    aligner = FaceAligner()
    facenet_stages = FacenetStagesAligner()
    coarse = FaceAligner()
    coarse.mtcnn.factor = 0.6
    higher = FaceAligner(min_face_fraction=0.125 / 0.709, detect_min_face=40 / 0.709)

    def draft_copy(path):
        with Image.open(path) as opened:
            plan = aligner._plan(opened.size)
            opened.draft("RGB", plan.size)
            opened.load()
            return opened.resize(plan.size, Image.BILINEAR)

    variants = {
        "plain MTCNN": lambda p: plain_align(plain, load_image(p))[0],
        "channels-last stages": lambda p: plain_align(channels_last, load_image(p))[0],
        "reduced search only": lambda p: facenet_stages.align_path(p).box,
        "FaceAligner": lambda p: aligner.align_path(p).box,
        "FaceAligner, factor 0.6": lambda p: coarse.align_path(p).box,
        "FaceAligner, one rung up": lambda p: higher.align_path(p).box,
    }
    if sweep:  # the reduced search's other settings: a smaller copy, a larger fraction
        for label, settings in SWEEP.items():
            swept = FaceAligner(**settings)
            variants[label] = lambda p, swept=swept: swept.align_path(p).box
    variants |= {
        "decode: full": lambda p: load_image(p),
        "decode: draft copy": draft_copy,
    }
    totals = {name: 0.0 for name in variants}
    worst_iou = {name: 1.0 for name in variants if not name.startswith("decode")}
    for path in paths:
        boxes = {name: run(path) for name, run in variants.items()}  # warm-up and boxes
        for name, worst in worst_iou.items():
            if path.name != "multiface.jpg":  # 6 faces of probability ~0.9999: either pick is right
                worst_iou[name] = min(worst, box_iou(boxes["plain MTCNN"], boxes[name]))
        for name, run in variants.items():
            totals[name] += median_ms(lambda run=run, path=path: run(path), repeats)
    # the CUDA path's batching (letterboxed canvas), on this CPU: the whole group as one batch
    images = [load_image(p) for p in paths]
    batched = aligner.align_batch(images, letterbox=True)
    totals["align_batch, letterboxed"] = median_ms(
        lambda: aligner.align_batch([load_image(p) for p in paths], letterbox=True), repeats
    )
    worst_iou["align_batch, letterboxed"] = min(
        box_iou(plain_align(plain, image)[0], crop.box)
        for path, image, crop in zip(paths, images, batched)
        if path.name != "multiface.jpg"
    )
    n = len(paths)
    return {
        "images": n,
        "ms_per_image": {name: total / n for name, total in totals.items()},
        "images_per_s": {name: 1000.0 * n / total for name, total in totals.items()},
        "ratio_to_plain": {
            name: totals["plain MTCNN"] / total
            for name, total in totals.items()
            if not name.startswith("decode")
        },
        "min_iou_to_plain": worst_iou,
    }


def bench_spectrograms(data: Path, repeats: int) -> list[dict]:
    import librosa

    from avdata.audio import audio_features, spectrogram
    from avdata.media import load_wav

    def librosa_from_file(path):
        y, _ = librosa.load(path, sr=22050)
        y = y - y.mean()
        y = np.append(y[0], y[1:] - 0.97 * y[:-1])
        S = np.abs(librosa.stft(y, n_fft=2048, hop_length=512))
        return librosa.amplitude_to_db(S, ref=np.max, top_db=80)[:224, :125]

    def librosa_recipe(wave, sr):
        y = librosa.resample(wave, orig_sr=sr, target_sr=22050)  # res_type soxr_hq
        y = y - y.mean()
        y = np.append(y[0], y[1:] - 0.97 * y[:-1])
        S = np.abs(librosa.stft(y, n_fft=2048, hop_length=512))
        return librosa.amplitude_to_db(S, ref=np.max, top_db=80)[:224, :125]

    rows = []
    for wav in sorted((data / "media" / "voice" / "voxceleb1_named").glob("*.wav")):
        wave, sr = load_wav(wav)
        ours, reference = spectrogram(wave, sr), librosa_recipe(wave, sr)  # warm-up
        rows.append(
            {
                "clip": wav.name,
                "seconds": round(len(wave) / sr, 2),
                "numpy_ms": median_ms(lambda: spectrogram(wave, sr), repeats),
                "librosa_ms": median_ms(lambda: librosa_recipe(wave, sr), repeats),
                "numpy_file_ms": median_ms(lambda: audio_features(wav), repeats),
                "librosa_file_ms": median_ms(lambda: librosa_from_file(wav), repeats),
                "max_abs_db_diff": float(np.abs(ours - reference).max()),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared/data directory")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument(
        "--sweep", action="store_true", help="also the reduced search's other settings (SWEEP)"
    )
    args = parser.parse_args()
    if not (args.data / "media").is_dir():
        parser.error(f"no media under {args.data}")
    torch.set_num_threads(1)

    face_dir = args.data / "media" / "faces" / "facenet_pytorch"
    faces = {}
    with tempfile.TemporaryDirectory() as tmp:
        groups = {
            "web portraits (250-800 px)": make_web_portraits(face_dir, Path(tmp)),
            "big photos (0.8-4.1 MP)": big_photos(face_dir),
        }
        for group, paths in groups.items():
            faces[group] = bench_face_group(paths, args.repeats, args.sweep)
    for group, result in faces.items():
        print(
            f"faces: {group}, {result['images']} images, 1 torch thread, median of {args.repeats}, "
            "from the file"
        )
        print(f"{'variant':<28}{'ms/image':>10}{'images/s':>10}{'ratio':>8}{'min IoU':>9}")
        for name, ms in result["ms_per_image"].items():
            ratio = result["ratio_to_plain"].get(name)
            iou = result["min_iou_to_plain"].get(name)
            print(
                f"{name:<28}{ms:>10.1f}{result['images_per_s'][name]:>10.1f}"
                f"{'' if ratio is None else f'{ratio:.2f}':>8}{'' if iou is None else f'{iou:.3f}':>9}"
            )
        print()

    spectra = bench_spectrograms(args.data, args.repeats)
    print(f"\nspectrogram 224x125, median of {args.repeats} (ms/clip; ratio = librosa / numpy)")
    print(
        f"{'':<32}{'-- from 16 kHz waveform --':>26}{'-- from wav file --':>26}\n"
        f"{'clip':<24}{'seconds':>8}{'numpy':>9}{'librosa':>9}{'ratio':>8}"
        f"{'numpy':>9}{'librosa':>9}{'ratio':>8}{'max|dB diff|':>14}"
    )
    for row in spectra:
        print(
            f"{row['clip']:<24}{row['seconds']:>8.2f}"
            f"{row['numpy_ms']:>9.2f}{row['librosa_ms']:>9.2f}"
            f"{row['librosa_ms'] / row['numpy_ms']:>8.2f}{row['numpy_file_ms']:>9.2f}"
            f"{row['librosa_file_ms']:>9.2f}{row['librosa_file_ms'] / row['numpy_file_ms']:>8.2f}"
            f"{row['max_abs_db_diff']:>14.1e}"
        )
    means = {
        key: statistics.mean(row[key] for row in spectra)
        for key in ("numpy_ms", "librosa_ms", "numpy_file_ms", "librosa_file_ms")
    }
    print(
        f"{'mean':<32}{means['numpy_ms']:>9.2f}{means['librosa_ms']:>9.2f}"
        f"{means['librosa_ms'] / means['numpy_ms']:>8.2f}{means['numpy_file_ms']:>9.2f}"
        f"{means['librosa_file_ms']:>9.2f}{means['librosa_file_ms'] / means['numpy_file_ms']:>8.2f}"
    )

    if args.out is not None:
        results = {
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "torch_threads": 1,
            "repeats": args.repeats,
            "faces": faces,
            "spectrograms": spectra,
            "spectrogram_mean_ms": means,
        }
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
