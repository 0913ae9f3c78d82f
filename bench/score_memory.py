"""Benchmark: peak RSS and pairs/s of `avtrain score` on FAME lists of 2,000 and 20,000 pairs
whose files are all distinct (issue #20, item 2: memory must not grow with the list).

Inputs: a synthetic corpus (16 identities, seed 0) gives 64 source voices, cut to their first
1.5 s, and 64 source face photos, scaled to 80 px (small, so that 20,000 pairs take minutes on
CPU); every pair gets its own voice and face file, hard links to a source under distinct
names, so `score` preprocesses and embeds every one of them (it deduplicates by path, not by
content). Model: a randomly initialised AML run (the cost does not depend on the weights).

Each list is scored by `avtrain.serve.score.score_pairs` in a fresh child process (one torch
thread, batch 64, CPU). Peak RSS is the child's own VmHWM (/proc/self/status); pairs/s is
pairs over the child's wall time in score_pairs (model loading excluded), and pairs per CPU
second over its process CPU time (less hurt when other jobs share the cores). The figure to look
at is the growth from the smaller list to the larger one (target: under 300 MB).

    .venv/bin/python bench/score_memory.py                       # this checkout
    .venv/bin/python bench/score_memory.py --repo /path/to/old   # the same lists on another checkout
    .venv/bin/python bench/score_memory.py --pairs 2000 20000 --embed   # also `embed` on the same files
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RUN_ONE = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from avtrain.serve.model import load_model
args = json.loads(sys.argv[1])
model = load_model(args["run"], "cpu")
t, c = time.perf_counter(), time.process_time()
if args["what"] == "score":
    from avtrain.serve.score import score_pairs
    s = score_pairs(model, args["list"], args["root"], args["out"], batch_size=64)
    done = {"pairs": s["pairs"], "scored": s["scored"], "rejected": s["rejected"]}
else:
    from avtrain.serve.embed import embed_files, write_embeddings
    res = embed_files(model, [args["root"] + "/voices"], [args["root"] + "/faces"], [], batch_size=64)
    write_embeddings(res, args["out"])
    done = {"voices": len(res.voice_keys), "faces": len(res.face_keys), "rejected": len(res.rejects)}
seconds, cpu = time.perf_counter() - t, time.process_time() - c
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps(done | {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
                         "rss_mb": round(int(hwm.split()[1]) / 1024)}))
"""


def sources(tmp: Path) -> tuple[list[Path], list[Path]]:
    """64 short voices and 64 small face photos from the synthetic corpus."""
    import soundfile
    from PIL import Image

    from avdata.synth import synth_corpus

    c = tmp / "corpus"
    synth_corpus(c, identities=16, clips_per_identity=4, faces_per_identity=4, seed=0)
    src = tmp / "src"
    src.mkdir()
    voices, faces = [], []
    for i, wav in enumerate(sorted((c / "wav").rglob("*.wav"))):
        data, sr = soundfile.read(str(wav), dtype="int16")
        voices.append(src / f"v{i}.wav")
        soundfile.write(str(voices[-1]), data[: int(1.5 * sr)], sr, subtype="PCM_16")
    for i, jpg in enumerate(sorted((c / "faces").rglob("*.jpg"))):
        faces.append(src / f"f{i}.jpg")
        Image.open(jpg).convert("RGB").resize((80, 80), Image.BICUBIC).save(faces[-1], quality=95)
    return voices, faces


def make_list(tmp: Path, n: int, voices: list[Path], faces: list[Path]) -> tuple[Path, Path]:
    """ROOT (voices/, faces/: n distinct hard links each) and a FAME list of n pairs."""
    root = tmp / f"root{n}"
    for sub in ("voices", "faces"):
        (root / sub).mkdir(parents=True)
    lines = []
    for i in range(n):
        v, f = f"voices/{i:06d}.wav", f"faces/{i:06d}.jpg"
        os.link(voices[i % len(voices)], root / v)
        os.link(faces[(i * 7) % len(faces)], root / f)
        lines.append(f"{i:06d} {v} {f}\n")
    plist = tmp / f"list{n}.txt"
    plist.write_text("".join(lines))
    return root, plist


def run_child(repo: Path, args: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", RUN_ONE, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=repo,  # `python -c` puts the working directory first on sys.path: it must be REPO too
        timeout=3600,
    )
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1], "returncode": done.returncode}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, nargs="+", default=[2000, 20000], help="List sizes, smallest first.")
    ap.add_argument("--repo", type=Path, default=REPO, help="Checkout whose code scores the lists.")
    ap.add_argument("--embed", action="store_true", help="Also run `embed` on each list's files.")
    args = ap.parse_args()
    from _corpus import random_run

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t = time.perf_counter()
        voices, faces = sources(tmp)
        run = random_run(tmp / "run")
        print(f"sources and run: {time.perf_counter() - t:.0f} s", file=sys.stderr)
        out: dict = {"repo": str(args.repo), "cases": {}}
        for n in args.pairs:
            root, plist = make_list(tmp, n, voices, faces)
            whats = ["score", "embed"] if args.embed else ["score"]
            for what in whats:
                res = run_child(
                    args.repo,
                    {
                        "what": what,
                        "run": str(run),
                        "list": str(plist),
                        "root": str(root),
                        "out": str(tmp / (f"s{n}.txt" if what == "score" else f"e{n}.npz")),
                    },
                )
                if "seconds" in res:
                    res["pairs_per_s"] = round(n / res["seconds"], 1)
                    res["pairs_per_cpu_s"] = round(n / res["cpu_seconds"], 1)
                out["cases"][f"{what}_{n}"] = res
                print(f"{what} {n}: {res}", file=sys.stderr)
        for what in ("score", "embed"):
            small, large = (out["cases"].get(f"{what}_{n}", {}) for n in (args.pairs[0], args.pairs[-1]))
            if "rss_mb" in small and "rss_mb" in large and len(args.pairs) > 1:
                out[f"{what}_rss_growth_mb"] = large["rss_mb"] - small["rss_mb"]
                out[f"{what}_rss_ratio"] = round(large["rss_mb"] / small["rss_mb"], 3)
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
