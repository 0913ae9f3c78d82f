"""Which hidden attributes of the synthetic corpus does a trained run encode, per modality?

For a demo directory (``make demo DEMO=DIR``: ``DIR/corpus/attributes.json``,
``DIR/shards-matching``, ``DIR/runs/aml``), embed up to ``--per-identity`` items per identity
and modality, fit a ridge regression (``RidgeCV``) from the embedding to each hidden
attribute on the *training* identities and print R^2 on the *test* identities (never seen in
training), for the branch features (3200-d, before the generator) and the shared embedding h
(128-d, after it). A factor that one modality encodes and the other does not cannot help
matching. With ``--spectrum`` it also prints the same R^2 for a model-free baseline: the
time-averaged spectrum of the loudest half of each spectrogram window plus its energy
modulation spectrum (what a linear read of the audio input alone gives).

attributes.json is ground truth for analysis only; nothing in training reads it.

    .venv/bin/python bench/probe_attributes.py DIR [--run DIR/runs/aml] [--per-identity 6] [--spectrum]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

FACTORS = ["male", "pitch", "vocal_tract", "brightness", "breathiness", "tempo", "age"]


def targets(att: dict, vox_ids) -> np.ndarray:
    return np.array([[att[i]["gender"] == "m"] + [att[i][n] for n in FACTORS[1:]] for i in vox_ids], float)


def r2_on_test(X: np.ndarray, Y: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import RidgeCV

    model = RidgeCV(alphas=np.logspace(-2, 5, 15)).fit(X[train], Y[train])
    pred = model.predict(X[test])
    return 1 - ((pred - Y[test]) ** 2).sum(0) / ((Y[test] - Y[test].mean(0)) ** 2).sum(0)


def line(label: str, r2: np.ndarray) -> str:
    return f"{label:24s}" + " ".join(f"{n}={v:5.2f}" for n, v in zip(FACTORS, r2))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", type=Path, help="a `make demo DEMO=...` directory")
    ap.add_argument("--run", type=Path, default=None, help="trained run (default DEMO/runs/aml)")
    ap.add_argument("--per-identity", type=int, default=6, help="items per identity and modality")
    ap.add_argument("--spectrum", action="store_true", help="also probe the raw spectrogram (no model)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from avdata.reader import decode_npy, index_items, read_member
    from avtrain.evaluation.embeddings import embed_items
    from avtrain.run.checkpoint import load_run

    shards = args.demo / "shards-matching"
    att = {
        a["vox_id"]: a
        for a in json.loads((args.demo / "corpus" / "attributes.json").read_text())["identities"]
    }
    items = index_items(shards).sort_values("key", kind="mergesort")
    items = items[items.groupby(["vox_id", "modality"]).cumcount() < args.per_identity]
    split_of = dict(zip(items["vox_id"], items["split"]))
    print(
        f"{args.demo}: R^2 on test identities of a ridge fit on training identities "
        f"({args.per_identity} items per identity and modality)"
    )

    if args.spectrum:
        audio = items[items["modality"] == "audio"]
        X = []
        for r in audio.itertuples():
            x = decode_npy(read_member(shards / r.tar, int(r.data_offset), int(r.data_size)))
            energy = x.max(0)
            loud = energy > np.percentile(energy, 50)
            modulation = np.abs(np.fft.rfft(energy - energy.mean()))[:40]
            X.append(np.r_[x[:, loud].mean(1), np.log(modulation + 1e-3)])
        split = audio["split"].to_numpy()
        print(
            line(
                "spectrum (no model)",
                r2_on_test(np.array(X), targets(att, audio["vox_id"]), split == "train", split == "test"),
            )
        )

    model, _state, _cfg = load_run(args.run or args.demo / "runs" / "aml", torch.device("cpu"))
    emb = embed_items(model, items, shards, 64, torch.device("cpu"), keep_features=set(items["key"]))
    for what in ("features", "h"):
        for modality in ("audio", "face"):
            keys, ids = emb.keys[modality], emb.ids[modality]
            X = emb.h[modality] if what == "h" else np.stack([emb.features[modality][k] for k in keys])
            split = np.array([split_of[i] for i in ids])
            print(
                line(
                    f"{modality} {what}", r2_on_test(X, targets(att, ids), split == "train", split == "test")
                )
            )


if __name__ == "__main__":
    main()
