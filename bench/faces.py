"""Benchmark of the preprocessing hot paths on the real media in ../shared/data.

1. Faces, one torch thread: (a) plain facenet-pytorch MTCNN on the full-resolution photo
   (detect, pick the most probable face, extract; what ``MTCNN(selection_method=
   'probability')(img)`` does) against (b) avdata.faces.FaceAligner (detection on a copy
   downscaled to 640 px, crop from the original). Reports ms/image for both, their ratio and
   the IoU of the two chosen boxes (same detections -> IoU near 1).
2. Spectrograms: avdata.audio (numpy + scipy.fft + soxr) against the same recipe written with
   librosa, ms per clip and ratio, both from the same decoded 16 kHz waveform and from the
   wav file (load included).

Every timing is the median of --repeats runs. Prints a table; writes a JSON file only with
--out. Usage: python bench/faces.py [--repeats 5] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def bench_faces(data: Path, repeats: int) -> list[dict]:
    from facenet_pytorch import MTCNN

    from avdata.faces import FaceAligner, box_iou, load_image

    face_dir = data / "media" / "faces" / "facenet_pytorch"
    photos = sorted(face_dir.glob("test_images/*/1.jpg")) + [face_dir / "multiface.jpg"]
    plain = MTCNN(image_size=224, selection_method="probability", post_process=False)
    aligner = FaceAligner()

    def plain_align(image):
        boxes, probs, points = plain.detect(image, landmarks=True)
        boxes, probs, points = plain.select_boxes(boxes, probs, points, image, method="probability")
        face = plain.extract(image, boxes, None)
        return np.asarray(boxes[0], dtype=float), face

    rows = []
    for photo in photos:
        image = load_image(photo)
        plain_align(image), aligner.align(image)  # warm-up (allocator, first-call costs)
        plain_box, _ = plain_align(image)
        crop = aligner.align(image, source=photo)
        rows.append(
            {
                "image": str(photo.relative_to(face_dir / "test_images"))
                if photo.parent != face_dir
                else photo.name,
                "size": f"{image.size[0]}x{image.size[1]}",
                "megapixels": round(image.size[0] * image.size[1] / 1e6, 2),
                "plain_ms": median_ms(lambda: plain_align(image), repeats),
                "aligner_ms": median_ms(lambda: aligner.align(image), repeats),
                "iou": box_iou(plain_box, crop.box),
            }
        )
    return rows


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
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement (median)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    if not (args.data / "media").is_dir():
        parser.error(f"no media under {args.data}")
    torch.set_num_threads(1)

    faces = bench_faces(args.data, args.repeats)
    print(f"faces, 1 torch thread, median of {args.repeats} (ms/image)")
    print(f"{'image':<28}{'size':>11}{'plain MTCNN':>13}{'FaceAligner':>13}{'ratio':>8}{'IoU':>7}")
    for row in faces:
        print(
            f"{row['image']:<28}{row['size']:>11}{row['plain_ms']:>13.1f}{row['aligner_ms']:>13.1f}"
            f"{row['plain_ms'] / row['aligner_ms']:>8.2f}{row['iou']:>7.3f}"
        )
    plain_mean = statistics.mean(row["plain_ms"] for row in faces)
    aligner_mean = statistics.mean(row["aligner_ms"] for row in faces)
    print(
        f"{'mean':<39}{plain_mean:>13.1f}{aligner_mean:>13.1f}{plain_mean / aligner_mean:>8.2f}"
        f"{min(row['iou'] for row in faces):>7.3f} (min)"
    )

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
    means = {key: statistics.mean(row[key] for row in spectra)
             for key in ("numpy_ms", "librosa_ms", "numpy_file_ms", "librosa_file_ms")}
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
            "faces_mean_ms": {"plain": plain_mean, "aligner": aligner_mean},
            "spectrograms": spectra,
            "spectrogram_mean_ms": means,
        }
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
