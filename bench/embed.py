"""Benchmark `avtrain embed` (raw media -> 128-d) against `avtrain evaluate`'s shard path, CPU.

Same run (randomly initialised AML; the forward cost does not depend on the weights), same
files, same batch size, same torch thread count, timed in one process in alternation:

  (a) shard path   avtrain.evaluation.embeddings.embed_items over the built shards (tar read, JPEG/npy
                   decode, normalise, forward): what evaluate pays per item
  (b) raw media    avtrain.serve.embed.embed_files over the corpus trees (wav decode +
                   spectrogram recipe, image decode + MTCNN alignment + shard JPEG round trip,
                   normalise, forward): what embed/score/match pay per item

Items: the corpus's voices (first window) and face photos; items/s per path, per modality, and
the ratio (b)/(a). Median of --repeats.

    .venv/bin/python bench/embed.py [--identities 16] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build(tmp: Path, identities: int) -> tuple[Path, Path, Path]:
    from _corpus import random_run, synth_shards

    synth_shards(tmp, identities)
    return tmp / "corpus", tmp / "shards", random_run(tmp / "run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--identities", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from avdata.reader import index_items
    from avtrain.evaluation.embeddings import embed_items
    from avtrain.run.checkpoint import load_run
    from avtrain.serve.embed import embed_files
    from avtrain.serve.model import load_model

    with tempfile.TemporaryDirectory() as d:
        corpus, shards, run = build(Path(d), args.identities)
        items = index_items(shards)
        items = items[(items["modality"] == "face") | items["key"].str.endswith("_w0")]
        shard_model, _, _ = load_run(run, torch.device("cpu"))
        raw_model = load_model(run, "cpu")
        embed_files(raw_model, [corpus / "wav"], [], [], args.batch_size)  # warm-up: MTCNN built, caches
        times: dict[str, list[float]] = {
            k: [] for k in ("shard_audio", "shard_face", "raw_audio", "raw_face")
        }
        cpu: dict[str, list[float]] = {k: [] for k in times}  # process CPU time: less hurt by other load
        n: dict[str, int] = {}
        for _ in range(args.repeats):
            for mod in ("audio", "face"):
                sub = items[items["modality"] == mod]
                t, c = time.perf_counter(), time.process_time()
                emb = embed_items(shard_model, sub, shards, args.batch_size, torch.device("cpu"), set())
                times[f"shard_{mod}"].append(time.perf_counter() - t)
                cpu[f"shard_{mod}"].append(time.process_time() - c)
                n[f"shard_{mod}"] = len(emb.keys[mod])
                t, c = time.perf_counter(), time.process_time()
                res = embed_files(
                    raw_model,
                    [corpus / "wav"] if mod == "audio" else [],
                    [corpus / "faces"] if mod == "face" else [],
                    [],
                    args.batch_size,
                )
                times[f"raw_{mod}"].append(time.perf_counter() - t)
                cpu[f"raw_{mod}"].append(time.process_time() - c)
                n[f"raw_{mod}"] = len(res.voice_keys if mod == "audio" else res.face_keys) + len(res.rejects)
        out = {
            "identities": args.identities,
            "threads": args.threads,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "items": n,
        }
        for clock, measured in (("wall", times), ("cpu", cpu)):
            med = {k: statistics.median(v) for k, v in measured.items()}
            rates = {}
            for path in ("shard", "raw"):
                for mod in ("audio", "face"):
                    rates[f"{path}_{mod}"] = round(n[f"{path}_{mod}"] / med[f"{path}_{mod}"], 1)
                total = n[f"{path}_audio"] + n[f"{path}_face"]
                rates[f"{path}_all"] = round(total / (med[f"{path}_audio"] + med[f"{path}_face"]), 1)
            for key in ("audio", "face", "all"):
                rates[f"ratio_raw_over_shard_{key}"] = round(rates[f"raw_{key}"] / rates[f"shard_{key}"], 4)
            out[f"items_per_s_{clock}"] = rates
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
