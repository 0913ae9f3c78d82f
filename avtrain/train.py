"""avtrain fit: AML trained from streamed tuple shards (Algorithm 1 of the paper).

One step on a batch of tuples:
  1. forward the encoders + generator + head once: h_query, h_gallery, logits;
  2. T discriminator steps on the detached h (modality cross-entropy), weights clipped;
  3. one encoder/generator/head step on L_total - L_dis (fool the fixed discriminator).
The encoder learning rate decays logarithmically lr_start -> lr_end over the run.

Runs on CPU or CUDA (bf16 autocast, channels-last, non-blocking copies), and under
``torchrun`` with DistributedDataParallel (gloo on CPU, NCCL on GPU). A checkpoint is
written atomically after every epoch with optimiser, scheduler and RNG state, so
``--resume`` continues a killed run to the same final weights.
"""

from __future__ import annotations

import json
import math
import os
import time
from itertools import islice
from pathlib import Path

import torch
import torch.distributed as dist

from avtrain.config import TrainConfig, save_config
from avtrain.data import TupleStream, batches_per_rank, load_sizes, make_loader, to_model_inputs
from avtrain.losses import AMLLoss, LossConfig
from avtrain.models import AML, ModelConfig

CHECKPOINT = "checkpoint.pt"
LOG_TERMS = ("L_total", "L_dis", "L_metric", "L_cls", "L_adv")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(cfg: TrainConfig) -> AML:
    return AML(ModelConfig(task=cfg.task, k=cfg.k, shared_generator=cfg.shared_generator, clip_value=cfg.clip_value))


def build_loss(cfg: TrainConfig) -> AMLLoss:
    return AMLLoss(LossConfig(task=cfg.task, lambda_margin=cfg.lambda_margin, beta=cfg.beta, gamma=cfg.gamma,
                              metric=cfg.metric, adversarial=cfg.adversarial, metric_kind=cfg.metric_kind,
                              adversarial_kind=cfg.adversarial_kind, lifted_squared=cfg.lifted_squared,
                              dis_reduction=cfg.dis_reduction))


def log_decay(total_steps: int, lr_start: float, lr_end: float):
    """Multiplier for LambdaLR: lr_start at step 0, lr_end at the last step, geometric between."""
    span = max(1, total_steps - 1)
    return lambda step: (lr_end / lr_start) ** (min(step, span) / span)


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a killed run never leaves a half-written checkpoint


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects


