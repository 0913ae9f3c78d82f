"""MTCNN hit rate on the synthetic corpus's face photos (and video frames).

A hit is facenet-pytorch `MTCNN().detect(img)` returning a box, on every
faces/**/*.jpg of a freshly synthesised corpus (1 torch thread). The same count is made for
avdata's FaceAligner (what build-shards uses: reduced search, face probability >= 0.9).

    .venv/bin/python bench/synth_faces.py [--identities 60] [--seed 0] [--videos]
        [--min-face-fraction 0.125] [--detect-min-face 40]   (FaceAligner settings to try)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--videos", action="store_true", help="also count frames of the videos (1 fps)")
    ap.add_argument("--min-face-fraction", type=float, default=0.125, help="FaceAligner min_face_fraction")
    ap.add_argument("--detect-min-face", type=float, default=40.0, help="FaceAligner detect_min_face (px)")
    args = ap.parse_args()
    from facenet_pytorch import MTCNN
    from PIL import Image

    from avdata.errors import InputError
    from avdata.faces import FaceAligner
    from avdata.media import decode_video_frames
    from avdata.synth import synth_corpus

    torch.set_num_threads(1)
    mtcnn = MTCNN()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        synth_corpus(Path(tmp), identities=args.identities, videos=args.videos, seed=args.seed)
        synth_s = time.perf_counter() - t
        photos = sorted(Path(tmp, "faces").rglob("*.jpg"))
        hits = sum(mtcnn.detect(Image.open(p).convert("RGB"))[0] is not None for p in photos)
        aligner = FaceAligner(min_face_fraction=args.min_face_fraction, detect_min_face=args.detect_min_face)
        aligned = 0
        for p in photos:
            try:
                aligner.align_path(p)
                aligned += 1
            except InputError:
                pass
        print(
            f"synthetic corpus: {args.identities} identities, seed {args.seed}, generated in {synth_s:.1f} s"
        )
        print(f"photos: {hits}/{len(photos)} detected = {hits / len(photos):.1%} (plain MTCNN)")
        print(
            f"photos: {aligned}/{len(photos)} aligned = {aligned / len(photos):.1%} "
            f"(FaceAligner, min_face_fraction {args.min_face_fraction:g}, detect_min_face {args.detect_min_face:g})"
        )
        if args.videos:
            frames = [
                f for v in sorted(Path(tmp, "mp4").rglob("*.mp4")) for f in decode_video_frames(v, fps=1.0)
            ]
            fh = sum(mtcnn.detect(Image.fromarray(f))[0] is not None for f in frames)
            print(f"video frames (1 fps): {fh}/{len(frames)} detected = {fh / len(frames):.1%}")


if __name__ == "__main__":
    main()
