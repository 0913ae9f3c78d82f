"""Train AML with each matching head (ModelConfig.head) and report head and -L2 accuracy.

The figures of docs/training.md, "Matching heads". DATA is a reduced synthetic set:

    avdata synth DATA/corpus --identities 60 --videos --seed 0 -j 2
    avdata build-shards --audio DATA/corpus/wav --faces DATA/corpus/faces --videos DATA/corpus/mp4 \\
        --meta DATA/corpus/vox1_meta.csv --protocol matching --out DATA/shards -j 2
    avdata make-tuples --shards DATA/shards --task matching --split train --k 3 --direction a2v \\
        --sets-per-identity 30 --tuples-per-shard 200 --out DATA/tuples
    avdata make-tuples --shards DATA/shards --task matching --split test --k 2-10 --out DATA/tuples

then, per head, `avtrain fit` settings of the demo (k=3, a2v, lr_start=0.001, `--set model.head=HEAD`)
and `avtrain evaluate`:

    .venv/bin/python bench/matching_heads.py DATA RUNS [--epochs 10] [--seed 0] [--head diff_mlp ...]

A killed run continues where its checkpoint stopped (fit's resume). One JSON line per head is
printed and appended to RUNS/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main():
    from avtrain.evaluation.evaluate import evaluate
    from avtrain.methods.aml.model import MATCHING_HEADS
    from avtrain.run.config import load_config
    from avtrain.train import loop as train

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="directory with shards/ and tuples/ (see above)")
    ap.add_argument("runs", type=Path, help="one run directory per head is written here")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--head", action="append", choices=MATCHING_HEADS, help="default: every head")
    args = ap.parse_args()
    for head in args.head or MATCHING_HEADS:
        cfg = load_config(
            None,
            {"task": "matching", "k": 3, "direction": "a2v", "epochs": args.epochs, "seed": args.seed},
            ["lr_start=0.001", "workers=1", f"model.head={head}"],
        )
        run = args.runs / f"{head}-s{args.seed}"
        train.fit(cfg, args.data / "tuples", run, resume=True, progress=False)
        m = evaluate(run, args.data / "shards", args.data / "tuples", echo=None)
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        last = [r["L_cls"] for r in log if "L_cls" in r and r["epoch"] == args.epochs - 1]
        k3 = m["matching"]["a2v"]["k3"]
        result = {
            "head": head,
            "seed": args.seed,
            "epochs": args.epochs,
            "L_cls_last_epoch": round(sum(last) / len(last), 4),
            "head_k3_a2v": k3["head"]["value"],
            "head_k3_a2v_ci95": k3["head"]["ci95"],
            **{
                f"L2_{d}_k{k}": m["matching"][d][f"k{k}"]["value"] for d in ("a2v", "v2a") for k in (2, 3, 10)
            },
            "L2_a2v_k3_ci95": k3["ci95"],
        }
        print(json.dumps(result), flush=True)
        with open(args.runs / "results.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
