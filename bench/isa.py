"""How close a shard build comes to depending on the CPU: the demo corpus built under every
simulated CPU this machine supports (avdata.kernels.SIMULATED_CPUS), compared.

build-shards pins MTCNN's kernels to the AVX2 level (avdata.kernels.BUILD_KERNELS) unless a
simulation asks for lower ones, so the simulations at or above AVX2 must agree bit for bit, and
the sse42-machine one shows what a pre-AVX2 CPU would differ by.

For each simulation it builds the matching-protocol shards of a freshly synthesised corpus
(`avdata build-shards`, its own process, -j 2) and reports
* whether every shard's sha256 and rejects.jsonl equal the native build's;
* from the detection sidecars, per simulation: how many boxes are bit-identical to the native
  build's, the 99th percentile of the box differences (kernel noise), how many moved by more
  than 1e-3 px (a discrete jump inside MTCNN: a truncated candidate box flipped) and how many
  faces were cut elsewhere (another integer crop);
* how near the native crop values come to a rounding boundary (x.5 px), and the chosen faces'
  probabilities to the 0.9 threshold;
* what the content records cost, and what the AVX2 pin costs in face time.

    .venv/bin/python bench/isa.py [--identities 160] [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _build(corpus: Path, out: Path, env: dict) -> float:
    from avdata.kernels import environment

    cmd = [
        sys.executable, "-m", "avdata.cli", "build-shards",
        "--audio", str(corpus / "wav"), "--faces", str(corpus / "faces"), "--videos", str(corpus / "mp4"),
        "--meta", str(corpus / "vox1_meta.csv"), "--protocol", "matching", "--out", str(out),
        "-j", "2", "--no-progress",
    ]  # fmt: skip
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=environment(env), capture_output=True, cwd=REPO)
    return time.perf_counter() - t


def _detections(out: Path) -> dict[str, dict]:
    found = {}
    for path in sorted(out.glob("*/face-*.detections.jsonl")):
        for line in path.read_text().splitlines():
            d = json.loads(line)
            found[d["key"]] = d
    return found


_SPEED_PROBE = """
import glob, json, sys, time
import torch
torch.set_num_threads(1)
from avdata.faces import FaceAligner, load_image
from avdata.errors import InputError
paths = sorted(glob.glob(sys.argv[1] + "/faces/*/*/*.jpg"))[: int(sys.argv[2])]
images = [load_image(p) for p in paths]
aligner = FaceAligner()
aligner.detect(images[0])
t = time.perf_counter()
for image in images:
    try:
        aligner.align(image)
    except InputError:
        pass
