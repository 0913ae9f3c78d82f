"""Why avtrain.evaluation.metrics keeps its own bootstrap: timed against scipy.stats.bootstrap, same run.

    .venv/bin/python bench/metrics.py [--n 1600] [--boot 1000] [--repeats 5]

Per-item values as evaluate has them (per-tuple correctness of one matching list, n items),
n_boot percentile resamples; prints the median seconds of each and the ratio scipy / avmatch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    from scipy.stats import bootstrap

    from avtrain.evaluation.metrics import bootstrap_ci

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1600, help="items (the demo's 10-way lists have 1,600 tuples)")
    ap.add_argument("--boot", type=int, default=1000, help="resamples (evaluate's default)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    values = (np.random.default_rng(0).random(args.n) < 0.4).astype(np.float64)
    ours = _median_time(lambda: bootstrap_ci(values, n_boot=args.boot, seed=0), args.repeats)
    theirs = _median_time(
        lambda: bootstrap(
            (values,), np.mean, n_resamples=args.boot, method="percentile", random_state=0, vectorized=True
        ),
        args.repeats,
    )
    print(
        json.dumps(
            {
                "n": args.n,
                "n_boot": args.boot,
                "avmatch_s": round(ours, 4),
                "scipy_s": round(theirs, 4),
                "scipy_over_avmatch": round(theirs / ours, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
