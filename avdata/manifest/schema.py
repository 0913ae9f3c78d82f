"""Manifest kinds, their constants and the one reader/writer of manifest files."""

from __future__ import annotations

import json
import re
from pathlib import Path

from avdata.errors import AvmatchError
from avdata.io import write_json

FORMAT_VERSION = 1
SHARDS_KIND = "avmatch.shards"
TUPLES_KIND = "avmatch.tuples"
SPLITS_KIND = "avmatch.identity_splits"
RUN_KIND = "avmatch.run"

WARNING = "warning: "
# A shard whose bytes differ but whose content is within tolerance (avdata.manifest.content):
# not a failure, but not identical either (verify exits 3, see docs/reproducibility.md).
EQUIVALENT = "equivalent: "
MAX_LINES = 50  # failure lines shown before "... N more differences"

# Paths whose differences are warnings, not failures: they change with the machine's
# environment while the outputs (compared by hash) may stay identical.
#   versions.*                      library versions of the environment
#   source_shards_manifest_sha256   (tuples) the hash of the source shards' manifest.json,
#                                   which embeds those versions; the shards are checked
#                                   by their own manifest, the tuples by their file hashes.
WARNING_PATHS = ("versions", "source_shards_manifest_sha256")


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


def load_manifest(path: str | Path, inside: bool = False) -> dict:
    """A manifest file: a regular file of at most MAX_METADATA_BYTES (a FIFO or device is refused,
    never waited on). ``inside``: ``path`` is DIR/manifest.json of a directory being described,
    read only if it stays inside DIR (:func:`avdata.untrusted.read_inside`)."""
    from avdata.untrusted import MAX_METADATA_BYTES, read_inside, read_regular

    path = Path(path)
    try:
        if inside:
            raw = read_inside(path.parent, path.name, missing="manifest not found")
        else:
            raw = read_regular(path, MAX_METADATA_BYTES, "manifest not found")
    except AvmatchError as exc:
        raise ManifestError(str(exc)) from None
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not a JSON manifest ({exc})") from None
    if not isinstance(obj, dict) or "kind" not in obj:
        raise ManifestError(f"{path}: not an avmatch manifest (no 'kind')")
    return obj


def write_manifest(obj: dict, path: str | Path) -> None:
    """Canonical JSON, written atomically (a full disk is a one-line DiskFullError)."""
    write_json(path, obj)


def _short(v) -> str:
    """A value for a diff line: hashes cut to 12 hex digits, long values shortened."""
    if isinstance(v, str) and _HEX64.match(v):
        return v[:12] + "…"
    text = json.dumps(v, sort_keys=True)
    limit = 200 if isinstance(v, str) else 80  # a rule or setting text is read whole
    return text if len(text) <= limit else text[: limit - 1] + "…"
