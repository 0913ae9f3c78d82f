"""Manifests: describe every avmatch output so it can be re-checked anywhere.

Four kinds (see docs/reproducibility.md):

* ``avmatch.shards``  — a ``build-shards`` directory: its ``manifest.json`` (config,
  versions, input hashes, identity lists as hashes and counts, per-shard sha256 /
  samples / bytes / inputs_sha256, rejects), every listed file re-hashed on disk;
* ``avmatch.tuples``  — a ``make-tuples`` directory: its ``manifest.json`` (per index
  file config / sha256 / tuple count, per tuple shard sha256 / count), re-hashed;
* ``avmatch.identity_splits`` — the identity split of a protocol computed from the
  official meta (and PINs) files: their sha256, the rule, per split a count and the
  sha256 of the sorted VoxCeleb1 id list (never the lists or the files themselves);
* ``avmatch.run`` — a training run: config, seed, the tuple manifest's sha256, final
  losses / metrics and a hash of the final weights.

:func:`describe` gives the manifest of a directory, :func:`diff` compares two
manifests into readable lines naming what changed, :func:`verify` and :func:`update`
tie them to committed files. Committed files are canonical JSON (sorted keys,
indent 1, trailing newline) so a change reads as a small ``git diff``.

Library versions are recorded but a version difference is only a *warning* line:
the outputs (hashes of every shard and index file) decide pass or fail.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import string
from pathlib import Path

from avdata.errors import AvmatchError

# the one owner of hashing and atomic writes; re-exported here for existing callers
from avdata.io import canonical_json, sha256_file, sha256_ids, write_json  # noqa: F401

FORMAT_VERSION = 1
SHARDS_KIND = "avmatch.shards"
TUPLES_KIND = "avmatch.tuples"
SPLITS_KIND = "avmatch.identity_splits"
RUN_KIND = "avmatch.run"

WARNING = "warning: "
MAX_LINES = 50  # failure lines shown before "... N more differences"
RUN_CHECKPOINT = "checkpoint.pt"

# Paths whose differences are warnings, not failures: they change with the machine's
# environment while the outputs (compared by hash) may stay identical.
#   versions.*                      library versions of the environment
#   source_shards_manifest_sha256   (tuples) the hash of the source shards' manifest.json,
#                                   which embeds those versions; the shards are checked
#                                   by their own manifest, the tuples by their file hashes.
WARNING_PATHS = ("versions", "source_shards_manifest_sha256")

# Keys of run metrics/logs that measure speed, not results; left out of run manifests.
_VOLATILE_RUN_KEY = re.compile(r"(_per_s|_seconds|^elapsed.*|^wall_s|^time_s|^duration.*)$")

# Sections in the order their differences are reported (others follow, sorted).
_SECTION_ORDER = (
    "kind",
    "format_version",
    "protocol",
    "rule",
    "config",
    "seed",
    "inputs",
    "data",
    "identity_splits",
    "splits",
    "unplaced",
    "files",
    "shards",
    "rejects",
    "rejects_sha256",
    "progress",
    "final_losses",
    "metrics",
    "weights_sha256",
)


class ManifestError(AvmatchError, ValueError):
    """A manifest or directory that cannot be described or compared (one line). A ValueError
    too, for callers that catch those."""


_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MISSING = object()


# ---------------------------------------------------------------- hashing and files


def load_manifest(path: str | Path) -> dict:
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not a JSON manifest ({exc})") from None
    if not isinstance(obj, dict) or "kind" not in obj:
        raise ManifestError(f"{path}: not an avmatch manifest (no 'kind')")
    return obj


def write_manifest(obj: dict, path: str | Path) -> None:
    """Canonical JSON, written atomically (a full disk is a one-line DiskFullError)."""
    write_json(path, obj)


# ---------------------------------------------------------------- describe


def describe(dir: str | Path, tuples: str | Path | None = None) -> dict:
    """The manifest of a shard, tuple or run directory.

    Shard and tuple directories: their ``manifest.json``, with every file it lists
    re-hashed. A file whose bytes differ from the recorded sha256 (or that is
    missing, or a stray ``.tar`` not listed) is recorded with its *actual* hash and
    reported under ``integrity`` (so the manifest always describes the bytes on disk).
    Run directories (``config.yaml`` + ``checkpoint.pt``): :func:`run_manifest`, with
    ``tuples`` the tuple directory it trained on.
    """
    dir = Path(dir)
    if not dir.is_dir():
        raise ManifestError(f"{dir}: not a directory")
    mpath = dir / "manifest.json"
    if mpath.is_file():
        m = load_manifest(mpath)
        if m["kind"] == SHARDS_KIND:
            return _describe_shards(dir, m)
        if m["kind"] == TUPLES_KIND:
            return _describe_tuples(dir, m)
        raise ManifestError(f"{mpath}: unknown manifest kind {m['kind']!r}")
    if (dir / "config.yaml").is_file() and (dir / RUN_CHECKPOINT).is_file():
        return run_manifest(dir, tuples)
    raise ManifestError(
        f"{dir}: not a shard, tuple or run directory (no manifest.json, no config.yaml + {RUN_CHECKPOINT})"
    )


def _rehash(dir: Path, entries: dict, problems: list[str]) -> None:
    """Replace each entry's sha256 by the file's actual one; note mismatches."""
    for rel in sorted(entries):
        entry, path = entries[rel], dir / rel
        if not path.is_file():
            problems.append(f"{rel}: listed in manifest.json but missing on disk")
            entry["sha256"] = None
            continue
        actual = sha256_file(path)
        if actual != entry.get("sha256"):
            problems.append(
                f"{rel}: bytes on disk differ from manifest.json "
                f"(sha256 {_short(entry.get('sha256'))} recorded, {_short(actual)} on disk)"
            )
            entry["sha256"] = actual


def _stray_tars(dir: Path, listed, pattern: str, problems: list[str]) -> None:
    for p in sorted(dir.glob(pattern)):
        rel = p.relative_to(dir).as_posix()
        if rel not in listed:
            problems.append(f"{rel}: on disk but not in manifest.json (left from an earlier build?)")


def _check_sizes(dir: Path, expected: dict, problems: list[str]) -> None:
    path = dir / "sizes.json"
    if not path.is_file():
        if expected:  # readers find shards through sizes.json
            problems.append("sizes.json: missing")
        return
    from avdata.reader import read_sizes  # the one sizes.json parser

    try:
        sizes = read_sizes(path)
    except AvmatchError as exc:
        problems.append(f"sizes.json: {str(exc).split(': ', 1)[-1]}")
        return
    if sizes != expected:
        problems.append("sizes.json: does not match the counts in manifest.json")


def _describe_shards(dir: Path, m: dict) -> dict:
    desc = copy.deepcopy(m)
    problems: list[str] = []
    _rehash(dir, desc.get("shards", {}), problems)
    _stray_tars(dir, desc.get("shards", {}), "*/*.tar", problems)
    _check_sizes(dir, {k: v["samples"] for k, v in m.get("shards", {}).items()}, problems)
    rejects = dir / "rejects.jsonl"
    if not rejects.is_file():
        problems.append("rejects.jsonl: missing")
    else:
        actual = sha256_file(rejects)
        if actual != m.get("rejects_sha256"):
            problems.append("rejects.jsonl: bytes on disk differ from manifest.json")
            desc["rejects_sha256"] = actual
    splits_csv = dir / "splits.csv"
    if not splits_csv.is_file():
        problems.append("splits.csv: missing")
    else:
        import pandas as pd

        df = pd.read_csv(splits_csv, dtype=str, keep_default_na=False)
        for split, entry in sorted(desc.get("splits", {}).items()):
            source = "train" if split == "seen_heard" else split  # seen_heard: media of train identities
            ids = df.loc[df["split"] == source, "vox_id"].tolist()
            if sha256_ids(ids) != entry.get("identities_sha256") or len(ids) != entry.get("identities"):
                problems.append(f"splits.csv: {split} identities differ from manifest.json")
                entry["identities"], entry["identities_sha256"] = len(ids), sha256_ids(ids)
    if problems:
        desc["integrity"] = problems
    return desc


def _describe_tuples(dir: Path, m: dict) -> dict:
    desc = copy.deepcopy(m)
    problems: list[str] = []
    _rehash(dir, desc.get("files", {}), problems)
    _rehash(dir, desc.get("shards", {}), problems)
    _stray_tars(dir, desc.get("shards", {}), "shards/*.tar", problems)
    _check_sizes(dir, {k: v["tuples"] for k, v in m.get("shards", {}).items()}, problems)
    if problems:
        desc["integrity"] = problems
    return desc


# ---------------------------------------------------------------- identity splits


def split_rule(protocol: str) -> str:
    """The rule as it is applied now, read off avdata.splits (not a fixed string), so a
    changed rule changes the manifest: matching probes matching_split letter by letter."""
    from avdata import splits

    if protocol == "matching":
        groups: list[list[str]] = []
        for letter in string.ascii_uppercase:
            try:
                s = splits.matching_split(letter)
            except ValueError:
                s = "unplaced"
            if groups and groups[-1][2] == s:
                groups[-1][1] = letter
            else:
                groups.append([letter, letter, s])
        parts = [f"{a}-{b} {s}" if a != b else f"{a} {s}" for a, b, s in groups]
        return "matching: first letter of the VGGFace1 name: " + ", ".join(parts)
    if protocol == "pins":
        sets = ", ".join(f"{k} {v}" for k, v in sorted(splits.PINS_SET_TO_SPLIT.items()))
        return (
            f"pins: identity_splits.txt set {sets}; seen_heard holds media of train identities "
            "(held-out source videos, chosen when shards are built)"
        )
    raise ManifestError(f"unknown protocol {protocol!r}; choose from {splits.PROTOCOLS}")


def identity_split_manifest(meta: str | Path, protocol: str, pins_splits: str | Path | None = None) -> dict:
    """Hashes and counts of a protocol's identity split from the official files."""
    from avdata.splits import identity_splits, read_meta

    meta_df = read_meta(meta)
    df = identity_splits(meta_df, protocol, pins_splits)
    per_split = {}
    for split in sorted(df["split"].unique()):
        ids = df.loc[df["split"] == split, "vox_id"].tolist()
        per_split[split] = {"identities": len(ids), "identities_sha256": sha256_ids(ids)}
    unplaced = [name for name, _ in df.attrs["unplaced"]]
    return {
        "kind": SPLITS_KIND,
        "format_version": FORMAT_VERSION,
        "protocol": protocol,
        "rule": split_rule(protocol),
        "inputs": {
            "meta_sha256": sha256_file(meta),
            "pins_splits_sha256": sha256_file(pins_splits) if pins_splits else None,
            "meta_identities": int(len(meta_df)),
        },
        "splits": per_split,
        "unplaced": {"identities": len(unplaced), "names_sha256": sha256_ids(unplaced)},
    }


