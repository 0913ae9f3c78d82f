"""Readable differences between two manifests; verify and update against committed files."""

from __future__ import annotations

from pathlib import Path

from avdata.errors import AvmatchError
from avdata.manifest.describe import describe, identity_split_manifest
from avdata.manifest.schema import (
    _HEX64,
    _MISSING,
    _SECTION_ORDER,
    EQUIVALENT,
    MAX_LINES,
    WARNING,
    WARNING_PATHS,
    ManifestError,
    _short,
    load_manifest,
    write_manifest,
)

# ---------------------------------------------------------------- diff


def _is_hash_key(key: str) -> bool:
    return key.endswith("sha256") or key in ("array_hashes", "digests")  # content records: base64


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


def _diff_entries(section: str, e: dict, a: dict, compared: dict | None = None) -> list[str]:
    """shards / files sections: one line per changed field of each named file. ``compared``:
    {name: avdata.manifest.content.Comparison} for shards whose bytes differ (from verify)."""
    compared = compared or {}
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
        if name in compared:  # bytes differ: the content comparison speaks for bytes and content
            cmp = compared[name]
            changes = [(p, c) for p, c in changes if p.split(".")[0] not in ("sha256", "bytes", "content")]
            if cmp.equivalent and not changes:
                out.append(f"{EQUIVALENT}{section}: {name} {cmp.describe()}")
                continue
            changes.append(("sha256", f"changed, {cmp.describe()}"))
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


def diff(expected: dict, actual: dict, limit: int = MAX_LINES, compared: dict | None = None) -> list[str]:
    """Readable differences, expected → actual, in a fixed order.

    Failure lines name what changed (``shards: train/audio-000000.tar sha256 changed
    (…)``, ``splits: test identity list changed (193 → 192 identities)``,
    ``config.spectrogram.n_fft: 2048 → 1024``); integrity problems of the actual
    directory come first; lines starting with ``warning: `` (library versions) come
    last and do not count as failures (see :func:`has_failures`). At most ``limit``
    failure lines are kept, then ``... N more differences``. Empty list: identical.
    ``compared`` (from :func:`verify`): content comparisons of shards whose bytes differ; an
    equivalent one is an ``equivalent: `` line (after the failures, before the warnings).
    """
    if expected.get("kind") != actual.get("kind"):
        return [
            f"kind: {_short(expected.get('kind'))} → {_short(actual.get('kind'))} "
            "(not the same kind of manifest)"
        ]
    failures = [f"integrity: {p}" for p in actual.get("integrity", [])]
    warnings: list[str] = []
    equivalents: list[str] = []
    keys = (set(expected) | set(actual)) - {"integrity"}
    order = {k: i for i, k in enumerate(_SECTION_ORDER)}
    for key in sorted(keys, key=lambda k: (order.get(k, len(order)), k)):
        e, a = expected.get(key, _MISSING), actual.get(key, _MISSING)
        if e == a:
            continue
        if key in ("shards", "files") and e is not _MISSING and a is not _MISSING:
            lines = _diff_entries(key, e, a, compared if key == "shards" else None)
            equivalents.extend(line for line in lines if line.startswith(EQUIVALENT))
            lines = [line for line in lines if not line.startswith(EQUIVALENT)]
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
    if equivalents and not failures:  # the verdict, from the comparisons themselves
        from avdata.manifest.content import summary

        equivalents.append(EQUIVALENT + summary(c for c in (compared or {}).values() if c.equivalent))
    return failures + equivalents + warnings


def has_failures(lines: list[str]) -> bool:
    """True when any line is a real difference (not a ``warning: `` or ``equivalent: `` line)."""
    return any(not (l.startswith(WARNING) or l.startswith(EQUIVALENT)) for l in lines)


def equivalence_summary(lines: list[str]) -> str | None:
    """The verdict line :func:`diff` ends its equivalence lines with (``equivalent (float noise
    in N samples of K shards, ...)``), when there is no failure; else None."""
    if has_failures(lines):
        return None
    return next(
        (l[len(EQUIVALENT) :] for l in reversed(lines) if l.startswith(EQUIVALENT + "equivalent (")), None
    )


def compare_shard_contents(dir: str | Path, expected: dict, actual: dict) -> dict:
    """Content comparisons (avdata.manifest.content) of the shards of DIR whose bytes differ
    from the committed manifest's: recomputed from the tars on disk, never taken from DIR's
    own manifest.json (which could claim anything)."""
    from avdata.manifest.content import compare, shard_content, shard_modality
    from avdata.untrusted import resolve_inside

    out = {}
    e_shards, a_shards = expected.get("shards"), actual.get("shards")
    if not isinstance(e_shards, dict) or not isinstance(a_shards, dict):
        return out
    digests = actual.get("kind") != "avmatch.tuples"  # tuple shards copy item arrays: no digests
    for name in sorted(set(e_shards) & set(a_shards)):
        e, a = e_shards[name], a_shards[name]
        if not isinstance(e, dict) or not isinstance(a, dict) or e.get("sha256") == a.get("sha256"):
            continue
        if a.get("sha256") is None:  # missing on disk: reported as integrity
            continue
        try:
            path = resolve_inside(Path(dir), name, f"{dir}/manifest.json")
            content = shard_content(path, digests=digests)
        except (AvmatchError, OSError, ValueError) as exc:
            from avdata.manifest.content import Comparison

            out[name] = Comparison(False, 0, 0, None, f"cannot read it back ({exc})")
            continue
        out[name] = compare(e.get("content"), content, shard_modality(name))
    return out


# ---------------------------------------------------------------- verify / update


def verify(dir: str | Path, against_file: str | Path, tuples: str | Path | None = None) -> list[str]:
    """Differences between DIR (described now) and a committed manifest; see :func:`diff`."""
    expected = load_manifest(against_file)
    actual = describe(dir, tuples=tuples)
    return diff(expected, actual, compared=compare_shard_contents(dir, expected, actual))


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


def verify_splits(
    meta: str | Path,
    protocol: str,
    against: str | Path,
    pins_splits: str | Path | None = None,
    corpus: str | None = None,
    options=None,
) -> list[str]:
    return diff(
        load_manifest(against),
        identity_split_manifest(meta, protocol, pins_splits, corpus=corpus, options=options),
    )
