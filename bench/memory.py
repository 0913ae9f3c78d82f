"""Benchmark: peak RSS of a one-worker `build-shards` per single input file (issue #11, item 13).

Each case is a one-identity corpus holding ONE input file, built with `build_shards(..., jobs=1)`
in a fresh child process. Peak RSS is the child's ``ru_maxrss`` as returned by ``os.wait4`` for
that child: the maximum over the child and the processes it waited for (ffmpeg included), i.e.
what ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` gives for one child (wait4 keeps cases apart;
RUSAGE_CHILDREN only ever grows). This parent stays small (stdlib only: a child's ru_maxrss
also counts its parent's RSS at fork time). Each case is compared with a baseline built the
same way from an ordinary short clip of the same modality, in the same run.

Inputs are generated with the real (bundled) ffmpeg into a temporary directory:
  * 60-minute 16 kHz mono wav (pink noise, `anoisesrc`), ~115 MB;
  * an 8 KB wav whose header claims 1 Hz (4000 s of "audio");
  * an 8000x8000 h264 mp4 of 8 frames at 1 fps, very low bitrate (~240 KB);
  * a 4096x4096 h264 mp4 (the largest frame size accepted), 8 frames at 1 fps.
Baselines: the first real VoxCeleb wav and the first real HDTF mp4 in ../shared/data/media.

    .venv/bin/python bench/memory.py                       # this checkout
    .venv/bin/python bench/memory.py --repo /path/to/old   # the same cases on another checkout
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "media"
META = "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\nid10001\tFrank_Case\tm\tUSA\tdev\n"
AS_LIMIT = 16 << 30  # bytes of address space per case: a runaway old-code case fails, not the machine

RUN_ONE = r"""
import json, sys
from pathlib import Path
from avdata.shards import BuildConfig, build_shards
args = json.loads(sys.argv[1])
m = build_shards(args["out"], args["meta"], audio=args.get("audio"), videos=args.get("videos"),
                 config=BuildConfig(shard_size=100), jobs=1)
