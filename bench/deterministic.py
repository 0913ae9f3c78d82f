"""What `avtrain fit --deterministic` costs: AML training steps with the pinned kernels
(avdata.kernels.PINNED_KERNELS, oneDNN off) against this CPU's own kernels, in one run.

Each side runs in its own process (the kernels are picked when torch loads), the same
in-memory batches (bench/train_step.py's `run`: forward, discriminator step, encoder step),
alternating native / pinned `--rounds` times; the ratio is of the medians.

    .venv/bin/python bench/deterministic.py [--threads 2] [--steps 3] [--rounds 2] [--k 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent

_PROBE = """
import json, sys, torch
sys.path.insert(0, {bench!r})
from train_step import run
torch.set_num_threads({threads})
if {pinned}:
    torch.backends.mkldnn.enabled = False  # as fit --deterministic does
rate = run("matching", {k}, {batch}, {steps}, torch.device("cpu"), adversarial=True, amp=False)
print(json.dumps({{"tuples_per_s": rate, "capability": torch.backends.cpu.get_cpu_capability()}}))
"""


def _measure(pinned: bool, args) -> dict:
    from avdata.kernels import PINNED_KERNELS, environment

    code = _PROBE.format(
        bench=str(BENCH),
        threads=args.threads,
        pinned=pinned,
        k=args.k,
        batch=args.batch_size,
        steps=args.steps,
    )
    env = environment(PINNED_KERNELS if pinned else {})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--k", type=int, default=3, help="gallery size (the demo trains k=3)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    native, pinned = [], []
    for _ in range(args.rounds):
        n, p = _measure(False, args), _measure(True, args)
        native.append(n["tuples_per_s"])
        pinned.append(p["tuples_per_s"])
    n_med, p_med = statistics.median(native), statistics.median(pinned)
    print(f"AML matching k={args.k} training steps, batch {args.batch_size}, {args.threads} threads")
    print(f"native kernels ({n['capability']}): {n_med:.1f} tuples/s  {[round(x, 1) for x in native]}")
    print(
        f"pinned kernels ({p['capability']}, oneDNN off): {p_med:.1f} tuples/s  {[round(x, 1) for x in pinned]}"
    )
    print(f"--deterministic costs {n_med / p_med:.2f}x the step time")


if __name__ == "__main__":
    main()
