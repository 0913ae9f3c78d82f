"""Benchmark the training input read by index (issue #22) against today's tuple-shard stream, on the
same tuples, in one run (ratios within the run are what count on a shared machine).

Data: a synthetic corpus (``--identities``, 4 clips and 4 faces each, seed 0) -> matching shards ->
training lists a2v k=2 (``--negatives`` per positive) and v2a k=10 (``--sets`` per identity), each
made twice: with tuple shards (today's default for split train) and without (index lists only);
and the decoded item store of the shards (``avdata cache``).

  1. input only, tuples/s, batch 50, ``--workers`` DataLoader workers, per list:
       (a) stream   the tuple shards streamed (TupleStream: shard order, shuffle buffer)
       (b) shards   by index, items read from the item shards by offset and decoded per read
       (c) store    by index, items copied from the memory-mapped item store by one thread of the
                    trainer's process (ThreadedBatches, what fit does), and for comparison by
                    ``--workers`` DataLoader worker processes
     and the copy ceiling: a batch's bytes over this machine's memcpy rate
  2. bytes read from disk in one epoch from a cold page cache (the files evicted with
     posix_fadvise DONTNEED, /proc/self/io read_bytes, no workers), and the tuple directory's size
     with and without tuple shards;
  3. distinct query identities per batch of 50: the stream's order and the index's permutation, on
     the bench lists and on VoxCeleb1-shaped layouts (942 identities x 15 tuples at k=2, x 50 at
     k=10, written identity by identity, 500 tuples a shard, 2 workers) ordered by the loaders' own
     functions;
  4. the AML training step (CPU) fed from the loader (store, by index) vs from the same batches in memory;
  5. peak RSS (VmHWM) against the number of tuples (k=2 lists of 15, 120 and 960 negatives per
     positive, the store), in a fresh process: after the imports, after the input alone (the
     list read, items located, 3 batches) and after ``avtrain fit`` (1 epoch of 3 steps of
     batch 50; the store's loader is a thread, so there are no worker processes).

    .venv/bin/python bench/train_input.py [--identities 40] [--negatives 60] [--sets 40] [--workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
B = 50


def cli(main, *args):
    from click.testing import CliRunner

    res = CliRunner().invoke(main, [str(a) for a in args])
    if res.exit_code:
        raise SystemExit(res.output)
    return res.output


def make_lists(
    tmp: Path, shards: Path, sets: int, negatives: int, tag: str = "", kinds=("with", "lean")
) -> dict[str, Path]:
    """tuples-with / tuples-lean directories holding a2v k=2 and v2a k=10 training lists (with and
    without tuple shards)."""
    from avdata.cli import main

    out = {}
    for kind, flag in (("with", "--tuple-shards"), ("lean", "--no-tuple-shards")):
        if kind not in kinds:
            continue
        d = tmp / f"tuples-{kind}{tag}"
        common = ["make-tuples", "--shards", shards, "--task", "matching", "--split", "train", "--out", d]
        cli(main, *common, "--k", "2", "--direction", "a2v", "--negatives-per-positive", negatives, flag)
        if sets:
            cli(main, *common, "--k", "10", "--direction", "v2a", "--sets-per-identity", sets, flag)
        out[kind] = d
    return out


def du(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def evict(paths) -> None:
    """Drop the files' pages from the page cache (after writing them back)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no /proc/self/io")


def inputs(tuples: Path, name: str, k: int, direction: str, mode: str, workers: int, items: Path | None):
    from avtrain.train.data import TrainingInput

    return TrainingInput(
        tuples,
        name,
        "matching",
        k,
        direction,
        B,
        seed=0,
        workers=workers,
        items=items,
        tuple_shards=mode == "stream",
    )


def endless(data):
    """Batches of epoch after epoch (a stream never runs dry)."""
    epoch = 0
    while True:
        yield from data.loader(epoch)
        epoch += 1


def rate(batches, n: int, consume) -> float:
    it = iter(batches)
    for b in islice(it, 2):  # worker start-up and the first mappings are not the steady state
        consume(b)
    t, done = time.perf_counter(), 0
    for b in islice(it, n):
        consume(b)
        done += len(b["label"])
    return done / (time.perf_counter() - t)


