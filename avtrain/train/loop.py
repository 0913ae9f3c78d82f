"""avtrain fit: any method of :mod:`avtrain.methods` trained on a tuple list read by index.

The loop never names a method: it builds ``cfg.method`` (:func:`avtrain.methods.build_method`),
takes its named optimisers, and hands each batch to ``method.train_step`` (AML's is Algorithm 1
of the paper: forward once, T discriminator steps, one encoder/generator/head step), logging the
loss terms the step returns. The first optimiser's learning rate decays logarithmically
lr_start -> lr_end over the run.

With validation lists (``--val-tuples`` and/or ``--val-shards``) the val identities are scored every ``val_every``
epochs with the code of ``avtrain evaluate`` (−L2 rule); ``best.pt`` keeps the best epoch
by ``select``, ``patience`` stops early.

The input (:mod:`avtrain.train.data`): the training list by its exact name, its items read by
key from ``items`` (a decoded item store or the item shards; else the tuple directory's tuple
shards), each epoch a seeded permutation of all tuples; or, with ``tuple_shards``, the tuple
shards streamed.

Runs on CPU or CUDA (bf16 autocast, channels-last, non-blocking copies, pinned memory, optional
``cudnn_benchmark``), and under
``torchrun`` with DistributedDataParallel (gloo on CPU, NCCL on GPU). A checkpoint is
written atomically after every epoch with optimiser, scheduler and RNG state, so
``--resume`` continues a killed run to the same final weights. Every setting, the data and
the checkpoint to resume from are checked before the run directory is created. Every checkpoint
records what the run trained on, from the manifests (:mod:`avtrain.run.data_record`): the item
shards' extraction settings, which serving preprocesses raw media with, and the lists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import threading
import time
from itertools import islice
from pathlib import Path

import torch
import torch.distributed as dist

from avdata.errors import AvmatchError
from avdata.io import (
    DISK_FULL,
    appending,
    atomic_output,
    check_output_dir,
    directory_lock,
    disk_full_errors,
    make_output_dir,
    remove_stale_temps,
)
from avtrain.methods import Batch, StepContext, build_method, get_method
from avtrain.methods.encoders import frozen_encoders
from avtrain.run.checkpoint import (
    BEST,
    LAST,
    CheckpointError,
    UnsafeCheckpointError,
    epoch_name,
    load_checkpoint,
    pick_device,
    remove_checkpoint,
    save_checkpoint,
    saved_config,
    saved_labels,
)
from avtrain.run.config import RESUMABLE_CHANGES, TrainConfig, save_config
from avtrain.run.data_record import RECORD_KEY, run_data_record
from avtrain.train.data import TrainingInput, label_space, to_model_inputs
from avtrain.train.features import open_features, print_leakage

RESUME_KEYS = ("sched", "torch_rng")  # besides checkpoint.REQUIRED_KEYS and the method's optimisers

__all__ = ["TrainingError", "fit", "lr_at", "to_batch"]


class TrainingError(AvmatchError):
    """A run that cannot start or go on (data, resume state): one line for the CLI."""


def to_batch(
    batch: dict, cfg: TrainConfig, device, labels=None, flip_generator=None, channels_last=False
) -> Batch:
    """A loader batch as the seam's :class:`~avtrain.methods.Batch` on the device (normalised,
    training face flips drawn from ``flip_generator``)."""
    query, gallery, label = to_model_inputs(
        batch,
        cfg.direction,
        device,
        train=True,
        flip_generator=flip_generator,
        channels_last=channels_last,
        frozen=frozenset(frozen_encoders(cfg.model)),
    )
    return Batch(
        query,
        gallery,
        label,
        cfg.direction,
        batch.get("query_identities", []),
        batch.get("gallery_identities", []),
        labels,
    )


# --------------------------------------------------------------------------- learning rate


def _lr_multiplier(step: int, plan: list, lr_start: float, lr_end: float) -> float:
    s0, l0, total = plan[0]
    for point in plan:
        if step >= point[0]:
            s0, l0, total = point
    span = max(1, int(total) - 1 - int(s0))
    # a fresh run: exactly (lr_end / lr_start) ** (step / span), as before plans existed
    return (l0 / lr_start) * (lr_end / l0) ** (min(step - s0, span) / span)


def lr_at(step: int, plan: list, lr_start: float, lr_end: float) -> float:
    """Encoder LR at ``step`` from the plan, a list of [first step, LR there, total steps]:
    log-linear decay from each point's LR to lr_end at its total's last step. A fresh run's
    plan is [[0, lr_start, total]]; growing ``epochs`` on resume appends [step, LR at step,
    new total], so the steps taken keep their LR and the LR goes on from where it was down to
    lr_end at the new end (a finished run, already at lr_end, goes on at lr_end)."""
    return lr_start * _lr_multiplier(step, plan, lr_start, lr_end)


def _lambda(plan, lr_start, lr_end):
    return lambda step: _lr_multiplier(step, plan, lr_start, lr_end)


# --------------------------------------------------------------------------- DDP


def is_main_rank() -> bool:
    """Rank 0 of a torchrun job, or a single process (before the process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


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


# --------------------------------------------------------------------------- setup


def _resume_state(cfg: TrainConfig, path: Path) -> dict:
    """The checkpoint to continue from, after checking that only resumable settings differ."""
    state = load_checkpoint(path)  # checksum + weights_only + every field's type: one line on a bad file
    saved = saved_config(path, state)
    optimizers = get_method(cfg.method).optimizer_names if saved.method == cfg.method else ()
    missing = [k for k in (*optimizers, *RESUME_KEYS) if k not in state]
    if missing:
        raise CheckpointError(f"{path}: cannot resume from it: no {', '.join(missing)} (not saved by fit)")
    diffs = saved.differences(cfg)
    # read by index, the batches do not depend on the number of loader workers
    resumable = RESUMABLE_CHANGES + (() if cfg.tuple_shards else ("workers",))
    blocking = [d for d in diffs if d.split(":", 1)[0] not in resumable]
    if cfg.epochs < saved.epochs:
        blocking.append(f"epochs: {saved.epochs} -> {cfg.epochs} (epochs can only grow on resume)")
    if cfg.epochs < state["epoch"]:
        blocking.append(f"the checkpoint is already at epoch {state['epoch']}")
    if blocking:
        raise TrainingError(
            f"{path}: cannot resume with other settings: {'; '.join(blocking)}. "
            "Resume with the saved settings (RUN/config.yaml) or train into a new --out"
        )
    return state


def _best_needs_repair(path: Path, state: dict) -> bool:
    """Whether RUN/best.pt must be rewritten from the checkpoint to resume from.

    Each epoch saves checkpoint.pt, then best.pt when the epoch was the best; a run killed
    between the two leaves best.pt an epoch (or more) behind the best epoch that checkpoint.pt
    records (``best.epoch``). That checkpoint is then the best one itself, so best.pt is repaired
    from it (True). A best.pt that disagrees otherwise cannot be rebuilt: one-line error."""
    want = state.get("best", {}).get("epoch")
    if want is None:
        return False
    best = path.with_name(BEST)
    try:
        have = f"epoch {load_checkpoint(best)['epoch']}" if best.is_file() else "missing"
    except (CheckpointError, UnsafeCheckpointError) as exc:  # damaged, or a save cut short
        have = f"unreadable ({exc})"
    if have == f"epoch {want}":
        return False
    if want == state["epoch"]:
        return True
    raise CheckpointError(
        f"{best}: {have}, but {path.name} records the best {state['best']['metric']} at epoch {want} "
        f"and is epoch {state['epoch']}, so best.pt cannot be rebuilt; restore best.pt or train into a new --out"
    )


def _restore(path: Path, state: dict, model, optimizers: dict, sched, cuda: bool) -> None:
    """Load a resume checkpoint's weights, optimizer, scheduler and RNG states, each checked
    against what this run's own objects hold first (a value of the wrong type or shape would
    otherwise fail steps later, mid-epoch, with a traceback): one-line CheckpointError."""

    def refuse(problem: str):
        raise CheckpointError(f"{path}: cannot resume from it: {problem}")

    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        refuse(f"the weights do not fit the model of its config ({first[:160]})")
    for name, opt in optimizers.items():
        problem = _optimizer_state_problem(opt, state[name])
        if problem:
            refuse(f"{name}: {problem}")
        opt.load_state_dict(state[name])
    fresh, saved = sched.state_dict(), state["sched"]
    for key, value in saved.items():
        if key not in fresh:
            refuse(f"sched has an unknown field {str(key)[:40]!r}")
        if not _plain(value):
            refuse(f"sched.{key} is a {type(value).__name__}, not a plain value")
        if key in ("base_lrs", "lr_lambdas") and value != fresh[key]:
            refuse(f"sched.{key} is not this run's")
        if isinstance(fresh[key], list):
            if not (
                isinstance(value, list)
                and len(value) == len(fresh[key])
                and all(_finite_number(v) for v in value if v is not None)
            ):
                refuse(f"sched.{key} is not a list of {len(fresh[key])} number(s)")
        elif type(value) is not type(fresh[key]):
            refuse(f"sched.{key} is a {type(value).__name__}, expected a {type(fresh[key]).__name__}")
    if saved.get("last_epoch") != state["step"]:
        refuse(f"sched.last_epoch {saved.get('last_epoch')!r} is not the checkpoint's step {state['step']}")
    sched.load_state_dict(saved)
    if state["torch_rng"].numel() != torch.get_rng_state().numel():
        refuse(f"torch_rng holds {state['torch_rng'].numel()} bytes, not {torch.get_rng_state().numel()}")
    torch.set_rng_state(state["torch_rng"])
    if cuda and "cuda_rng" in state:
        try:
            torch.cuda.set_rng_state(state["cuda_rng"])
        except RuntimeError as exc:
            refuse(f"cuda_rng is not a CUDA RNG state ({str(exc).strip()[:120]})")


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _plain(v) -> bool:
    """None, a bool, number or string, or a list/tuple of those: values compared with ``==``
    (a tensor there would make the comparison itself fail)."""
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    return v is None or isinstance(v, (bool, int, float, str))


def _optimizer_state_problem(opt, saved: dict) -> str | None:
    """Why an Adam state dict does not fit ``opt`` (built from the same config), or None: the
    same parameter groups with the same settings (the LR a finite number > 0), and per parameter
    exactly the step counter and moment tensors of that parameter's shape."""
    fresh = opt.state_dict()
    if len(saved["param_groups"]) != len(fresh["param_groups"]):
        return f"{len(saved['param_groups'])} parameter group(s), expected {len(fresh['param_groups'])}"
    params = {}
    for i, (got, want) in enumerate(zip(saved["param_groups"], fresh["param_groups"])):
        if not _plain(got.get("params")) or got["params"] != want["params"]:
            return f"param_groups[{i}] holds other parameters than the model's"
        params.update(zip(want["params"], opt.param_groups[i]["params"]))
        if not _finite_number(got.get("lr")) or not got["lr"] > 0:
            return f"param_groups[{i}].lr is not a number > 0"
        for key, value in want.items():
            if key not in ("params", "lr") and key in got and (not _plain(got[key]) or got[key] != value):
                return f"param_groups[{i}].{key} is {str(got[key])[:40]!r}, this run's is {value!r}"
    for pid, entry in saved["state"].items():
        if pid not in params:
            return f"state for an unknown parameter {str(pid)[:20]!r}"
        moments = {"exp_avg", "exp_avg_sq"} | (
            {"max_exp_avg_sq"} if fresh["param_groups"][0]["amsgrad"] else set()
        )
        if not isinstance(entry, dict) or set(entry) != moments | {"step"}:
            return f"state[{pid}] does not hold exactly {', '.join(sorted(moments | {'step'}))}"
        if not all(torch.is_tensor(t) and t.is_floating_point() for t in entry.values()):
            return f"state[{pid}] holds a value that is not a float tensor"
        if entry["step"].numel() != 1:
            return f"state[{pid}].step is not a single number"
        if any(entry[m].shape != params[pid].shape for m in moments):
            return f"state[{pid}] moments are not of the parameter's shape {tuple(params[pid].shape)}"
    return None


def _val_setup(cfg: TrainConfig, tuples_dir, val_tuples, val_shards, frozen=None):
    """The validation set and the item shards it reads (or None, None), prepared before anything
    is written. ``--val-tuples DIR`` alone validates on the item shards DIR's lists were drawn from,
    found through DIR's manifest (:func:`avtrain.run.data_record.locate_item_shards`);
    ``--val-shards`` overrides them (and alone validates on the training tuple directory's lists).
    ``frozen``: the run's feature stores, which must hold the validation items too."""
    if val_shards is None and val_tuples is None:
        return None, None
    from avtrain.evaluation.evaluate import EvaluationError, ValidationSet
    from avtrain.run.data_record import locate_item_shards

    if val_shards is None:
        val_shards, why = locate_item_shards(val_tuples)
        if val_shards is None:
            raise TrainingError(
                f"--val-tuples {val_tuples}: cannot find the item shards its lists were drawn from "
                f"({why}); pass them with --val-shards"
            )
    try:
        if frozen is not None:
            for store in frozen.stores.values():
                store.check_matches(val_shards)  # the val items must be in the same stores
        val = ValidationSet(
            val_tuples or tuples_dir,
            val_shards,
            cfg.task,
            cfg.k,
            cfg.direction,
            cfg.select_metric,
            frozen=frozen,
        )
    except EvaluationError as exc:
        raise TrainingError(f"validation: {exc}") from None
    return val, val_shards


def _item_shards(tuples_dir, items, val_shards) -> tuple[Path | None, str]:
    """The item shards a run reads: ``--items`` when it is item shards, else those its item store or
    tuple directory links to (:func:`avtrain.run.data_record.locate_item_shards`), else
    ``--val-shards``: where the feature stores' default place is, and whose corpus the leakage
    warning names; or None and why they are not known."""
    from avtrain.run.data_record import locate_item_shards

    found, why = locate_item_shards(tuples_dir, items)
    if found is not None:
        return Path(found), ""
    return (Path(val_shards), "") if val_shards is not None else (None, why)


def _frozen_inputs(cfg: TrainConfig, tuples_dir, items, val_shards, features):
    """The run's feature stores (:func:`avtrain.train.features.open_features`) and the item shards
    they were found beside (:func:`_item_shards`: the leakage warning names their corpus), or
    (None, None, "") for a run that freezes nothing."""
    from avdata.tuples import read_tuple_manifest

    if not frozen_encoders(cfg.model) and not features:
        return None, None, ""
    drawn_from = read_tuple_manifest(Path(tuples_dir), required=True).get("source_shards_manifest_sha256")
    try:
        shards, why = _item_shards(tuples_dir, items, val_shards)
        return open_features(cfg.model, features, shards, drawn_from, shards_unknown=why), shards, why
    except AvmatchError as exc:
        raise TrainingError(str(exc)) from None


def _val_check(val, model) -> None:
    """Refuse, before training, a selection metric the method's scoring rule cannot give."""
    from avtrain.evaluation.evaluate import EvaluationError

    try:
        val.check(model)
    except EvaluationError as exc:
        raise TrainingError(f"validation: {exc}") from None


def _hparams(cfg: TrainConfig) -> dict:
    out = {}
    for k, v in cfg.flat().items():
        out[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _pin_cpu_kernels(device: torch.device) -> None:
    """--deterministic: check that this process runs the pinned kernels, and keep convolutions
    off oneDNN (its blocking follows the CPU's cache sizes)."""
    from avdata.kernels import pinned_problem

    if device.type != "cpu":
        raise TrainingError(
            f"--deterministic pins CPU kernels; this run is on {device} (GPU runs are not bitwise repeatable)"
        )
    problem = pinned_problem()
    if problem:
        raise TrainingError(f"--deterministic: {problem}; pass --deterministic to avtrain fit itself")
    torch.backends.mkldnn.enabled = False


def fit(
    cfg: TrainConfig,
    tuples_dir: str | Path,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    val_tuples: str | Path | None = None,
    val_shards: str | Path | None = None,
    items: str | Path | None = None,
    features: list[str | Path] | tuple = (),
) -> dict:
    """Train; returns a summary (final losses, steps, tuples/s, best validation).

    ``items``: the decoded item store (``avdata cache``) or the item shards the tuples were
    drawn from; None reads the items from the tuple directory's tuple shards (slower: each
    face is decoded again every epoch). ``cfg.tuple_shards`` streams the tuple shards instead.
    ``features``: the feature store of each frozen modality (``model.voice_encoder`` /
    ``face_encoder``; default ITEM_SHARDS/features/ENCODER; :mod:`avtrain.train.features`).

    Everything that can fail on the user's input (settings, device, data, validation lists,
    the checkpoint to resume from) is checked before ``out`` is created. One fit per run
    directory: rank 0 holds RUN/.lock (:func:`avdata.io.directory_lock`) to the end, taken before
    anything in an existing RUN is read (or when a new RUN is made), so a second fit into it
    stops at once with one line naming the directory and the holder's pid. Taking it removes the
    temp files of writers killed mid-save (:func:`avdata.io.remove_stale_temps`)."""
    out = check_output_dir(out)  # a dangling symlink or a file: one line, before any work
    with contextlib.ExitStack() as held:
        taken = False

        def lock_run() -> None:
            nonlocal taken
            if not taken and is_main_rank():
                held.enter_context(
                    directory_lock(out, "avtrain fit", locked=TrainingError, failed=TrainingError)
                )
                taken = True
                remove_stale_temps(out)  # e.g. .checkpoint.pt.tmpPID of a run killed while saving

        if out.is_dir():
            lock_run()
        return _fit(cfg, tuples_dir, out, resume, progress, val_tuples, val_shards, items, features, lock_run)


def _fit(
    cfg, tuples_dir, out: Path, resume, progress, val_tuples, val_shards, items, features, lock_run
) -> dict:
    frozen, frozen_shards, frozen_shards_unknown = _frozen_inputs(
        cfg, tuples_dir, items, val_shards, features
    )
    # recorded in config.yaml (run manifests name the data); a copy: the caller's config is not changed
    cfg = dataclasses.replace(
        cfg,
        tuples_dir=str(tuples_dir),
        items=None if items is None else str(items),
        features=None if frozen is None else frozen.record(),
    )
    device = pick_device(cfg.device)
    if cfg.deterministic:
        _pin_cpu_kernels(device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    # the list, its items and every check of them, before anything is written (one-line AvmatchError)
    data = TrainingInput(
        tuples_dir,
        cfg.tuples,
        cfg.task,
        cfg.k,
        cfg.direction,
        cfg.batch_size,
        cfg.seed,
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        cfg.workers,
        items=items,
        tuple_shards=cfg.tuple_shards,
        shuffle_size=cfg.shuffle_buffer,
        frozen=frozen,
    )
    ckpt_path = out / LAST
    state = _resume_state(cfg, ckpt_path) if resume and ckpt_path.is_file() else None
    repair_best = state is not None and is_main_rank() and _best_needs_repair(ckpt_path, state)
    val, val_shards = _val_setup(cfg, tuples_dir, val_tuples, val_shards, frozen)
    # what it trains on, from the manifests: the item shards' extraction settings travel to serving
    record, unknown = run_data_record(
        tuples_dir,
        cfg.tuples,
        items,
        (val_tuples or tuples_dir) if val is not None else None,
        val_shards,
        [t.name for t in val.lists] if val is not None else [],
    )

    ddp = Distributed(device)
    is_main = ddp.rank == 0
    # Oversubscribed cores cost 10x here: leave one core per loader worker.
    cores = max(1, (os.cpu_count() or 1) // ddp.world)
    torch.set_num_threads(cfg.threads or max(1, cores - cfg.workers))
    workers = cfg.workers
    steps_per_epoch = [data.steps(e) for e in range(cfg.epochs)]
    if cfg.max_steps_per_epoch:
        steps_per_epoch = [min(s, cfg.max_steps_per_epoch) for s in steps_per_epoch]
    if min(steps_per_epoch) == 0:
        raise TrainingError(
            f"{tuples_dir}: {data.n_tuples} tuples give no full batch of {cfg.batch_size} "
            f"per rank ({ddp.world} rank(s)"
            f"{f' x {max(1, workers)} worker(s)' if cfg.tuple_shards else ''}); lower --set batch_size"
        )

    labels = None
    if get_method(cfg.method).needs_labels:
        try:
            labels = label_space(tuples_dir, cfg.tuples)
        except AvmatchError as exc:
            raise TrainingError(str(exc)) from None
        if state is not None and saved_labels(ckpt_path, state) != labels:
            raise TrainingError(f"{ckpt_path}: trained on other identities than {cfg.tuples} holds now")
    torch.manual_seed(cfg.seed)
    model = build_method(cfg, labels).to(device)
    if val is not None:
        _val_check(val, model)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    if cuda and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizers = model.optimizers(cfg)
    if tuple(optimizers) != model.optimizer_names:
        raise TrainingError(
            f"method {cfg.method}: optimizers() gave {tuple(optimizers)}, not {model.optimizer_names}"
        )
    total_steps = sum(steps_per_epoch)
    plan = [[0, cfg.lr_start, total_steps]]  # mutated in place on resume: the scheduler's lambda reads it
    main_opt = next(iter(optimizers.values()))
    sched = torch.optim.lr_scheduler.LambdaLR(main_opt, _lambda(plan, cfg.lr_start, cfg.lr_end))
    start_epoch, step = 0, 0
    best = {"metric": cfg.select_metric, "value": None, "epoch": None}
    stale = 0  # validations since the last improvement (patience)
    if state is not None:
        _restore(ckpt_path, state, model, optimizers, sched, cuda)
        start_epoch, step = state["epoch"], state["step"]
        saved_total = int(state.get("total_steps", total_steps))
        plan[:] = [list(p) for p in state.get("lr_plan", [[0, cfg.lr_start, saved_total]])]
        if saved_total != total_steps:  # epochs grew: go on from the current LR
            plan.append([step, lr_at(step, plan, cfg.lr_start, cfg.lr_end), total_steps])
        best = state.get("best", best)
        stale = int(state.get("stale_validations", 0))

    net = model
    if ddp.enabled:
        # parts with their own optimiser and backward pass (AML's discriminator) stay out of DDP;
        # the method's step averages their gradients by hand (StepContext.average_grads)
        ignore = model.ddp_ignored()
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignore)
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)

    # everything checked: now the run directory. Every rank makes it (each may write its own
    # batches-rankR.jsonl before rank 0 got there); a barrier instead could wait forever on a rank
    # that failed.
    make_output_dir(out)  # a dangling symlink or a file: one line
    lock_run()
    if is_main:
        save_config(cfg, out / "config.yaml")
    if repair_best:  # before any step: the state's tensors are still the checkpoint's
        save_checkpoint(out / BEST, state)
        print(
            f"{out / BEST}: rebuilt from {LAST} (epoch {state['epoch']}, the best; its save was cut short)",
            file=sys.stderr,
        )
    if is_main and unknown:
        print(f"note: {out}: {unknown}", file=sys.stderr)
    if is_main and frozen is not None:
        print_leakage(cfg.model, frozen_shards, frozen_shards_unknown)
        for line in (
            data.skipped,
            *(
                f"validation: {n}: {c} rows left out: they name items the frozen encoder rejected"
                for n, c in sorted((val.skipped if val else {}).items())
            ),
        ):
            if line:
                print(line, file=sys.stderr)
    if is_main and items is None and not cfg.tuple_shards and (frozen is None or len(frozen.modalities) < 2):
        print(
            f"note: {cfg.tuples}: items read {data.source}, each face decoded again every epoch; "
            "avdata cache and fit --items STORE decode them once (docs/training.md, Input pipeline)",
            file=sys.stderr,
        )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if (cuda and cfg.amp)
        else torch.autocast("cpu", enabled=False)
    )
    from tqdm import tqdm

    last: dict = {}
    samples_seen, t_start = 0, time.perf_counter()
    stopped_early = False
    with contextlib.ExitStack() as files:
        if is_main and state is not None:
            _trim_log(out / "log.jsonl", state["step"])
        # a full disk while writing these (or TensorBoard, also in its writer thread) is one line
        log_file = files.enter_context(appending(out / "log.jsonl")) if is_main else None
        audit = (
            files.enter_context(appending(out / f"batches-rank{ddp.rank}.jsonl"))
            if cfg.record_batches
            else None
        )
        tb = files.enter_context(_summary_writer(out / "tb")) if is_main else None
        ctx = StepContext(net, autocast, ddp.average_grads if ddp.enabled else None, cfg.d_steps)
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            loader = data.loader(epoch, pin_memory=cuda)
            flips = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
            bar = tqdm(
                total=steps_per_epoch[epoch],
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                unit="batch",
                disable=not (progress and is_main),
                dynamic_ncols=True,
            )
            for batch in _data_errors(islice(loader, steps_per_epoch[epoch])):
                if audit:
                    audit.write(json.dumps({"epoch": epoch, "keys": batch["keys"]}) + "\n")
                inputs = to_batch(batch, cfg, device, labels, flips, cuda and cfg.channels_last)
                last = model.train_step(inputs, optimizers, ctx)
                lr = sched.get_last_lr()[0]  # the LR this step used
                sched.step()
                step += 1
                samples_seen += inputs.label.shape[0] * ddp.world
                if is_main and step % cfg.log_every == 0:
                    rate = samples_seen / (time.perf_counter() - t_start)
                    rec = {
                        "epoch": epoch,
                        "step": step,
                        "lr": sched.get_last_lr()[0],
                        "samples_per_s": round(rate, 2),
                        # how well mixed the batch is: distinct query identities among its tuples
                        "batch_identities": len(set(batch["query_identities"])),
                        **last,
                    }
                    log_file.write(json.dumps(rec) + "\n")
                    if tb:
                        for k, v in last.items():
                            tb.add_scalar(f"loss/{k}", v, step)
                        tb.add_scalar("train/lr", lr, step)
                        tb.add_scalar("train/tuples_per_s", rate, step)
                    shown = {k: f"{last[k]:.3f}" for k in model.log_terms[:2] if k in last}
                    bar.set_postfix(**shown, tuples_s=f"{rate:.0f}", refresh=False)
                bar.update(1)
            bar.close()

            scores = None
            if val is not None and is_main and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
                scores = val.score(model, device)
                model.train()
                value = scores[best["metric"]]
                improved = best["value"] is None or value > best["value"]
                if improved:
                    best = {"metric": best["metric"], "value": value, "epoch": epoch + 1}
                    stale = 0
                else:
                    stale += 1
                log_file.write(json.dumps({"epoch": epoch, "step": step, "val": scores, "best": best}) + "\n")
                if tb:
                    for k, v in scores.items():
                        tb.add_scalar(f"val/{k}", v, epoch + 1)
            if is_main:
                log_file.flush()
                if tb:
                    tb.flush()
                state = {
                    "config": cfg.to_dict(),
                    "model": model.state_dict(),
                    RECORD_KEY: record,
                    **{name: opt.state_dict() for name, opt in optimizers.items()},
                    "sched": sched.state_dict(),
                    **({"labels": labels.to_dict()} if labels is not None else {}),
                    "epoch": epoch + 1,
                    "step": step,
                    "torch_rng": torch.get_rng_state(),
                    "lr_plan": plan,
                    "total_steps": total_steps,
                    "best": best,
                    "stale_validations": stale,
                }
                if scores is not None:
                    state["val"] = scores
                if cuda:
                    state["cuda_rng"] = torch.cuda.get_rng_state()
                save_checkpoint(out / LAST, state)
                if scores is not None and best["epoch"] == epoch + 1:
                    save_checkpoint(out / BEST, state)
                if cfg.keep_last:
                    save_checkpoint(out / epoch_name(epoch + 1), state)
                    for old in range(1, epoch + 2 - cfg.keep_last):
                        remove_checkpoint(out / epoch_name(old))
            stop = bool(cfg.patience) and stale >= cfg.patience
            if ddp.enabled:
                flag = torch.tensor([int(stop)], device=device)
                dist.broadcast(flag, 0)
                stop = bool(flag.item())
                dist.barrier()
            if stop:
                stopped_early = True
                break
        if tb and best["value"] is not None:
            tb.add_hparams(_hparams(cfg), {f"hparam/{best['metric']}": best["value"]}, run_name="hparams")
    elapsed = time.perf_counter() - t_start
    ddp.close()
    return {
        "epochs": cfg.epochs,
        "steps": step,
        "final": last,
        "device": str(device),
        "tuples_per_s": samples_seen / elapsed if elapsed > 0 else math.nan,
        "best": best,
        "stopped_early": stopped_early,
    }


def _trim_log(path: Path, step: int) -> None:
    """Before a resume appends to log.jsonl: drop the records past ``step`` (written after the
    checkpoint it continues from, by a run killed mid-epoch; they are written again) and a line
    the kill cut short, so every step has one record, in order."""
    from avdata.untrusted import open_inside
    from avtrain.evaluation.report import MAX_LOG_BYTES

    if not os.path.lexists(path):
        return
    # inside RUN, a regular file of at most MAX_LOG_BYTES (a FIFO or a link out: one line)
    with open_inside(path.parent, path.name, max_bytes=MAX_LOG_BYTES) as src, atomic_output(path) as dst:
        for line in src:
            try:
                record = json.loads(line)
            except ValueError:  # cut short (or not JSON): not a record
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                dst.write(line if line.endswith(b"\n") else line + b"\n")


class _Board:
    """fit's TensorBoard writer: every call turns a full disk into the one-line DiskFullError
    naming RUN/tb, including one that TensorBoard's writer thread met (it stores it for the
    next call of the main thread)."""

    def __init__(self, tb, path: Path):
        self._tb, self._path = tb, path

    def __getattr__(self, name):
        method = getattr(self._tb, name)

        def call(*args, **kwargs):
            with disk_full_errors(self._path):
                return method(*args, **kwargs)

        return call


@contextlib.contextmanager
def _quiet_full_disk_in_writer_thread():
    """TensorBoard's writer thread stores the error it met for the main thread's next call and
    then re-raises it, which prints a traceback: a full disk is reported once, by fit, in one line."""
    previous = threading.excepthook

    def hook(args):
        exc = args.exc_value
        if not (
            type(args.thread).__name__ == "_AsyncWriterThread"
            and isinstance(exc, OSError)
            and exc.errno in DISK_FULL
        ):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


@contextlib.contextmanager
def _summary_writer(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: the JSONL log has the same numbers
        yield None
        return
    with _quiet_full_disk_in_writer_thread():
        with disk_full_errors(path):
            tb = SummaryWriter(str(path))
        try:
            yield _Board(tb, path)
        except BaseException:
            with contextlib.suppress(OSError):  # never hide the error that stopped the run
                tb.close()
            raise
        with disk_full_errors(path):
            tb.flush()  # raises what the writer thread met
            tb.close()


def _data_errors(batches):
    """Unsafe or unreadable tuple shards -> one-line TrainingError (also from loader workers,
    whose re-raised message carries the worker's traceback: its last line is the reason)."""
    from avdata.reader import UnsafeShardError

    try:
        yield from batches
    except (UnsafeShardError, AvmatchError) as exc:
        lines = [l for l in str(exc).strip().splitlines() if l.strip()]
        reason = lines[-1] if lines else type(exc).__name__
        if ": " in reason and reason.split(": ", 1)[0].endswith("Error"):
            reason = reason.split(": ", 1)[1]
        raise TrainingError(reason) from None