rejects = [json.loads(line)["reason"] for line in Path(args["out"], "rejects.jsonl").read_text().splitlines()]
samples = sum(v["samples"] for v in m["shards"].values())
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"samples": samples, "rejects": rejects, "self_hwm_mb": int(hwm.split()[1]) / 1024}))
"""


def ffmpeg_exe() -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def ffmpeg(exe: str, *args: str) -> None:
    subprocess.run([exe, "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def one_hz_wav(path: Path) -> None:
    data = bytes(range(256)) * 32  # 8 KB of PCM16
    fmt = struct.pack("<HHIIHH", 1, 1, 1, 2, 2, 16)
    body = (
        b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    )
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def make_inputs(tmp: Path, exe: str, minutes: int) -> dict[str, tuple[str, Path]]:
    """case -> (modality root: "audio" | "videos", input file)."""
    inputs = tmp / "inputs"
    inputs.mkdir()
    long_wav = inputs / f"long_{minutes}min.wav"
    ffmpeg(
        exe,
        "-f",
        "lavfi",
        "-i",
        f"anoisesrc=d={minutes * 60}:c=pink:r=16000:a=0.2",
        "-ac",
        "1",
        "-c:a",
        "pcm_s16le",
        str(long_wav),
    )
    one_hz = inputs / "one_hz.wav"
    one_hz_wav(one_hz)
    huge = inputs / "huge_8000.mp4"
    ffmpeg(
        exe,
        "-f",
        "lavfi",
        "-i",
        "color=c=gray:s=8000x8000:r=1",
        "-t",
        "8",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-crf",
        "51",
        "-pix_fmt",
        "yuv420p",
        str(huge),
    )
    large = inputs / "large_4096.mp4"
    ffmpeg(
        exe,
        "-f",
        "lavfi",
        "-i",
        "testsrc=s=4096x4096:r=1",
        "-t",
        "8",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-crf",
        "40",
        "-pix_fmt",
        "yuv420p",
        str(large),
    )
    short_wav = min((SHARED / "voice" / "voxceleb1_named").glob("*.wav"))
    short_mp4 = min((SHARED / "video" / "hdtf_talking").glob("*.mp4"))
    return {
        "short wav (baseline, audio)": ("audio", short_wav),
        f"{minutes}-minute wav": ("audio", long_wav),
        "8 KB wav claiming 1 Hz": ("audio", one_hz),
        "short mp4 (baseline, video)": ("videos", short_mp4),
        "8000x8000 mp4": ("videos", huge),
        "4096x4096 mp4": ("videos", large),
    }


def _limit_address_space() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def run_case(repo: Path, tmp: Path, tag: str, root: str, media: Path) -> dict:
    corpus = tmp / tag
    target = corpus / root / "id10001" / "YTID0000001" / f"00001{media.suffix}"
    target.parent.mkdir(parents=True)
    os.symlink(media, target)
    (corpus / "meta.csv").write_text(META)
    args = {"out": str(corpus / "shards"), "meta": str(corpus / "meta.csv"), root: str(corpus / root)}
    env = {**os.environ, "PYTHONPATH": str(repo)}
    start = time.perf_counter()
    with open(corpus / "stdout", "wb") as out, open(corpus / "stderr", "wb") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", RUN_ONE, json.dumps(args)],
            cwd=repo,
            env=env,
            stdout=out,
            stderr=err,
            preexec_fn=_limit_address_space,
        )  # noqa: PLW1509 - no threads here
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    result = {
        "case": tag,
        "file_bytes": media.stat().st_size,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "wall_s": wall,
        "exit": child.returncode,
    }
    if child.returncode == 0:
        result |= json.loads((corpus / "stdout").read_text().strip().splitlines()[-1])
    else:
        result["error"] = (corpus / "stderr").read_text(errors="replace").strip().splitlines()[-1:]
    shutil.rmtree(corpus / "shards", ignore_errors=True)
    return result


def table(results: list[dict]) -> str:
    """Markdown table: peak RSS of the build's process tree and of the build process alone."""
    lines = [
        "| input | file size | peak RSS MB (tree) | vs baseline MB | build process VmHWM MB | build result | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["exit"] != 0:
            outcome = f"build failed: {' '.join(r['error'])[:120]}"
        elif r["rejects"]:
            reasons = list(dict.fromkeys(r["rejects"]))  # distinct, in order
            outcome = f"{r['samples']} samples; rejects: " + "; ".join(reason[:90] for reason in reasons[:2])
        else:
            outcome = f"{r['samples']} samples"
        size = r["file_bytes"]
        size_text = f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size / 1024:.0f} KB"
        hwm = f"{r['self_hwm_mb']:.0f}" if "self_hwm_mb" in r else "-"
        lines.append(
            f"| {r['case']} | {size_text} | {r['peak_rss_mb']:.0f} | {r['delta_mb']:+.0f} | {hwm} | "
            f"{outcome} | {r['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose avdata is measured")
    parser.add_argument("--minutes", type=int, default=60, help="length of the long wav")
    parser.add_argument("--only", action="append", default=None, help="run only cases containing this text")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--render", type=Path, default=None, help="only print the table of a --json file")
    args = parser.parse_args()
    if args.render:
        print(table(json.loads(args.render.read_text())))
        return
    exe = ffmpeg_exe()
    with tempfile.TemporaryDirectory(prefix="avmatch-memory-") as name:
        tmp = Path(name)
        cases = make_inputs(tmp, exe, args.minutes)
        results, baseline = [], {}
        for tag, (root, media) in cases.items():
            if args.only and not any(text in tag for text in args.only) and "baseline" not in tag:
                continue
            result = run_case(args.repo.resolve(), tmp, f"case{len(results)}", root, media)
            result["case"] = tag
            if "baseline" in tag:
                baseline[root] = result["peak_rss_mb"]
            result["delta_mb"] = result["peak_rss_mb"] - baseline[root]
            results.append(result)
            print(json.dumps(result), flush=True)
    print(f"\nrepo: {args.repo}\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