def verify_splits(
    meta: str | Path, protocol: str, against: str | Path, pins_splits: str | Path | None = None
) -> list[str]:
    return diff(load_manifest(against), identity_split_manifest(meta, protocol, pins_splits))


# ---------------------------------------------------------------- runs


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


# ---------------------------------------------------------------- diff


def _short(v) -> str:
    """A value for a diff line: hashes cut to 12 hex digits, long values shortened."""
    if isinstance(v, str) and _HEX64.match(v):
        return v[:12] + "…"
    text = json.dumps(v, sort_keys=True)
    limit = 200 if isinstance(v, str) else 80  # a rule or setting text is read whole
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_hash_key(key: str) -> bool:
    return key.endswith("sha256")


def _change(key: str, e, a) -> str:
    """How one value changed, e.g. '2048 → 1024' or 'changed (abc… → def…)'."""
    if e is _MISSING:
        return f"added ({_short(a)})"
    if a is _MISSING:
        return f"missing (expected {_short(e)})"
    if _is_hash_key(key) or (isinstance(e, str) and _HEX64.match(e)):
        return f"changed ({_short(e)} → {_short(a)})"
    if isinstance(e, list) and isinstance(a, list):
        scalar = all(not isinstance(x, (dict, list)) for x in e + a)
        if scalar and len(e) <= 8 and len(a) <= 8:
            return f"{_short(e)} → {_short(a)}"
        return f"changed ({len(e)} → {len(a)} items)"
    return f"{_short(e)} → {_short(a)}"


