"""Benchmark the checked readers of issue #11 against webdataset's reader, in the same run.

read      every tuple-shard sample decoded: avdata.reader.iter_samples (local files via
          tarfile, every member checked) vs webdataset.WebDataset(paths).map(decode_sample)
          (the previous reader, trusted local paths only); best of --repeats, interleaved
fit start avtrain.train.data.load_sizes (names + every member of every tuple shard checked in the
          main process) against the decoded read pass it precedes (one epoch's input)
check     avdata.tuples.check_tuples on the tuple directory (lists + tuple shards) against
          the decoded read pass

  .venv/bin/python bench/checked_read.py [--identities 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--identities", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import webdataset as wds
    from loader import build_data

    from avdata.reader import decode_sample, iter_samples
    from avdata.tuples import check_tuples
    from avtrain.train.data import load_sizes

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = build_data(Path(tmp), args.identities)
        paths, sizes = load_sizes(tmp / "tuples", "matching_train_a2v_k2")
        n = sum(sizes.values())

        def ours():
            assert sum(1 for _ in iter_samples(paths)) == n

        def webdataset():
            ds = wds.WebDataset(paths, shardshuffle=False, empty_check=False).map(decode_sample)
            assert sum(1 for _ in ds) == n

        t_ours, t_wds = [], []
        for _ in range(args.repeats):  # interleaved, so contention hits both alike
            t_ours.append(best(ours, 1))
            t_wds.append(best(webdataset, 1))
        read_ours, read_wds = min(t_ours), min(t_wds)
        t_sizes = best(lambda: load_sizes(tmp / "tuples", "matching_train_a2v_k2"), args.repeats)
        t_check = best(lambda: check_tuples(tmp / "tuples", tmp / "shards"), args.repeats)
        mib = (
            sum(
                (tmp / "tuples" / k).stat().st_size
                for k in json.loads((tmp / "tuples" / "sizes.json").read_text())
            )
            / 2**20
        )
    res = {
        "tuples": n,
        "tuple_shards": len(paths),
        "MiB": round(mib, 1),
        "read_ours_s": round(read_ours, 3),
        "read_webdataset_s": round(read_wds, 3),
        "read_ratio_ours_over_webdataset": round(read_ours / read_wds, 3),
        "load_sizes_s": round(t_sizes, 3),
        "load_sizes_over_read": round(t_sizes / read_ours, 3),
        "check_tuples_s": round(t_check, 3),
        "check_tuples_over_read": round(t_check / read_ours, 3),
    }
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
