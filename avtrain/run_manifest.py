"""The manifest of a training run (kind ``avmatch.run``): config, seed, the tuple manifest's
sha256, final losses and metrics, and a hash of the final weights.

avdata describes shard, tuple and split directories and knows nothing of training; it finds this
describer through the ``avmatch.manifests`` entry point (pyproject.toml), so ``avdata manifest
verify/update RUN`` work on run directories.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from avdata.io import sha256_file
from avdata.manifest.schema import FORMAT_VERSION, RUN_KIND, ManifestError
from avtrain.checkpoint import LAST as RUN_CHECKPOINT

# Keys of run metrics/logs that measure speed, not results; left out of run manifests.
_VOLATILE_RUN_KEY = re.compile(r"(_per_s|_seconds|^elapsed.*|^wall_s|^time_s|^duration.*)$")


def describe_run_dir(dir: Path, tuples: str | Path | None = None) -> dict | None:
    """The ``avmatch.manifests`` entry point: a run directory's manifest, or None for another
    kind of directory."""
    dir = Path(dir)
    if (dir / "config.yaml").is_file() and (dir / RUN_CHECKPOINT).is_file():
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


def _without_volatile(d):
    if isinstance(d, dict):
        return {k: _without_volatile(v) for k, v in d.items() if not _VOLATILE_RUN_KEY.search(str(k))}
    return d


def run_manifest(
    run_dir: str | Path, tuples: str | Path | None = None, checkpoint: str | Path | None = None
) -> dict:
    """Config, seed, data (the tuple manifest's sha256), final losses and metrics, and
    the final weights' hash of a training run directory.

    ``tuples``: the tuple directory the run trained on (the trainer does not record it
    in RUN/config.yaml; a ``tuples_dir`` key there is used when present).
    Final losses are the loss terms (``L_*``) of the last RUN/log.jsonl line; speed
    fields (``samples_per_s`` ...) are left out because they differ on every run.
    """
    import yaml

    from avdata.shards import library_versions
    from avtrain.checkpoint import load_checkpoint

    run = Path(run_dir)
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise ManifestError(f"{run}: not a run directory (no config.yaml)")
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    ckpt = Path(checkpoint) if checkpoint else run / RUN_CHECKPOINT
    # checksum, weights_only and the keys of a run checkpoint: a truncated, empty, foreign,
    # tampered or malicious file is a one-line CheckpointError/UnsafeCheckpointError
    state = load_checkpoint(ckpt)
    model_state = state["model"]

    final_losses = None
    log = run / "log.jsonl"
    if log.is_file():
        # the last training-step line (validation lines carry "val", not loss terms)
        lines = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
        steps = [r for r in lines if "L_total" in r]
        if steps:
            final_losses = {k: v for k, v in sorted(steps[-1].items()) if k.startswith("L_")}
    metrics = None
    if (run / "metrics.json").is_file():
        metrics = _without_volatile(json.loads((run / "metrics.json").read_text()))

    tuples = tuples or cfg.get("tuples_dir")
    tuples_sha = None
    if tuples:
        tm = Path(tuples) / "manifest.json"
        if not tm.is_file():
            raise ManifestError(f"{tuples}: not a tuple directory (no manifest.json)")
        tuples_sha = sha256_file(tm)
    return {
        "kind": RUN_KIND,
        "format_version": FORMAT_VERSION,
        "config": cfg,
        "seed": cfg.get("seed"),
        "data": {"tuples": cfg.get("tuples"), "tuples_manifest_sha256": tuples_sha},
        "versions": library_versions(),
        "progress": {"epoch": state.get("epoch"), "step": state.get("step")}
        if isinstance(state, dict)
        else None,
        "final_losses": final_losses,
        "metrics": metrics,
        "weights_sha256": weights_sha256(model_state),
    }