def _walk(e, a, path: str) -> list[tuple[str, str]]:
    """(path, change) for every differing leaf, keys in sorted order."""
    if e == a:
        return []
    if isinstance(e, dict) and isinstance(a, dict):
        out = []
        for k in sorted(set(e) | set(a), key=str):
            out.extend(_walk(e.get(k, _MISSING), a.get(k, _MISSING), f"{path}.{k}" if path else str(k)))
        return out
    return [(path, _change(path.rsplit(".", 1)[-1], e, a))]


def _line(path: str, change: str) -> str:
    return f"{path} {change}" if change.startswith("changed") else f"{path}: {change}"


def _count(entry, *keys) -> str:
    for k in keys:
        if isinstance(entry, dict) and k in entry:
            return f"{entry[k]} {k}"
    return ""


# Per-entry fields in report order: the cause (inputs) before the effects.
_ENTRY_FIELD_ORDER = (
    "inputs_sha256",
    "config",
    "samples",
    "tuples",
    "items",
    "identities",
    "bytes",
    "sha256",
)


def _diff_entries(section: str, e: dict, a: dict) -> list[str]:
    """shards / files sections: one line per changed field of each named file."""
    e = e if isinstance(e, dict) else {}
    a = a if isinstance(a, dict) else {}
    out = []
    for name in sorted(set(e) | set(a)):
        if name not in a:
            out.append(
                f"{section}: {name} missing (expected {_count(e[name], 'samples', 'tuples', 'items')})".replace(
                    " ()", ""
                )
            )
            continue
        if name not in e:
            out.append(
                f"{section}: {name} added ({_count(a[name], 'samples', 'tuples', 'items')})".replace(
                    " ()", ""
                )
            )
            continue
        changes = _walk(e[name], a[name], "")
        rank = {k: i for i, k in enumerate(_ENTRY_FIELD_ORDER)}
        changes.sort(key=lambda pc: (rank.get(pc[0].split(".")[0], len(rank)), pc[0]))
        same_inputs = "inputs_sha256" in e[name] and e[name].get("inputs_sha256") == a[name].get(
            "inputs_sha256"
        )
        for path, change in changes:
            line = f"{section}: {name} {path} {change}"
            if path == "sha256" and same_inputs:
                line += " with the same inputs"
            out.append(line)
    return out


