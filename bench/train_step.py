"""Benchmark full AML training steps (forward, T discriminator steps, encoder step).

Tuples/s on random in-memory batches of the real input shapes, per task/k, against a
baseline in the same run: the encoder step alone (no adversarial term). On CUDA it
also runs bf16 autocast + channels-last, the trainer's GPU settings.

    .venv/bin/python bench/train_step.py [--device cpu|cuda] [--threads 2] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def make_batch(task: str, k: int, B: int, device):
    q = torch.randn(B, 1, 224, 125, device=device) * 20 - 40  # dB-like spectrograms
    g = torch.rand(B, k, 3, 224, 224, device=device) * 2 - 1  # normalised faces
    labels = torch.randint(0, 2 if task == "verification" else k, (B,), device=device)
    return q, g, labels


def run(task: str, k: int, B: int, steps: int, device, adversarial: bool, amp: bool) -> float:
    """Tuples/s of the method's train_step (the step fit runs), with fit's optimisers."""
    from avtrain.methods import Batch, StepContext, build_method
    from avtrain.run.config import TrainConfig

    cfg = TrainConfig.from_dict({"task": task, "k": k, "batch_size": B, "loss": {"adversarial": adversarial}})
    model = build_method(cfg).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizers = model.optimizers(cfg)
    q, g, lab = make_batch(task, cfg.k, B, device)
    if cuda:
        q = q.contiguous(memory_format=torch.channels_last)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if (cuda and amp)
        else torch.autocast("cpu", enabled=False)
    )

    ctx = StepContext(model, autocast, d_steps=cfg.d_steps)
    batch = Batch(q, g if cfg.k > 1 else g[:, 0], lab, "a2v")

    def step():
        model.train_step(batch, optimizers, ctx)

    for _ in range(2):
        step()
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return steps * B / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    rows = {}
    for task, k in (("matching", 2), ("matching", 10), ("verification", 1), ("retrieval", 10)):
        full = run(task, k, args.batch_size, args.steps, device, adversarial=True, amp=True)
        base = run(task, k, args.batch_size, args.steps, device, adversarial=False, amp=True)
        rows[f"{task} k={k}"] = {"aml": full, "no_adversarial": base}
    print(f"AML training steps, batch {args.batch_size}, {name}")
    print(f"{'':18}{'AML tuples/s':>14}{'no-adv tuples/s':>17}{'ratio':>8}{'s/tuple':>10}")
    for k, r in rows.items():
        print(
            f"{k:18}{r['aml']:14.1f}{r['no_adversarial']:17.1f}{r['aml'] / r['no_adversarial']:8.2f}{1 / r['aml']:10.4f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
