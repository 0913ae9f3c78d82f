"""``avtrain export``: the export format (``model.safetensors`` + ``config.json``), written by
:func:`export_model` and read back, checked like a fit config, by :func:`load_export`."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import torch

from avdata.errors import AvmatchError, UnsafeInputError
from avdata.extract import ExtractConfig
from avtrain.evaluation.evaluate import SCORE_KIND  # the one scoring rule (-L2)
from avtrain.serve.errors import InferenceError

__all__ = ["EXPORT_CONFIG", "EXPORT_FORMAT", "EXPORT_WEIGHTS", "export_model", "load_export"]

EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"
EXPORT_FORMAT = "avmatch.model"
EXPORT_MAX_WEIGHTS_BYTES = 1 << 30  # a model's tensors are a few MiB (AML: ~3.3 MiB)
_EXPORT_KEYS = (
    "format",
    "format_version",
    "train_config",
    "extract",
    "spectrogram",
    "scoring",
    "aliases",
    "epoch",
    "step",
    "source_run",
    "weights_sha256",
    "labels",  # the LabelSpace of a method that classifies identities (its classifier's size)
    "data",  # what the run trained on (avtrain.run.data_record): where ``extract`` came from
)


def _check_export_config(meta, cfg_path: Path):
    """An export's config.json, checked like a fit config before anything in it is used: a JSON
    object of the keys export writes, format avmatch.model version 1, a sha256 hex digest, aliases
    a {name: name} object, epoch/step non-negative integers, ``train_config`` a valid
    :class:`~avtrain.run.config.TrainConfig` and ``extract`` a valid :class:`ExtractConfig` (known keys,
    types, ranges). Returns (TrainConfig, ExtractConfig); anything else is one line naming the file."""
    from avtrain.run.checkpoint import labels_problem
    from avtrain.run.config import TrainConfig
    from avtrain.run.data_record import record_problem

    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise InferenceError(f"{cfg_path}: not an avtrain export (format is not {EXPORT_FORMAT!r})")
    problem = None
    unknown = sorted(set(meta) - set(_EXPORT_KEYS))
    missing = [k for k in ("format_version", "train_config", "extract", "weights_sha256") if k not in meta]
    aliases = meta.get("aliases", {})
    if unknown:
        problem = f"unknown key(s) {', '.join(map(repr, unknown))}"
    elif missing:
        problem = f"lacks {', '.join(missing)}"
    elif meta["format_version"] != 1 or isinstance(meta["format_version"], bool):
        problem = f"format_version {meta['format_version']!r} is not 1 (made by another avmatch version?)"
    elif not (
        isinstance(meta["weights_sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", meta["weights_sha256"])
    ):
        problem = "weights_sha256 is not a sha256 hex digest"
    elif not (isinstance(aliases, dict) and all(isinstance(v, str) for v in aliases.values())):
        problem = "aliases is not an object of tensor name -> tensor name"
    elif "labels" in meta and labels_problem(meta["labels"]):
        problem = labels_problem(meta["labels"])
    elif "data" in meta and record_problem(meta["data"]):
        problem = record_problem(meta["data"])
    else:
        for key in ("epoch", "step"):
            v = meta.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                problem = f"{key} {v!r} is not a non-negative integer"
    if problem:
        raise InferenceError(f"{cfg_path}: {problem}")
    try:
        cfg = TrainConfig.from_dict(meta["train_config"])
    except AvmatchError as exc:  # ConfigError: one line naming the key
        raise InferenceError(f"{cfg_path}: train_config: {exc}") from None
    try:
        return cfg, ExtractConfig.from_dict(meta["extract"])
    except AvmatchError as exc:  # ExtractConfigError: one line naming the key (extract.KEY)
        raise InferenceError(f"{cfg_path}: {exc}") from None


def load_export(directory: Path, device: torch.device):
    """(method, TrainConfig, ExtractConfig, source, the run's data record or None, the one-line
    note when ``extract`` may not be the item shards' own, else None) of an export directory:
    config.json checked first, then the weights' sha256, then the method built from the config and
    the tensors loaded strictly; every problem is one line."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    from avdata.io import sha256_bytes
    from avdata.untrusted import read_inside
    from avtrain.methods import LabelSpace, build_method

    cfg_path, weights = directory / EXPORT_CONFIG, directory / EXPORT_WEIGHTS
    raw = read_inside(directory, EXPORT_CONFIG)  # a regular file inside the directory, capped
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InferenceError(f"{cfg_path}: not a readable model config ({type(exc).__name__})") from None
    cfg, extract = _check_export_config(meta, cfg_path)
    data = read_inside(directory, EXPORT_WEIGHTS, max_bytes=EXPORT_MAX_WEIGHTS_BYTES)
    if sha256_bytes(data) != meta["weights_sha256"]:
        raise UnsafeInputError(
            f"{weights}: sha256 differs from {cfg_path}'s weights_sha256; refusing to load"
        )
    try:
        tensors = load_safetensors(data)
        for alias, target in meta.get("aliases", {}).items():  # tensors shared in the model (one generator)
            tensors[alias] = tensors[target]
        labels = meta.get("labels")  # checked by _check_export_config
        model = build_method(cfg, LabelSpace.from_dict(labels) if labels is not None else None)
        model.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise InferenceError(
            f"{directory}: cannot load the exported model ({type(exc).__name__}: {first})"
        ) from None
    model.to(device).eval()
    record = meta.get("data")
    if record is None:
        note = (
            f"{cfg_path} does not record where its extract settings came from (exported before avmatch "
            "recorded the run's item shards); they may be avdata's defaults rather than the build's"
        )
    else:
        from avtrain.run.data_record import serving_extract

        note = serving_extract(record, str(cfg_path))[1]
    source = {"kind": "export", "path": str(directory), "epoch": meta.get("epoch"), "step": meta.get("step")}
    return model, cfg, extract, source, record, note


def export_model(
    run: str | Path, out: str | Path, extract: ExtractConfig | None = None, checkpoint: str = "last"
) -> dict:
    """Write OUT/model.safetensors (the model's tensors only) and OUT/config.json; return the config."""
    from safetensors.torch import save as save_safetensors

    from avdata.io import atomic_write_bytes, check_output_dir, make_output_dir, sha256_file, write_json
    from avtrain.run.checkpoint import BEST, LAST
    from avtrain.run.config import TrainConfig
    from avtrain.run.data_record import RECORD_KEY
    from avtrain.serve.model import load_model  # here: avtrain.serve.model imports this module

    out = check_output_dir(out)  # a dangling symlink: one line, before the model is loaded
    run_dir = Path(run).parent if Path(run).is_file() else Path(run)
    held = [n for n in (LAST, BEST, "config.yaml") if os.path.lexists(out / n)]
    if held or out.resolve() == run_dir.resolve():
        raise InferenceError(
            f"--out {out} is a run directory (it holds {', '.join(held) or 'the run'}): an export there would "
            f"shadow the run for every later --run {out}; export into a directory of its own"
        )
    model = load_model(run, "cpu", extract, checkpoint)
    if model.source["kind"] != "run":
        raise InferenceError(f"{run}: already an export; copy the directory instead")
    tensors, aliases, seen = {}, {}, {}
    for name, tensor in model.model.state_dict().items():
        ptr = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ptr in seen and tensor.numel():  # safetensors stores no shared tensors: keep one, name the rest
            aliases[name] = seen[ptr]
            continue
        seen[ptr] = name
        tensors[name] = tensor.detach().cpu().contiguous()
    make_output_dir(out)
    atomic_write_bytes(out / EXPORT_WEIGHTS, save_safetensors(tensors))
    from avdata.audio import SPEC_CONFIG

    meta = {
        "format": EXPORT_FORMAT,
        "format_version": 1,
        "train_config": TrainConfig.to_dict(model.cfg),
        **({"labels": model.model.labels.to_dict()} if model.model.labels is not None else {}),
        # what serving preprocesses with: the item shards' settings as the run recorded them (or
        # the caller's override); "data" says where they came from (absent: the run recorded nothing)
        "extract": dataclasses.asdict(model.extract),
        **({RECORD_KEY: model.record} if model.record is not None else {}),
        "spectrogram": SPEC_CONFIG,
        "scoring": {
            "kind": SCORE_KIND,
            "rule": f"score = -Euclidean distance between {model.embed_dim}-d embeddings",
        },
        "aliases": aliases,
        "epoch": model.source["epoch"],
        "step": model.source["step"],
        "source_run": str(run),
        "weights_sha256": sha256_file(out / EXPORT_WEIGHTS),
    }
    write_json(out / EXPORT_CONFIG, meta)
    return meta