def _diff_splits(e: dict, a: dict) -> list[str]:
    e = e if isinstance(e, dict) else {}
    a = a if isinstance(a, dict) else {}
    out = []
    for split in sorted(set(e) | set(a)):
        if split not in a:
            out.append(f"splits: {split} missing (expected {e[split].get('identities')} identities)")
            continue
        if split not in e:
            out.append(f"splits: {split} added ({a[split].get('identities')} identities)")
            continue
        se, sa = e[split], a[split]
        if se.get("identities_sha256") != sa.get("identities_sha256") or se.get("identities") != sa.get(
            "identities"
        ):
            n_e, n_a = se.get("identities"), sa.get("identities")
            counts = f"{n_e} → {n_a} identities" if n_e != n_a else f"{n_e} identities, different ids"
            out.append(f"splits: {split} identity list changed ({counts})")
        for path, change in _walk(
            {k: v for k, v in se.items() if k not in ("identities", "identities_sha256")},
            {k: v for k, v in sa.items() if k not in ("identities", "identities_sha256")},
            "",
        ):
            label = {"identities_with_samples": "identities with samples"}.get(path, path)
            if path.startswith("samples."):
                label = f"{path.split('.', 1)[1]} samples"
            out.append(f"splits: {split} {label} {change}")
    return out