def stream_identities(q_ids: np.ndarray, per_shard: int, workers: int, shuffle: int, epoch: int = 0):
    """Distinct query identities of each batch of 50 in the stream's order (TupleStream's stages:
    shard order by (seed, epoch), split by worker, seeded shuffle buffer, full batches per worker;
    the DataLoader takes one batch from each worker in turn)."""
    import random

    from avtrain.train.data import epoch_shards, shuffle_buffer, split_for

    shards = [list(range(s, min(s + per_shard, len(q_ids)))) for s in range(0, len(q_ids), per_shard)]
    names = [f"{i:06d}" for i in range(len(shards))]
    order = epoch_shards(names, 0, epoch)
    per_worker = []
    for w in range(workers):
        rng = random.Random(f"0/{epoch}/0/{w}")
        mine = [i for name in split_for(order, w, workers) for i in shards[int(name)]]
        seq = list(shuffle_buffer(mine, shuffle, rng))
        per_worker.append([seq[b : b + B] for b in range(0, len(seq) - B + 1, B)])
    out = []
    for j in range(max(map(len, per_worker))):
        out += [len(set(q_ids[p[j]])) for p in per_worker if j < len(p)]
    return out


def index_identities(q_ids: np.ndarray, epoch: int = 0) -> list[int]:
    from avtrain.train.data import IndexedBatches, LocatedList, TrainingList

    n = len(q_ids)
    tl = TrainingList(
        "x", Path("x"), "a2v", 1, np.arange(n).astype(str), np.zeros(n, np.int32), np.zeros((n, 1), np.int32),
        np.zeros(n, np.int64), q_ids.astype(np.int32), np.zeros((n, 1), np.int32), ["k"], [],
    )  # fmt: skip
    batches = IndexedBatches(LocatedList(tl, None, tl.query, tl.gallery), B, seed=0)
    batches.set_epoch(epoch)
    return [len(set(q_ids[batches.tuples_of(j)])) for j in range(len(batches))]


def list_identities(tuples: Path, name: str) -> np.ndarray:
    rows = [json.loads(line) for line in (tuples / "index" / f"{name}.jsonl").read_text().splitlines()]
    names = {r: i for i, r in enumerate(sorted({r["query_identity"] for r in rows}))}
    return np.array([names[r["query_identity"]] for r in rows])


