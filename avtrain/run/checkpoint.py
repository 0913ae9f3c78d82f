"""Checkpoints of a run directory: file names, save, verified load, the model and the device.

A run directory holds

* ``checkpoint.pt``  the last epoch (what ``--resume`` continues from);
* ``best.pt``        the epoch with the best validation metric (``fit --val-*``);
* ``epoch-NNNN.pt``  per-epoch copies (``fit --keep-last N``);

and beside each ``X.pt`` a checksum file ``X.pt.sha256`` in ``sha256sum`` format
(``HEX  X.pt``). Every load checks the file against it before ``torch.load`` reads a byte of
it, and ``torch.load`` runs with ``weights_only=True`` (never unpickles arbitrary objects), so
a flipped, truncated, empty, foreign or malicious file is refused with one line.

Saving is atomic (``avdata.io``: temp name, fsync, rename). While a new checkpoint replaces
an old one the checksum file briefly names both hashes (old and new, both genuine files of
this run), so a run killed between the two renames still resumes. A checkpoint of your own
from before checksums existed can be accepted with ``sha256sum X.pt > X.pt.sha256``.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import struct
import zipfile
from pathlib import Path

import torch

from avdata.errors import AvmatchError, UnsafeInputError
from avdata.io import atomic_write_bytes, atomic_write_text, sha256_bytes, sha256_file

LAST = "checkpoint.pt"
BEST = "best.pt"
CHECKSUM_SUFFIX = ".sha256"
REQUIRED_KEYS = ("config", "model", "epoch", "step")
# What an avtrain checkpoint can hold: the largest model its settings allow (matching, k=10,
# concat_mlp head: 11.4 MB of tensors) three times over (weights and Adam's two moments), about
# 35 MB, and small fields; 256 MiB leaves 7x headroom (tests/test_checkpoint.py checks it). A file,
# or zip records unpacking to, more than this are refused before torch.load reads them: torch.load
# inflates deflated records in memory, so a small file could otherwise cost gigabytes.
MAX_CHECKPOINT_BYTES = 256 << 20
# A checkpoint's zip directory has one ~100-byte entry per tensor (about 200); zipfile parses it
# into one object per entry, so an end record naming a larger directory is refused unread.
MAX_ZIP_DIRECTORY_BYTES = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_CHECKSUM_BYTES = 64 << 10  # a checksum file beside a checkpoint: a few sha256sum lines


class CheckpointError(AvmatchError, ValueError):
    """A checkpoint that cannot be used: missing, empty, truncated, not an avtrain checkpoint.
    (Also a ValueError, so callers that catch ValueError keep working.)"""


class UnsafeCheckpointError(UnsafeInputError, ValueError):
    """A checkpoint that fails its checksum or carries pickled objects: refused, never loaded."""


def epoch_name(epoch: int) -> str:
    """Per-epoch checkpoint file name (epoch counted from 1, as in the logs)."""
    return f"epoch-{epoch:04d}.pt"


def checksum_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def resolve(run: str | Path, which: str = "last") -> Path:
    """``last`` -> RUN/checkpoint.pt, ``best`` -> RUN/best.pt, anything else is a path."""
    if which == "last":
        return Path(run) / LAST
    if which == "best":
        return Path(run) / BEST
    return Path(which)


def _read_checksums(path: Path) -> list[str]:
    side = checksum_path(path)
    if not side.is_file():
        raise UnsafeCheckpointError(
            f"{path}: no checksum file {side.name} beside it; refusing an unverified checkpoint "
            f"(if you trust it: sha256sum {path.name} > {side.name})"
        )
    from avdata.untrusted import read_regular

    text = read_regular(side, MAX_CHECKSUM_BYTES).decode("utf-8", errors="replace")  # regular, capped
    hashes = [line.split()[0].lower() for line in text.splitlines() if line.strip()]
    if not hashes or not all(_HEX64.match(h) for h in hashes):
        raise UnsafeCheckpointError(f"{side}: not a sha256 checksum file")
    return hashes


def verify(path: str | Path) -> str:
    """Check that the file exists, is not empty and matches its checksum file; return its sha256."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    if size > MAX_CHECKPOINT_BYTES:
        raise UnsafeCheckpointError(
            f"{path}: {size / 2**20:.0f} MiB, more than an avtrain checkpoint holds "
            f"({MAX_CHECKPOINT_BYTES >> 20} MiB); refusing it"
        )
    expected = _read_checksums(path)
    actual = sha256_file(path)
    if actual not in expected:
        raise UnsafeCheckpointError(
            f"{path}: sha256 {actual[:12]}… does not match {checksum_path(path).name} "
            f"({expected[-1][:12]}…); the file was changed or damaged, refusing it"
        )
    return actual


