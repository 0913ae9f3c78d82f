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
  losses / metrics and a hash of the final weights. avdata knows nothing of training: the
  describer of run directories lives in ``avtrain.run.manifest`` and is found through the
  ``avmatch.manifests`` entry point group.

Modules: :mod:`.schema` (kinds, constants, reading and writing manifest files),
:mod:`.describe` (shard, tuple and split manifests of what is on disk), :mod:`.diff`
(readable differences, verify, update). :func:`describe` gives the manifest of a directory, :func:`diff` compares two
manifests into readable lines naming what changed, :func:`verify` and :func:`update`
tie them to committed files. Committed files are canonical JSON (sorted keys,
indent 1, trailing newline) so a change reads as a small ``git diff``.

Library versions are recorded but a version difference is only a *warning* line:
the outputs (hashes of every shard and index file) decide pass or fail.
"""

from avdata.manifest.describe import describe, identity_split_manifest, split_rule
from avdata.manifest.diff import (
    diff,
    equivalence_summary,
    has_failures,
    update,
    verify,
    verify_splits,
    write_with_diff,
)
from avdata.manifest.schema import (
    EQUIVALENT,
    FORMAT_VERSION,
    MAX_LINES,
    RUN_KIND,
    SHARDS_KIND,
    SPLITS_KIND,
    TUPLES_KIND,
    WARNING,
    WARNING_PATHS,
    ManifestError,
    load_manifest,
    write_manifest,
)

__all__ = [
    "EQUIVALENT",
    "FORMAT_VERSION",
    "MAX_LINES",
    "RUN_KIND",
    "SHARDS_KIND",
    "SPLITS_KIND",
    "TUPLES_KIND",
    "WARNING",
    "WARNING_PATHS",
    "ManifestError",
    "describe",
    "diff",
    "equivalence_summary",
    "has_failures",
    "identity_split_manifest",
    "load_manifest",
    "split_rule",
    "update",
    "verify",
    "verify_splits",
    "write_manifest",
    "write_with_diff",
]