# VmHWM: this process's peak RSS (ru_maxrss would keep the forking parent's across exec)
FIT_RSS = """
import json, sys
from itertools import islice
from avtrain.run.config import load_config
from avtrain.train.data import TrainingInput
from avtrain.train.loop import fit
def peak():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
start_mb = peak()
data = TrainingInput(sys.argv[1], "matching_train_a2v_k2", "matching", 2, "a2v", 50, workers=2, items=sys.argv[3])
for _ in islice(data.loader(0), 3):
    pass
input_mb = peak()
cfg = load_config(None, sets=["epochs=1", "batch_size=50", "workers=2", "threads=1", "max_steps_per_epoch=3"])
fit(cfg, sys.argv[1], sys.argv[2], progress=False, items=sys.argv[3])
print(json.dumps({"imports_mb": start_mb, "input_mb": input_mb, "fit_mb": peak()}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, default=40)
    ap.add_argument("--negatives", type=int, default=60, help="a2v k=2 tuples per identity")
    ap.add_argument("--sets", type=int, default=40, help="v2a k=10 tuples per identity")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=10, help="timed batches per input")
    ap.add_argument("--step-batches", type=int, default=4, help="timed training steps per feed")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "bench"))
    from _corpus import synth_shards

    from avdata.cli import main as avdata_main
    from avtrain.methods import Batch, StepContext, build_method
    from avtrain.run.config import TrainConfig
    from avtrain.train.data import EpochSampler, make_loader, to_model_inputs

    torch.set_num_threads(1)
    res: dict = {"identities": args.identities, "workers": args.workers, "batch_size": B}
    lists = {
        "a2v k=2": ("matching_train_a2v_k2", 2, "a2v"),
        "v2a k=10": ("matching_train_v2a_k10", 10, "v2a"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        shards = synth_shards(tmp, args.identities)
        dirs = make_lists(tmp, shards, args.sets, args.negatives)
        store = tmp / "store"
        cli(avdata_main, "cache", "--shards", shards, "--out", store)
        res["setup_s"] = round(time.perf_counter() - t0, 1)
        items = {"stream": None, "shards": shards, "store": store}
        where = {"stream": dirs["with"], "shards": dirs["lean"], "store": dirs["lean"]}

        # 1. input only
        res["input_only"] = {}
        for label, (name, k, direction) in lists.items():
            r = {}
            for mode in ("stream", "shards", "store"):
                data = inputs(where[mode], name, k, direction, mode, args.workers, items[mode])
                r[mode] = rate(endless(data), args.batches, lambda b: None)
                r.setdefault("tuples", data.n_tuples)
            data = inputs(where["store"], name, k, direction, "store", args.workers, store)
            sampler = EpochSampler(len(data.dataset))
            r["store, worker processes"] = rate(
                iter(make_loader(data.dataset, args.workers, False, sampler)), args.batches, lambda b: None
            )
            for mode in ("shards", "store", "store, worker processes"):
                r[f"{mode}/stream"] = r[mode] / r["stream"]
            batch = next(iter(inputs(where["store"], name, k, direction, "store", 0, store).loader(0)))
            nbytes = batch["query"].nbytes + batch["gallery"].nbytes
            src, dst = np.ones(nbytes, np.uint8), np.empty(nbytes, np.uint8)
            t = time.perf_counter()
            for _ in range(10):
                np.copyto(dst, src)
            r["bytes_per_tuple"] = nbytes / B
            r["copy_ceiling"] = 10 * B / (time.perf_counter() - t)
            res["input_only"][label] = r
            print(f"input only {label}: {r}", flush=True)

        # 2. bytes read per epoch (cold cache) and sizes
        res["bytes"] = {
            "tuple_dir_with_tuple_shards": du(dirs["with"]),
            "tuple_dir_index_only": du(dirs["lean"]),
            "item_shards": du(shards),
            "item_store": du(store),
        }
        files = {
            "stream": sorted((dirs["with"] / "shards").glob("*.tar")),
            "shards": sorted(shards.rglob("*.tar")),
            "store": sorted(store.glob("*.npy")),
        }
        for label, (name, k, direction) in lists.items():
            r = {}
            for mode in ("stream", "shards", "store"):
                data = inputs(where[mode], name, k, direction, mode, 0, items[mode])
                evict(files[mode])
                before = read_bytes()
                for _ in data.loader(0):
                    pass
                r[mode] = read_bytes() - before
            r["stream/store"] = r["stream"] / max(1, r["store"])
            r["stream/shards"] = r["stream"] / max(1, r["shards"])
            res["bytes"][f"cold_epoch {label}"] = r
        print(f"bytes: {res['bytes']}", flush=True)

        # 3. identities per batch of 50
        mix = {}
        for label, (name, _, _) in lists.items():
            q = list_identities(dirs["lean"], name)
            s, i = stream_identities(q, 500, args.workers, 200), index_identities(q)
            mix[f"bench {label} ({len(set(q))} ids, {len(q)} tuples)"] = {
                "stream_mean": float(np.mean(s)),
                "stream_min": int(min(s)),
                "index_mean": float(np.mean(i)),
                "index_min": int(min(i)),
            }
        for label, per in (("VoxCeleb1 k=2 (942 x 15)", 15), ("VoxCeleb1 k=10 (942 x 50)", 50)):
            q = np.repeat(np.arange(942), per)
            s, i = stream_identities(q, 500, 2, 200), index_identities(q)
            mix[label] = {
                "stream_mean": float(np.mean(s)),
                "stream_min": int(min(s)),
                "index_mean": float(np.mean(i)),
                "index_min": int(min(i)),
            }
        res["identities_per_batch"] = mix
        print(f"identities: {mix}", flush=True)

        # 4. training step fed from the loader vs from memory
        res["train_step"] = {}
        for label, (name, k, direction) in lists.items():
            cfg = TrainConfig(k=k, direction=direction, batch_size=B)
            torch.manual_seed(0)
            model = build_method(cfg)
            model.train()
            optimizers = model.optimizers(cfg)
            ctx = StepContext(model, d_steps=cfg.d_steps)
            cpu = torch.device("cpu")

            def step(b, direction=direction, model=model, optimizers=optimizers, ctx=ctx):
                q, g, y = to_model_inputs(b, direction, cpu, train=True)
                model.train_step(Batch(q, g, y, direction), optimizers, ctx)

            data = inputs(dirs["lean"], name, k, direction, "store", args.workers, store)
            memory = list(
                islice(
                    endless(inputs(dirs["lean"], name, k, direction, "store", 0, store)),
                    args.step_batches + 2,
                )
            )
            fed = rate(endless(data), args.step_batches, step)
            mem = rate(memory, args.step_batches, step)
            res["train_step"][label] = {"loader": fed, "memory": mem, "loader/memory": fed / mem}
            print(f"train step {label}: {res['train_step'][label]}", flush=True)

        # 5. peak RSS of fit against the number of tuples
        rss = {}
        for neg in (15, 120, 960):
            d = make_lists(tmp, shards, 0, neg, tag=f"-n{neg}", kinds=("lean",))["lean"]
            n = sum(1 for _ in (d / "index" / "matching_train_a2v_k2.jsonl").open())
            out = subprocess.run(
                [sys.executable, "-c", FIT_RSS, str(d), str(tmp / f"run-{neg}"), str(store)],
                capture_output=True, text=True, check=True, cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)},
            )  # fmt: skip
            rss[n] = json.loads(out.stdout.strip().splitlines()[-1])
        res["fit_peak_rss_mb"] = rss
        print(f"peak RSS: {rss}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    sys.exit(main())
