"""Time check_tuples (run by every make-tuples) on a demo tuple directory.

    .venv/bin/python bench/check_tuples.py [DEMO=demo-out] [--repeats 3]

Compare two versions by running it with PYTHONPATH set to a worktree of each (same data, same run
of the machine): e.g. `git worktree add /tmp/old REV` then `PYTHONPATH=/tmp/old .venv/bin/python
bench/check_tuples.py` and `PYTHONPATH=. .venv/bin/python bench/check_tuples.py`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main():
    from avdata.reader import index_items
    from avdata.tuples import check_tuples

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", nargs="?", default="demo-out", help="make demo-data's output directory")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    shards, tuples = f"{args.demo}/shards-matching", f"{args.demo}/tuples-matching"
    items = index_items(shards)  # once, as make-tuples does
    times, problems = [], None
    for _ in range(args.repeats):
        t = time.perf_counter()
        problems = check_tuples(tuples, shards, items=items)
        times.append(time.perf_counter() - t)
    print(
        json.dumps(
            {
                "tuples": tuples,
                "check_tuples_s": round(statistics.median(times), 2),
                "problems": len(problems),
            }
        )
    )


if __name__ == "__main__":
    main()
