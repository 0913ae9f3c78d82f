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
import pickle
import re
from pathlib import Path

import torch

from avdata.errors import AvmatchError, UnsafeInputError
from avdata.io import atomic_write_bytes, atomic_write_text, sha256_bytes, sha256_file

LAST = "checkpoint.pt"
BEST = "best.pt"
CHECKSUM_SUFFIX = ".sha256"
REQUIRED_KEYS = ("config", "model", "epoch", "step")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


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
    hashes = [
        line.split()[0].lower() for line in side.read_text(errors="replace").splitlines() if line.strip()
    ]
    if not hashes or not all(_HEX64.match(h) for h in hashes):
        raise UnsafeCheckpointError(f"{side}: not a sha256 checksum file")
    return hashes


def verify(path: str | Path) -> str:
    """Check that the file exists, is not empty and matches its checksum file; return its sha256."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    expected = _read_checksums(path)
    actual = sha256_file(path)
    if actual not in expected:
        raise UnsafeCheckpointError(
            f"{path}: sha256 {actual[:12]}… does not match {checksum_path(path).name} "
            f"({expected[-1][:12]}…); the file was changed or damaged, refusing it"
        )
    return actual


def load_checkpoint(path: str | Path) -> dict:
    """Verified load: checksum, then ``torch.load(weights_only=True)``, then the keys a run
    checkpoint has. Every failure is one line (CheckpointError / UnsafeCheckpointError)."""
    path = Path(path)
    verify(path)
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
    return state


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


def build_model(cfg):
    """The AML model of a TrainConfig (model settings from ``cfg.model``)."""
    from avtrain.models import AML

    return AML(cfg.model_config())


def load_run(run: str | Path, device: torch.device | str = "cpu", which: str = "last"):
    """(model in eval mode on device, checkpoint state, TrainConfig) of RUN's ``which``
    checkpoint (``last``, ``best`` or a path)."""
    from avtrain.config import ConfigError, TrainConfig

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
    state = load_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict(state["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its saved config is not valid ({exc})") from None
    model = build_model(cfg)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: weights do not fit the model of its config ({first[:160]})") from None
    model.to(device).eval()
    return model, state, cfg