def _is_warning(path: str) -> bool:
    return any(path == w or path.startswith(w + ".") for w in WARNING_PATHS)


def diff(expected: dict, actual: dict, limit: int = MAX_LINES) -> list[str]:
    """Readable differences, expected → actual, in a fixed order.

    Failure lines name what changed (``shards: train/audio-000000.tar sha256 changed
    (…)``, ``splits: test identity list changed (193 → 192 identities)``,
    ``config.spectrogram.n_fft: 2048 → 1024``); integrity problems of the actual
    directory come first; lines starting with ``warning: `` (library versions) come
    last and do not count as failures (see :func:`has_failures`). At most ``limit``
    failure lines are kept, then ``... N more differences``. Empty list: identical.
    """
    if expected.get("kind") != actual.get("kind"):
        return [
            f"kind: {_short(expected.get('kind'))} → {_short(actual.get('kind'))} "
            "(not the same kind of manifest)"
        ]
    failures = [f"integrity: {p}" for p in actual.get("integrity", [])]
    warnings: list[str] = []
    keys = (set(expected) | set(actual)) - {"integrity"}
    order = {k: i for i, k in enumerate(_SECTION_ORDER)}
    for key in sorted(keys, key=lambda k: (order.get(k, len(order)), k)):
        e, a = expected.get(key, _MISSING), actual.get(key, _MISSING)
        if e == a:
            continue
        if key in ("shards", "files") and e is not _MISSING and a is not _MISSING:
            lines = _diff_entries(key, e, a)
        elif key == "splits" and e is not _MISSING and a is not _MISSING:
            lines = _diff_splits(e, a)
        else:
            for path, change in _walk(e, a, key):
                (warnings if _is_warning(path) else failures).append(
                    (WARNING if _is_warning(path) else "") + _line(path, change)
                )
            continue
        failures.extend(lines)
    if len(failures) > limit:
        failures = failures[:limit] + [f"... {len(failures) - limit} more differences"]
    return failures + warnings


def has_failures(lines: list[str]) -> bool:
    """True when any line is a real difference (not a ``warning: `` line)."""
    return any(not l.startswith(WARNING) for l in lines)


# ---------------------------------------------------------------- verify / update


def verify(dir: str | Path, against_file: str | Path, tuples: str | Path | None = None) -> list[str]:
    """Differences between DIR (described now) and a committed manifest; see :func:`diff`."""
    expected = load_manifest(against_file)
    return diff(expected, describe(dir, tuples=tuples))


def update(dir: str | Path, file: str | Path, tuples: str | Path | None = None) -> list[str]:
    """Write DIR's manifest to FILE (canonical JSON) and return its differences from
    the previous FILE (empty when FILE is new or unchanged). Refuses a directory whose
    bytes do not match its own manifest.json."""
    desc = describe(dir, tuples=tuples)
    if desc.get("integrity"):
        raise ManifestError(
            f"{dir}: {desc['integrity'][0]} ({len(desc['integrity'])} problem(s)); "
            "rebuild it before updating its manifest"
        )
    return write_with_diff(desc, file)


def write_with_diff(desc: dict, file: str | Path) -> list[str]:
    file = Path(file)
    before = None
    if file.is_file():
        try:
            before = load_manifest(file)
        except ValueError:
            before = None
    write_manifest(desc, file)
    return diff(before, desc, limit=10**9) if before else []