print(json.dumps(len(images) / (time.perf_counter() - t)))
"""


def _face_speed(corpus: Path, photos: int, rounds: int) -> None:
    """FaceAligner photos/s (1 thread) with this CPU's own kernels against build-shards' pinned
    ones (avdata.kernels.BUILD_KERNELS), alternating, each in a fresh process; medians."""
    import statistics

    from avdata.kernels import BUILD_KERNELS, environment

    rates: dict[str, list[float]] = {"own kernels": [], "BUILD_KERNELS": []}
    for _ in range(rounds):
        for name, env in (("own kernels", {}), ("BUILD_KERNELS", BUILD_KERNELS)):
            out = subprocess.run(
                [sys.executable, "-c", _SPEED_PROBE, str(corpus), str(photos)],
                env=environment(env), capture_output=True, text=True, check=True, cwd=REPO,
            )  # fmt: skip
            rates[name].append(float(out.stdout.strip().splitlines()[-1]))
    own, pinned = statistics.median(rates["own kernels"]), statistics.median(rates["BUILD_KERNELS"])
    print(f"\nface alignment, {photos} demo photos, 1 thread, median of {rounds}:")
    print(f"  this CPU's own kernels: {own:.1f} photos/s {[round(r, 1) for r in rates['own kernels']]}")
    print(f"  BUILD_KERNELS (AVX2):   {pinned:.1f} photos/s {[round(r, 1) for r in rates['BUILD_KERNELS']]}")
    print(f"  pinning costs {own / pinned:.2f}x the face time")


def _digest_cost(out: Path, build_s: float | None, samples: int) -> None:
    """What the content record (avdata.manifest.content) adds to a build: the time to summarise
    every sample of the native build's shards again, against the build's own time."""
    from avdata.manifest.content import shard_content

    t = time.perf_counter()
    for tar in sorted(out.glob("*/*.tar")):
        shard_content(tar, digests=True)
    spent = time.perf_counter() - t
    text = f"content records of {samples} samples: {spent:.1f} s"
    if build_s:
        text += f" = {spent / build_s:.1%} of the native build's {build_s:.0f} s (-j 2)"
    print(text + " (read back from disk; while building, the arrays are already in memory)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, default=160, help="demo size (make demo-data: 160)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="build here and keep the builds")
    ap.add_argument("--speed-photos", type=int, default=150, help="photos timed for the kernel pin's cost")
    ap.add_argument("--speed-rounds", type=int, default=3)
    args = ap.parse_args()
    from avdata.faces import FaceAligner
    from avdata.kernels import supported_simulations
    from avdata.synth import synth_corpus

    sims = supported_simulations()
    root = args.keep or Path(tempfile.mkdtemp(prefix="avmatch-isa-"))
    corpus = root / "corpus"
    if not (corpus / "vox1_meta.csv").is_file():
        synth_corpus(corpus, identities=args.identities, videos=True, seed=args.seed)
    builds, seconds = {}, {}
    for name, env in sims.items():
        out = root / f"shards-{name}"
        if not (out / "manifest.json").is_file():
            seconds[name] = _build(corpus, out, env)
        builds[name] = json.loads((out / "manifest.json").read_text())
        print(
            f"built {name} {env or '(this CPU)'}" + (f" in {seconds[name]:.0f} s" if name in seconds else "")
        )

    native = builds["native"]
    print(f"\n{len(native['shards'])} shards, {sum(s['samples'] for s in native['shards'].values())} samples")
    for name, m in builds.items():
        same = [
            n
            for n in native["shards"]
            if m["shards"].get(n, {}).get("sha256") == native["shards"][n]["sha256"]
        ]
        rejects = m["rejects_sha256"] == native["rejects_sha256"]
        print(f"{name:14s} shards identical {len(same)}/{len(native['shards'])}, rejects identical {rejects}")

    aligner = FaceAligner()  # the margin build-shards uses (ExtractConfig.face_margin = 0.2)
    dets = {name: _detections(root / f"shards-{name}") for name in sims}
    base = dets["native"]
    print(f"\nfaces: {len(base)}; per simulation, against the native build's detections:")
    for name, found in dets.items():
        gaps, flips = [], []
        for key, b in base.items():
            d = found.get(key)
            if d is None:
                continue
            gaps.append(max(abs(x - y) for x, y in zip(d["box"], b["box"])))
            if aligner.crop_square(d["box"]) != aligner.crop_square(b["box"]):
                flips.append(key)
        gaps = sorted(gaps)
        same = sum(g == 0 for g in gaps)
        jumps = sum(g > 1e-3 for g in gaps)
        p99 = gaps[int(0.99 * (len(gaps) - 1))] if gaps else 0.0
        print(
            f"  {name:14s} identical boxes {same}/{len(gaps)}, 99th percentile difference {p99:.1e} px, "
            f"jumps > 1e-3 px {jumps}, crops cut elsewhere {len(flips)} {flips[:3]}"
        )
    margins = [
        abs((v - math.floor(v)) - 0.5) for d in base.values() for v in aligner.crop_square_float(d["box"])
    ]
    print(
        f"nearest crop value to a rounding boundary (x.5 px): {min(margins):.2e} px of {len(margins)} values"
    )
    print(
        f"nearest chosen face probability to the 0.9 threshold: {min(abs(d['prob'] - 0.9) for d in base.values()):.2e}"
    )
    print(f"build times (s): {json.dumps({k: round(v) for k, v in seconds.items()})}")
    _digest_cost(
        root / "shards-native", seconds.get("native"), sum(s["samples"] for s in native["shards"].values())
    )
    if args.keep is None:
        print(f"(builds left in {root}; remove it when done)")


if __name__ == "__main__":
    main()