def _zip_directory_bytes(f, size: int) -> int | None:
    """The central directory size a zip's end record names (zip64 included), or None when
    there is no end record (not a zip archive)."""
    tail_len = min(size, 22 + 0xFFFF)  # the end record (22 bytes) and its comment (< 64 KiB)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    entries, directory = struct.unpack("<HI", tail[at + 10 : at + 16])
    if entries != 0xFFFF and directory != 0xFFFFFFFF:
        return directory
    locator = tail[at - 20 : at] if at >= 20 else b""  # zip64: its end record's offset
    if not locator.startswith(b"PK\x06\x07"):
        return None
    (offset,) = struct.unpack("<Q", locator[8:16])
    if offset > size - 56:
        return None
    f.seek(offset)
    record = f.read(56)
    if not record.startswith(b"PK\x06\x06"):
        return None
    return struct.unpack("<Q", record[40:48])[0]


def check_archive(path: str | Path) -> None:
    """Refuse, before torch.load reads a byte of it, a file that is not a zip archive (what
    torch.save writes) or whose records unpack to more than :data:`MAX_CHECKPOINT_BYTES` (a
    decompression bomb), reading only its zip directory (bounded by
    :data:`MAX_ZIP_DIRECTORY_BYTES`)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        directory = _zip_directory_bytes(f, size)
        if directory is None:
            raise CheckpointError(
                f"{path}: not a readable torch checkpoint, truncated or corrupt (no zip directory)"
            )
        if directory > MAX_ZIP_DIRECTORY_BYTES:
            raise UnsafeCheckpointError(
                f"{path}: its zip directory is {directory / 2**20:.1f} MiB, more than an avtrain checkpoint "
                f"has ({MAX_ZIP_DIRECTORY_BYTES >> 20} MiB); refusing it"
            )
        try:
            with zipfile.ZipFile(f) as archive:
                unpacked = sum(info.file_size for info in archive.infolist())
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
            raise CheckpointError(
                f"{path}: not a readable torch checkpoint, truncated or corrupt ({str(exc)[:120]})"
            ) from None
    if unpacked > MAX_CHECKPOINT_BYTES:
        raise UnsafeCheckpointError(
            f"{path}: its zip records unpack to {unpacked / 2**20:.0f} MiB, more than an avtrain "
            f"checkpoint holds ({MAX_CHECKPOINT_BYTES >> 20} MiB); refusing it (a decompression bomb?)"
        )


def load_checkpoint(path: str | Path) -> dict:
    """Verified load: checksum, size (file and unpacked zip records), then
    ``torch.load(weights_only=True)``, then every field a run checkpoint has. Every failure is one
    line (CheckpointError / UnsafeCheckpointError)."""
    path = Path(path)
    verify(path)
    check_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    except pickle.UnpicklingError as exc:  # weights_only refused a global / reduce payload
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UnsafeCheckpointError(
            f"{path}: refusing a checkpoint with pickled objects ({first[:160]})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse untrusted bytes is the file's, one line
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint, truncated or corrupt "
            f"({type(exc).__name__}: {first[:160]})"
        ) from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path}: not an avtrain checkpoint (expected keys {', '.join(REQUIRED_KEYS)})")
    problem = state_problem(state)
    if problem:
        raise CheckpointError(f"{path}: not a valid avtrain checkpoint: {problem}")
    return state


# --------------------------------------------------------------------------- the fields of a checkpoint


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _show(v) -> str:
    text = repr(v) if isinstance(v, (str, int, float, bool, type(None))) else type(v).__name__
    return text[:40] + ("…" if len(text) > 40 else "")


def _count_problem(name: str, v, lo: int) -> str | None:
    if not _is_int(v) or v < lo:
        return f"{name} is {_show(v)}, expected an integer >= {lo}"
    return None


def _rng_problem(name: str, v) -> str | None:
    if not (torch.is_tensor(v) and v.dtype == torch.uint8 and v.dim() == 1 and v.numel() > 0):
        return f"{name} is {_show(v)}, expected a 1-d uint8 tensor (a torch RNG state)"
    return None


def _plan_problem(plan) -> str | None:
    """lr_plan: [[first step, LR there, total steps], ...], steps from 0 on, never going back."""
    if not isinstance(plan, list) or not plan:
        return f"lr_plan is {_show(plan)}, expected a non-empty list"
    previous = 0
    for i, point in enumerate(plan):
        if not (
            isinstance(point, (list, tuple))
            and len(point) == 3
            and _is_int(point[0])
            and _is_number(point[1])
            and _is_int(point[2])
            and point[0] >= previous
            and math.isfinite(point[1])
            and point[1] > 0
            and point[2] >= 1
        ):
            return f"lr_plan[{i}] is not [step >= the previous one, LR > 0, total steps >= 1]"
        previous = point[0]
    if plan[0][0] != 0:
        return "lr_plan does not start at step 0"
    return None


def _best_problem(best, epoch: int) -> str | None:
    if not isinstance(best, dict) or set(best) != {"metric", "value", "epoch"}:
        return f"best is {_show(best)}, expected a dict of metric, value, epoch"
    if not isinstance(best["metric"], str):
        return f"best.metric is {_show(best['metric'])}, expected a metric name"
    value, at = best["value"], best["epoch"]
    if (value is None) != (at is None):
        return "best has a value without an epoch or an epoch without a value"
    if value is not None and not _is_number(value):  # nan is one: a validation may score nan
        return f"best.value is {_show(value)}, expected a number"
    if at is not None and not (_is_int(at) and 1 <= at <= epoch):
        return f"best.epoch is {_show(at)}, expected an integer in 1..{epoch} (the checkpoint's epoch)"
    return None


def _optimizer_problem(name: str, v) -> str | None:
    """The shape of a torch optimizer state dict; its content is checked against the optimizer
    it is loaded into (:func:`avtrain.train.loop` on resume)."""
    if not (
        isinstance(v, dict)
        and isinstance(v.get("state"), dict)
        and isinstance(v.get("param_groups"), list)
        and all(isinstance(g, dict) for g in v["param_groups"])
    ):
        return f"{name} is {_show(v)}, expected an optimizer state (state, param_groups)"
    return None


def labels_problem(v) -> str | None:
    """The shape of a LabelSpace dict: classes = {name: [str, ...]}, attributes = {identity: {name: str}}."""
    classes, attributes = (v.get("classes"), v.get("attributes")) if isinstance(v, dict) else (None, None)
    if not (
        isinstance(classes, dict)
        and all(
            isinstance(n, str) and isinstance(c, list) and all(isinstance(x, str) for x in c)
            for n, c in classes.items()
        )
        and isinstance(attributes, dict)
        and all(
            isinstance(i, str) and isinstance(a, dict) and all(isinstance(x, str) for x in (*a, *a.values()))
            for i, a in attributes.items()
        )
    ):
        return f"labels is {_show(v)}, expected classes and attributes of names"
    return None


def state_problem(state: dict) -> str | None:
    """Why a loaded checkpoint dict is not one that avtrain wrote (one phrase), or None: every
    field it may hold, by type and range. ``config`` is parsed by :func:`saved_config`, the
    optimizer and scheduler states by the resume that loads them."""
    if not isinstance(state["config"], dict):
        return f"config is {_show(state['config'])}, expected a dict of settings"
    model = state["model"]
    if not isinstance(model, dict) or not all(
        isinstance(k, str) and torch.is_tensor(t) for k, t in model.items()
    ):
        return f"model is {_show(model)}, expected a dict of named tensors"
    checks = [_count_problem("epoch", state["epoch"], 0), _count_problem("step", state["step"], 0)]
    if "total_steps" in state:
        checks.append(_count_problem("total_steps", state["total_steps"], 1))
    if "stale_validations" in state:
        checks.append(_count_problem("stale_validations", state["stale_validations"], 0))
    for key in ("torch_rng", "cuda_rng"):
        if key in state:
            checks.append(_rng_problem(key, state[key]))
    for key in sorted(k for k in state if isinstance(k, str) and k.startswith("opt_")):
        checks.append(_optimizer_problem(key, state[key]))
    if "labels" in state:
        checks.append(labels_problem(state["labels"]))
    if "sched" in state and not isinstance(state["sched"], dict):
        checks.append(f"sched is {_show(state['sched'])}, expected a scheduler state")
    if "lr_plan" in state:
        checks.append(_plan_problem(state["lr_plan"]))
    if "best" in state:
        checks.append(_best_problem(state["best"], state["epoch"] if _is_int(state["epoch"]) else 0))
    if "data" in state:  # what it trained on (avtrain.run.data_record.RECORD_KEY)
        from avtrain.run.data_record import record_problem

        checks.append(record_problem(state["data"]))
    if "val" in state and not (
        isinstance(state["val"], dict)
        and all(isinstance(k, str) and _is_number(v) for k, v in state["val"].items())
    ):
        checks.append(f"val is {_show(state['val'])}, expected a dict of metric values")
    return next((c for c in checks if c), None)


def saved_config(path: str | Path, state: dict):
    """The TrainConfig saved in a loaded checkpoint, checked against the checkpoint's progress
    (epoch within the run's epochs, step within its steps, best metric the run's)."""
    from avtrain.run.config import ConfigError, TrainConfig

    try:
        cfg = TrainConfig.from_dict(state["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its saved config is not valid ({exc})") from None
    problem = None
    if state["epoch"] > cfg.epochs:
        problem = f"epoch {state['epoch']} is past the run's {cfg.epochs} epochs"
    elif "total_steps" in state and state["step"] > state["total_steps"]:
        problem = f"step {state['step']} is past the run's {state['total_steps']} steps"
    elif "lr_plan" in state and "total_steps" in state and state["lr_plan"][-1][2] != state["total_steps"]:
        problem = "lr_plan does not end at total_steps"
    elif "best" in state and state["best"]["metric"] != cfg.select_metric:
        problem = f"best.metric {state['best']['metric']!r} is not the run's {cfg.select_metric!r}"
    if problem:
        raise CheckpointError(f"{path}: not a valid avtrain checkpoint: {problem}")
    return cfg


def save_checkpoint(path: str | Path, state: dict) -> str:
    """Atomic save of ``state`` plus its checksum file; returns the sha256."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    new = sha256_bytes(data)
    side = checksum_path(path)
    old = []
    if path.is_file() and side.is_file():
        try:
            old = [h for h in _read_checksums(path) if h != new][:1]
        except UnsafeCheckpointError:
            old = []
    # old and new hashes while the file is swapped, then the new one only (see the module doc)
    atomic_write_text(side, "".join(f"{h}  {path.name}\n" for h in old + [new]))
    atomic_write_bytes(path, data)
    atomic_write_text(side, f"{new}  {path.name}\n")
    return new


