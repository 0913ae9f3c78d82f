"""Benchmark the training input: tuples/s delivered as batches.

  (a) stream     our tuple shards: TupleStream + DataLoader workers
  (b) reference  what the AML reference does per item, same tuples: librosa spectrogram
                 from the raw wav + PIL decode and resize of the raw face photo, in a
                 map-style Dataset with the same DataLoader workers
  (c) memory     the same batches already in memory (the limit)

Two consumers: "input only" takes each batch and drops it (what the loader can
deliver); "train step" runs to_model_inputs and a full CPU training step on it (how
much of the step rate each input keeps; (c) there is the step rate itself).

    .venv/bin/python bench/loader.py [--identities 24] [--workers 2] [--batch-size 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def build_data(tmp: Path, identities: int) -> Path:
    from _corpus import synth_shards
    from click.testing import CliRunner

    from avdata.cli import main

    synth_shards(tmp, identities)
    for args in (
        [
            "make-tuples",
            "--shards",
            tmp / "shards",
            "--task",
            "matching",
            "--split",
            "train",
            "--k",
            "2",
            "--direction",
            "a2v",
            "--out",
            tmp / "tuples",
            "--tuples-per-shard",
            "100",
            "--negatives-per-positive",
            "60",
        ],
    ):
        res = CliRunner().invoke(main, [str(a) for a in args])
        if res.exit_code:
            raise SystemExit(res.output)
    return tmp


class ReferenceDataset(torch.utils.data.Dataset):
    """Per item, as the reference: librosa.load(sr=22050) -> recipe; PIL open -> RGB -> resize 224."""

    def __init__(self, tuples: list[dict], sources: dict[str, str]):
        self.tuples, self.sources = tuples, sources

    def __len__(self):
        return len(self.tuples)

    def _spec(self, path):
        import librosa

        y, _ = librosa.load(path, sr=22050)
        y = y - y.mean()
        y = np.append(y[0], y[1:] - 0.97 * y[:-1])
        S = np.abs(librosa.stft(y, n_fft=2048, hop_length=512))
        D = librosa.amplitude_to_db(S, ref=np.max, top_db=80)[:224, :125]
        if D.shape[1] < 125:
            D = np.pad(D, ((0, 0), (0, 125 - D.shape[1])), mode="wrap")
        return D.astype(np.float32)

    def _face(self, path):
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((224, 224), Image.BILINEAR))

    def __getitem__(self, i):
        t = self.tuples[i]
        q = self._spec(self.sources[t["query"]])
        g = np.stack([self._face(self.sources[k]) for k in t["gallery"]])
        return q, g, t["label"], t["tuple_id"]


def rate(loader, n_batches, consume) -> float:
    it = iter(loader)
    first = next(it)  # worker start-up is not the steady state
    consume(first)
    t, n = time.perf_counter(), 0
    for b in islice(it, n_batches):
        consume(b)
        n += len(b["label"])
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--batches", type=int, default=12, help="timed batches per loader")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from avdata.reader import index_items
    from avtrain.methods import Batch, StepContext, build_method
    from avtrain.run.config import TrainConfig
    from avtrain.train.data import (
        TupleStream,
        collate,
        load_sizes,
        make_loader,
        to_model_inputs,
    )

    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = build_data(Path(tmp), args.identities)
        urls, sizes = load_sizes(tmp / "tuples", "matching_train_a2v_k2")
        n_tuples = sum(sizes.values())
        B, W = args.batch_size, args.workers
        stream = TupleStream(urls, B, seed=0)
        batches = max(1, min(args.batches, n_tuples // B - W - 1))

        # a stream that never runs dry: cycle epochs
        def stream_loader():
            epoch = 0
            while True:
                stream.set_epoch(epoch)
                yield from make_loader(stream, W, pin_memory=False)
                epoch += 1

        inputs = lambda b: to_model_inputs(b, "a2v", cpu, train=True)
        drop = lambda b: None
        r_stream = rate(stream_loader(), batches, drop)

        items = index_items(tmp / "shards")
        roots = {"audio": tmp / "corpus" / "wav", "face": tmp / "corpus" / "faces"}
        sources = {k: str(roots[m] / s) for k, m, s in zip(items["key"], items["modality"], items["source"])}
        tuples = [
            json.loads(l)
            for l in (tmp / "tuples" / "index" / "matching_train_a2v_k2.jsonl").read_text().splitlines()
        ]
        ref = torch.utils.data.DataLoader(
            ReferenceDataset(tuples, sources),
            batch_size=B,
            shuffle=True,
            num_workers=W,
            collate_fn=collate,
            drop_last=True,
            generator=torch.Generator().manual_seed(0),
        )

        def ref_loader():
            while True:
                yield from ref

        r_ref = rate(ref_loader(), batches, drop)
        memory = list(islice(stream_loader(), batches + 1))

        cfg = TrainConfig(batch_size=B)
        model = build_method(cfg)
        model.train()
        optimizers = model.optimizers(cfg)
        ctx = StepContext(model, d_steps=cfg.d_steps)

        def step(b):  # the step fit runs (D steps + clipping, then the encoder step)
            q, g, lab = inputs(b)
            model.train_step(Batch(q, g, lab, "a2v"), optimizers, ctx)

        r_stream_step = rate(stream_loader(), batches, step)
        r_ref_step = rate(ref_loader(), batches, step)
        r_mem_step = rate(iter(memory), batches, step)

    res = {
        "tuples": n_tuples,
        "batch_size": B,
        "workers": W,
        "timed_batches": batches,
        "input_only": {"stream": r_stream, "reference": r_ref},
        "train_step": {"stream": r_stream_step, "reference": r_ref_step, "memory": r_mem_step},
    }
    print(
        f"training input, matching k=2 a2v, batch {B}, {W} workers, {batches} timed batches, 1 torch thread (trainer)"
    )
    print(f"{'':22}{'input only':>12}{'train step':>12}   tuples/s")
    print(f"{'(a) stream':22}{r_stream:12.1f}{r_stream_step:12.1f}")
    print(f"{'(b) reference-style':22}{r_ref:12.1f}{r_ref_step:12.1f}")
    print(f"{'(c) in memory':22}{'-':>12}{r_mem_step:12.1f}")
    print(f"input only: (a)/(b) = {r_stream / r_ref:.1f}x")
    print(f"train step: (a)/(c) = {r_stream_step / r_mem_step:.2f}, (b)/(c) = {r_ref_step / r_mem_step:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    sys.exit(main())
