"""The manifest of a training run (kind ``avmatch.run``): config, seed, the tuple manifest's
sha256, final losses and metrics, and a hash of the final weights.

avdata describes shard, tuple and split directories and knows nothing of training; it finds this
describer through the ``avmatch.manifests`` entry point (pyproject.toml), so ``avdata manifest
verify/update RUN`` work on run directories.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from avdata.errors import AvmatchError
from avdata.io import sha256_bytes
from avdata.manifest.schema import FORMAT_VERSION, RUN_KIND, ManifestError
from avdata.untrusted import read_inside
from avtrain.run.checkpoint import LAST as RUN_CHECKPOINT

# RUN/config.yaml as fit writes it is ~1.5 kB; YAML is parsed in pure Python (a 64 MiB file would
# take minutes), so far less than the 64 MiB of other metadata files
MAX_CONFIG_BYTES = 1 << 20

# Keys of run metrics/logs that measure speed, not results; left out of run manifests.
_VOLATILE_RUN_KEY = re.compile(r"(_per_s|_seconds|^elapsed.*|^wall_s|^time_s|^duration.*)$")


def describe_run_dir(dir: Path, tuples: str | Path | None = None) -> dict | None:
    """The ``avmatch.manifests`` entry point: a run directory's manifest, or None for another
    kind of directory."""
    dir = Path(dir)
    # lexists: a FIFO, a device or a link out in place of either is run_manifest's to refuse
    if os.path.lexists(dir / "config.yaml") and os.path.lexists(dir / RUN_CHECKPOINT):
        return run_manifest(dir, tuples)
    return None


def weights_sha256(state_dict: dict) -> str:
    """sha256 over a state_dict in sorted key order: per tensor its key, dtype, shape
    and raw bytes (the exact numbers, whatever the dtype)."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        if not torch.is_tensor(t):
            h.update(f"{key}\t{type(t).__name__}\t{t!r}\n".encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{key}\t{t.dtype}\t{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_run_config(run: Path) -> dict:
    """RUN/config.yaml: a regular file inside RUN of at most MAX_CONFIG_BYTES
    (:func:`avdata.untrusted.read_inside`: a FIFO, a device or a link out is refused, never read),
    YAML without aliases (fit never writes one; a nest of them, a "billion laughs", would expand
    exponentially once printed) that is a valid training config (:meth:`TrainConfig.from_dict`:
    known keys, types, ranges); returned as that config's dict. Else one ManifestError."""
    import yaml

    from avtrain.run.config import ConfigError, TrainConfig

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise yaml.YAMLError("a YAML alias (*name), which a config of avtrain fit never holds")
            return super().compose_node(parent, index)

    path = run / "config.yaml"
    try:
        raw = read_inside(run, "config.yaml", max_bytes=MAX_CONFIG_BYTES, missing="missing")
    except AvmatchError as exc:
        raise ManifestError(str(exc)) from None
    try:
        return TrainConfig.from_dict(yaml.load(raw.decode("utf-8"), NoAliases) or {}).to_dict()
    except ConfigError as exc:
        raise ManifestError(f"{path}: not a config of avtrain fit ({exc})") from None
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        raise ManifestError(f"{path}: not a YAML config ({' '.join(str(exc).split())[:160]})") from None


def _without_volatile(d):
    if isinstance(d, dict):
        return {k: _without_volatile(v) for k, v in d.items() if not _VOLATILE_RUN_KEY.search(str(k))}
    return d


def _recorded_data(state: dict) -> dict:
    """What the checkpoint records of its data (:mod:`avtrain.run.data_record`), without the paths
    (where the data was on the machine that trained, not what it was); {} for a run from before."""
    from avtrain.run.data_record import RECORD_KEY

    record = state.get(RECORD_KEY)
    if record is None:
        return {}
    out = {"item_shards": None, "val": None}
    if record["item_shards"] is not None:
        out["item_shards"] = {k: v for k, v in record["item_shards"].items() if k != "path"}
    else:
        out["item_shards_unknown"] = record["item_shards_unknown"]
    if record.get("val") is not None:
        out["val"] = {k: record["val"][k] for k in ("manifest_sha256", "lists")}
    return out


def run_manifest(
    run_dir: str | Path, tuples: str | Path | None = None, checkpoint: str | Path | None = None
) -> dict:
    """Config, seed, data (the tuple manifest's sha256; the item shards' extraction settings and
    the validation lists the checkpoint records), final losses and metrics, and
    the final weights' hash of a training run directory.

    ``tuples``: the tuple directory the run trained on (the trainer does not record it
    in RUN/config.yaml; a ``tuples_dir`` key there is used when present).
    Final losses are the loss terms (``L_*``) of the last RUN/log.jsonl line; speed
    fields (``samples_per_s`` ...) are left out because they differ on every run.
    """
    from avdata.shards import library_versions
    from avtrain.evaluation.report import load_metrics, read_log
    from avtrain.run.checkpoint import load_checkpoint

    run = Path(run_dir)
    if not os.path.lexists(run / "config.yaml"):
        raise ManifestError(f"{run}: not a run directory (no config.yaml)")
    cfg = read_run_config(run)
    ckpt = Path(checkpoint) if checkpoint else run / RUN_CHECKPOINT
    # checksum, weights_only and the keys of a run checkpoint: a truncated, empty, foreign,
    # tampered or malicious file is a one-line CheckpointError/UnsafeCheckpointError
    state = load_checkpoint(ckpt)
    model_state = state["model"]

    # the last training-step line (validation lines carry "val", not loss terms); RUN/log.jsonl and
    # RUN/metrics.json are read as the report reads them (regular files inside RUN, capped, checked)
    steps = [r for r in read_log(run / "log.jsonl") if "L_total" in r]
    final_losses = {k: v for k, v in sorted(steps[-1].items()) if k.startswith("L_")} if steps else None
    metrics = None
    if os.path.lexists(run / "metrics.json"):
        metrics = _without_volatile(load_metrics(run / "metrics.json", inside=True))

    tuples = tuples or cfg.get("tuples_dir")
    tuples_sha = None
    if tuples:
        try:
            raw = read_inside(tuples, "manifest.json", missing="missing; not a tuple directory")
        except AvmatchError as exc:
            raise ManifestError(str(exc)) from None
        tuples_sha = sha256_bytes(raw)
    return {
        "kind": RUN_KIND,
        "format_version": FORMAT_VERSION,
        "config": cfg,
        "seed": cfg.get("seed"),
        "data": {"tuples": cfg.get("tuples"), "tuples_manifest_sha256": tuples_sha} | _recorded_data(state),
        "versions": library_versions(),
        "progress": {"epoch": state.get("epoch"), "step": state.get("step")}
        if isinstance(state, dict)
        else None,
        "final_losses": final_losses,
        "metrics": metrics,
        "weights_sha256": weights_sha256(model_state),
    }