def remove_checkpoint(path: str | Path) -> None:
    path = Path(path)
    path.unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)


# --------------------------------------------------------------------------- model and device


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a device that
    this machine does not have is a one-line :class:`DeviceError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r}: CUDA is not available on this machine (use --device cpu or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise DeviceError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    return device


class DeviceError(AvmatchError, ValueError):
    """A device name that this machine cannot run."""


def saved_labels(path: str | Path, state: dict):
    """The LabelSpace a checkpoint was trained with (``state["labels"]``), or None."""
    from avtrain.methods import LabelSpace

    return LabelSpace.from_dict(state["labels"]) if "labels" in state else None


def load_run(run: str | Path, device: torch.device | str = "cpu", which: str = "last"):
    """(model in eval mode on device, checkpoint state, TrainConfig) of RUN's ``which``
    checkpoint (``last``, ``best`` or a path)."""
    if isinstance(device, str):
        device = pick_device(device)
    path = resolve(run, which)
    if not path.is_file():
        if which == "best":
            raise CheckpointError(
                f"{run}: no {BEST}; only a run trained with validation has one (avtrain fit --val-shards ...)"
            )
        if which == "last":
            raise CheckpointError(f"{run}: no {LAST}; train with avtrain fit first")
        raise CheckpointError(f"{path}: checkpoint not found")
    from avtrain.methods import build_method

    state = load_checkpoint(path)
    cfg = saved_config(path, state)
    model = build_method(cfg, saved_labels(path, state))
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: weights do not fit the model of its config ({first[:160]})") from None
    model.to(device).eval()
    return model, state, cfg
