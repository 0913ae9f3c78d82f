"""Benchmark `avdata build-shards`: items/s per modality for -j 1 and -j 2, and peak RSS.

Corpora:
  * synthetic: `synth_corpus` (N identities, videos), audio tree replicated R times
    through symlinks so the audio rate is measured over thousands of clips;
  * real: ../shared/data/media (VoxCeleb wavs, facenet-pytorch photos, HDTF videos),
    replicated through symlinks, with a throw-away meta file naming their folders.

Each build runs in a fresh subprocess (imports excluded from the timed region, worker
start-up included), so peak RSS is per build. Memory flatness: the same build on a
corpus twice as large must not raise peak RSS.

    .venv/bin/python bench/build_shards.py [--identities 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

RUN_ONE = r"""
import json, resource, sys, time
from avdata.shards import BuildConfig, build_shards
args = json.loads(sys.argv[1])
t = time.perf_counter()
m = build_shards(args["out"], args["meta"], audio=args.get("audio"), faces=args.get("faces"),
                 videos=args.get("videos"), config=BuildConfig(shard_size=args["shard_size"]), jobs=args["jobs"])
wall = time.perf_counter() - t
files = sum(m["inputs"]["files"].values())
samples = sum(v["samples"] for v in m["shards"].values())
print(json.dumps({"wall_s": wall, "files": files, "samples": samples, "rejects": m["rejects"],
                  "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def build(tmp: Path, tag: str, jobs: int, shard_size: int = 100, **roots) -> dict:
    out = tmp / f"shards-{tag}-j{jobs}"
    args = {"out": str(out), "jobs": jobs, "shard_size": shard_size, **{k: str(v) for k, v in roots.items()}}
    res = subprocess.run(
        [sys.executable, "-c", RUN_ONE, json.dumps(args)], capture_output=True, text=True, cwd=REPO
    )
    if res.returncode != 0:
        raise SystemExit(f"build {tag} -j{jobs} failed:\n{res.stderr[-2000:]}")
    stats = json.loads(res.stdout.strip().splitlines()[-1])
    stats["items_per_s"] = stats["files"] / stats["wall_s"]
    return stats


def replicate(src_root: Path, dst_root: Path, copies: int, pattern: str) -> None:
    """dst/IDENT/copyK__rest: symlinks to every file matching pattern, K copies."""
    for f in sorted(src_root.rglob(pattern)):
        rel = f.relative_to(src_root)
        for k in range(copies):
            dst = dst_root / rel.parts[0] / f"copy{k}" / Path(*rel.parts[1:])
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(f, dst)


def real_media_tree(tmp: Path, copies: int) -> tuple[Path, dict]:
    """Real media under identity folders, and a meta file that names those folders."""
    media = SHARED / "media"
    names = sorted(
        {p.stem for p in (media / "voice" / "voxceleb1_named").glob("*.wav")}
        | {p.name for p in (media / "faces" / "facenet_pytorch" / "test_images").iterdir()}
        | {"multiface", "hdtf_talking"}
    )
    meta = tmp / "real_meta.csv"
    meta.write_text(
        "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
        + "".join(f"id{90001 + i}\t{n}\tm\tUSA\tdev\n" for i, n in enumerate(names))
    )
    audio, faces, videos = tmp / "real_audio", tmp / "real_faces", tmp / "real_videos"
    for wav in sorted((media / "voice" / "voxceleb1_named").glob("*.wav")):
        for k in range(copies):
            d = audio / wav.stem / f"copy{k}"
            d.mkdir(parents=True, exist_ok=True)
            os.symlink(wav, d / "00001.wav")
    replicate(media / "faces" / "facenet_pytorch" / "test_images", faces, copies, "*.jpg")
    for k in range(copies):
        d = faces / "multiface" / f"copy{k}"
        d.mkdir(parents=True, exist_ok=True)
        os.symlink(media / "faces" / "facenet_pytorch" / "multiface.jpg", d / "0000001.jpg")
        for mp4 in sorted((media / "video" / "hdtf_talking").glob("*.mp4")):
            d = videos / "hdtf_talking" / f"copy{k}"
            d.mkdir(parents=True, exist_ok=True)
            os.symlink(mp4, d / mp4.name)
    return meta, {"audio": audio, "faces": faces, "videos": videos}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, default=40, help="synthetic identities in the base corpus")
    ap.add_argument(
        "--audio-copies", type=int, default=8, help="symlinked copies of the synthetic audio tree"
    )
    ap.add_argument("--real-copies", type=int, default=6, help="symlinked copies of the real media")
    ap.add_argument("--json", default=None, help="write all figures to this JSON file")
    args = ap.parse_args()
    from avdata.synth import synth_corpus

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus"
        synth_corpus(
            corpus,
            identities=args.identities,
            clips_per_identity=4,
            faces_per_identity=4,
            videos=True,
            seed=0,
        )
        meta = corpus / "vox1_meta.csv"
        for scale in (1, 2):
            replicate(corpus / "wav", tmp / f"audio_x{scale}", args.audio_copies * scale, "*.wav")
            replicate(corpus / "faces", tmp / f"faces_x{scale}", scale, "*.jpg")
        for jobs in (1, 2):
            results[f"synth audio j{jobs}"] = build(tmp, "sa", jobs, audio=tmp / "audio_x1", meta=meta)
            results[f"synth face j{jobs}"] = build(tmp, "sf", jobs, faces=tmp / "faces_x1", meta=meta)
            results[f"synth video j{jobs}"] = build(
                tmp, "sv", jobs, shard_size=20, videos=corpus / "mp4", meta=meta
            )
        results["synth audio x2 j1"] = build(tmp, "sa2", 1, audio=tmp / "audio_x2", meta=meta)
        results["synth face x2 j1"] = build(tmp, "sf2", 1, faces=tmp / "faces_x2", meta=meta)

        real_meta, roots = real_media_tree(tmp, args.real_copies)
        for jobs in (1, 2):
            results[f"real audio j{jobs}"] = build(
                tmp, "ra", jobs, shard_size=20, audio=roots["audio"], meta=real_meta
            )
            results[f"real face j{jobs}"] = build(
                tmp, "rf", jobs, shard_size=10, faces=roots["faces"], meta=real_meta
            )
            results[f"real video j{jobs}"] = build(
                tmp, "rv", jobs, shard_size=2, videos=roots["videos"], meta=real_meta
            )

    print(
        f"{'build':<22}{'files':>7}{'samples':>9}{'wall s':>8}{'items/s':>9}{'RSS main MB':>13}{'RSS worker MB':>15}"
    )
    for k, r in results.items():
        print(
            f"{k:<22}{r['files']:>7}{r['samples']:>9}{r['wall_s']:>8.1f}{r['items_per_s']:>9.1f}"
            f"{r['rss_main_mb']:>13.0f}{r['rss_worker_mb']:>15.0f}"
        )
    print()
    for kind in ("synth audio", "synth face", "synth video", "real audio", "real face", "real video"):
        print(
            f"{kind}: -j 2 / -j 1 = {results[f'{kind} j2']['items_per_s'] / results[f'{kind} j1']['items_per_s']:.2f}x"
        )
    for kind in ("synth audio", "synth face"):
        r1, r2 = results[f"{kind} j1"], results[f"{kind} x2 j1"]
        print(
            f"{kind}: peak RSS x2 corpus / x1 corpus = {r2['rss_main_mb'] / r1['rss_main_mb']:.3f}"
            f" ({r1['files']} -> {r2['files']} files)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