class Distributed:
    """Rank/world from torchrun's environment; a no-op on a single process."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def average_grads(self, params) -> None:
        if self.enabled:
            for p in params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world

    def close(self):
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def fit(cfg: TrainConfig, tuples_dir: str | Path, out: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train; returns a summary (final losses, steps, samples/s)."""
    out = Path(out)
    device = pick_device(cfg.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    ddp = Distributed(device)
    is_main = ddp.rank == 0
    # Oversubscribed cores cost 10x here: leave one core per loader worker.
    cores = max(1, (os.cpu_count() or 1) // ddp.world)
    torch.set_num_threads(cfg.threads or max(1, cores - cfg.workers))
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")

    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    cuda = device.type == "cuda"
    if cuda and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg)
    opt_g = torch.optim.Adam(model.encoder_parameters(), lr=cfg.lr_start, weight_decay=cfg.weight_decay)
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=cfg.lr_dis, weight_decay=cfg.weight_decay)

    urls, sizes = load_sizes(tuples_dir, cfg.tuples)
    workers = cfg.workers
    steps_per_epoch = [batches_per_rank(urls, sizes, cfg.batch_size, cfg.seed, e, ddp.world, workers)
                       for e in range(cfg.epochs)]
    if cfg.max_steps_per_epoch:
        steps_per_epoch = [min(s, cfg.max_steps_per_epoch) for s in steps_per_epoch]
    if min(steps_per_epoch) == 0:
        raise ValueError(f"{tuples_dir}: {sum(sizes.values())} tuples give no full batch of {cfg.batch_size} "
                         f"per rank ({ddp.world} rank(s) x {max(1, workers)} worker(s)); lower --set batch_size")
    sched = torch.optim.lr_scheduler.LambdaLR(opt_g, log_decay(sum(steps_per_epoch), cfg.lr_start, cfg.lr_end))

    start_epoch, step = 0, 0
    ckpt_path = out / CHECKPOINT
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        if state["config"] != cfg.to_dict():
            raise ValueError(f"{ckpt_path}: saved config differs from this run's; resume with the same settings")
        model.load_state_dict(state["model"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["torch_rng"])
        if cuda and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        start_epoch, step = state["epoch"], state["step"]

    net = model
    if ddp.enabled:
        # The discriminator has its own optimiser and backward pass; DDP handles the
        # encoders/generator/head, the discriminator's grads are averaged by hand.
        ignore = [f"discriminator.{n}" for n, _ in model.discriminator.named_parameters()]
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignore)
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)

    stream = TupleStream(urls, cfg.batch_size, cfg.seed, ddp.rank, ddp.world, cfg.shuffle_buffer)
    log_file = open(out / "log.jsonl", "a") if is_main else None
    audit = None
    if cfg.record_batches:  # which tuples each rank read, to audit DDP splitting
        out.mkdir(parents=True, exist_ok=True)
        audit = open(out / f"batches-rank{ddp.rank}.jsonl", "a")
    tb = None
    if is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(out / "tb"))
        except ImportError:  # tensorboard is optional: the JSONL log has the same numbers
            tb = None
    from tqdm import tqdm

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (cuda and cfg.amp) else torch.autocast("cpu", enabled=False)
    last = {}
    samples_seen, t_start = 0, time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        stream.set_epoch(epoch)
        loader = make_loader(stream, workers, pin_memory=cuda)
        flips = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        bar = tqdm(total=steps_per_epoch[epoch], desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not (progress and is_main), dynamic_ncols=True)
        for batch in islice(loader, steps_per_epoch[epoch]):
            if audit:
                audit.write(json.dumps({"epoch": epoch, "keys": batch["keys"]}) + "\n")
            query, gallery, label = to_model_inputs(batch, cfg.direction, device, train=True, flip_generator=flips,
                                                    channels_last=cuda and cfg.channels_last)
            with autocast:
                out_ = net(query, gallery, cfg.direction)
            out_ = {k: (v.float() if torch.is_tensor(v) else v) for k, v in out_.items()}
            d_terms = {}
            if loss_fn.uses_discriminator:
                for _ in range(cfg.d_steps):
                    d_terms = loss_fn.discriminator_loss(out_, model.discriminator)
                    opt_d.zero_grad(set_to_none=True)
                    d_terms["L_dis"].backward()
                    ddp.average_grads(model.discriminator.parameters())
                    opt_d.step()
                    if cfg.clip_value:
                        model.discriminator.clip_weights(cfg.clip_value)
            e_terms = loss_fn.encoder_loss(out_, label, model.discriminator)
            opt_g.zero_grad(set_to_none=True)
            e_terms["objective"].backward()
            opt_g.step()
            sched.step()
            step += 1
            samples_seen += label.shape[0] * ddp.world
            last = {k: float(e_terms[k].detach()) for k in LOG_TERMS}
            if d_terms:
                last["L_dis_step"] = float(d_terms["L_dis"].detach())
            if is_main and step % cfg.log_every == 0:
                rate = samples_seen / (time.perf_counter() - t_start)
                rec = {"epoch": epoch, "step": step, "lr": sched.get_last_lr()[0], "samples_per_s": round(rate, 2), **last}
                log_file.write(json.dumps(rec) + "\n")
                if tb:
                    for k, v in last.items():
                        tb.add_scalar(f"loss/{k}", v, step)
                bar.set_postfix(L_total=f"{last['L_total']:.3f}", L_dis=f"{last['L_dis']:.3f}",
                                tuples_s=f"{rate:.0f}", refresh=False)
            bar.update(1)
        bar.close()
        if is_main:
            log_file.flush()
            state = {"config": cfg.to_dict(), "model": model.state_dict(), "opt_g": opt_g.state_dict(),
                     "opt_d": opt_d.state_dict(), "sched": sched.state_dict(), "epoch": epoch + 1, "step": step,
                     "torch_rng": torch.get_rng_state()}
            if cuda:
                state["cuda_rng"] = torch.cuda.get_rng_state()
            save_checkpoint(ckpt_path, state)
        if ddp.enabled:
            dist.barrier()
    for f in (log_file, audit):
        if f:
            f.close()
    if tb:
        tb.close()
    elapsed = time.perf_counter() - t_start
    ddp.close()
    return {"epochs": cfg.epochs, "steps": step, "final": last, "device": str(device),
            "tuples_per_s": samples_seen / elapsed if elapsed > 0 else math.nan}
