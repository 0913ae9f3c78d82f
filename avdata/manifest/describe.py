"""Manifests of what is on disk: shard and tuple directories (re-hashed) and identity splits."""

from __future__ import annotations

import copy
import os
from pathlib import Path

from avdata.errors import AvmatchError
from avdata.io import sha256_file, sha256_ids, sha256_stream
from avdata.manifest.schema import (
    FORMAT_VERSION,
    SHARDS_KIND,
    SPLITS_KIND,
    TUPLES_KIND,
    ManifestError,
    _short,
    load_manifest,
)
from avdata.untrusted import open_inside

# ---------------------------------------------------------------- describe


def describe(dir: str | Path, tuples: str | Path | None = None) -> dict:
    """The manifest of a shard, tuple or run directory.

    Shard and tuple directories: their ``manifest.json``, with every file it lists
    re-hashed. A file whose bytes differ from the recorded sha256 (or that is
    missing, or a stray ``.tar`` not listed) is recorded with its *actual* hash and
    reported under ``integrity`` (so the manifest always describes the bytes on disk).
    Other kinds (training runs: ``avtrain.run.manifest``) come from the describers registered
    under the ``avmatch.manifests`` entry point group, given ``tuples`` (the tuple directory a
    run trained on).
    """
    dir = Path(dir)
    if not dir.is_dir():
        raise ManifestError(f"{dir}: not a directory")
    mpath = dir / "manifest.json"
    if os.path.lexists(mpath):  # whatever is there (a FIFO, a link out) is load_manifest's to refuse
        m = load_manifest(mpath, inside=True)
        if m["kind"] == SHARDS_KIND:
            return _describe_shards(dir, m)
        if m["kind"] == TUPLES_KIND:
            return _describe_tuples(dir, m)
        raise ManifestError(f"{mpath}: unknown manifest kind {m['kind']!r}")
    for describer in _plugin_describers():  # e.g. avtrain's run directories
        m = describer(dir, tuples)
        if m is not None:
            return m
    raise ManifestError(f"{dir}: not a shard, tuple or run directory (no manifest.json; not a training run)")


def _plugin_describers():
    """Describers of other directory kinds, registered by other packages under the entry point
    group ``avmatch.manifests``: ``describer(dir, tuples) -> manifest dict | None``."""
    from importlib.metadata import entry_points

    return [ep.load() for ep in sorted(entry_points(group="avmatch.manifests"), key=lambda ep: ep.name)]


def _reason(exc: AvmatchError) -> str:
    """An error line without the path it starts with (problem lines name the file themselves)."""
    return getattr(exc, "reason", None) or str(exc).split(": ", 1)[-1]


def _actual_sha256(dir: Path, rel: str, problems: list[str], missing: str = "missing") -> str | None:
    """sha256 of DIR/rel, opened as a regular file inside DIR (avdata.untrusted.open_inside: an
    unsafe name, a link leading out, a FIFO or a device is a problem line and is never read);
    None, with a problem line ``rel: why``, when it cannot be read."""
    try:
        with open_inside(dir, rel, str(dir / "manifest.json"), missing=missing) as f:
            return sha256_stream(f)
    except AvmatchError as exc:
        problems.append(f"{rel}: {_reason(exc)}")
        return None


def _rehash(dir: Path, entries: dict, problems: list[str]) -> None:
    """Replace each entry's sha256 by the file's actual one; note mismatches."""
    for rel in sorted(entries):
        entry = entries[rel]
        actual = _actual_sha256(dir, rel, problems, "listed in manifest.json but missing on disk")
        if actual is None:
            entry["sha256"] = None
            continue
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
    if not os.path.lexists(path):  # anything else there is read_sizes' to refuse
        if expected:  # readers find shards through sizes.json
            problems.append("sizes.json: missing")
        return
    from avdata.reader import read_sizes  # the one sizes.json parser

    try:
        sizes = read_sizes(path)
    except AvmatchError as exc:
        problems.append(f"sizes.json: {_reason(exc)}")
        return
    if sizes != expected:
        problems.append("sizes.json: does not match the counts in manifest.json")


def _check_detections(dir: Path, shards: dict, problems: list[str]) -> None:
    """Face shards' detection sidecars: listed, present, one JSON line per sample. Their bytes
    are not hashed: MTCNN's float boxes move in the last bits between CPUs."""
    from avdata.untrusted import open_inside

    for rel, entry in sorted(shards.items()):
        name = entry.get("detections") if isinstance(entry, dict) else None
        if name is None:
            continue
        lines = 0
        try:
            with open_inside(
                dir, name, f"{dir}/manifest.json", missing="listed in manifest.json but missing"
            ) as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    lines += block.count(b"\n")
        except AvmatchError as exc:
            problems.append(f"{name}: {_reason(exc)}")
            continue
        if lines != entry.get("samples"):
            problems.append(f"{name}: {lines} detection lines for {entry.get('samples')} samples of {rel}")


def _describe_shards(dir: Path, m: dict) -> dict:
    desc = copy.deepcopy(m)
    problems: list[str] = []
    _rehash(dir, desc.get("shards", {}), problems)
    _check_detections(dir, desc.get("shards", {}), problems)
    _stray_tars(dir, desc.get("shards", {}), "*/*.tar", problems)
    _check_sizes(dir, {k: v["samples"] for k, v in m.get("shards", {}).items()}, problems)
    actual = _actual_sha256(dir, "rejects.jsonl", problems)
    if actual is not None and actual != m.get("rejects_sha256"):
        problems.append("rejects.jsonl: bytes on disk differ from manifest.json")
        desc["rejects_sha256"] = actual
    from avdata.tuples import read_splits  # the one splits.csv reader

    try:
        df = read_splits(dir)
    except AvmatchError as exc:
        problems.append(f"splits.csv: {_reason(exc)}")
    else:
        from avdata.corpora import find_protocol

        config = m.get("config") if isinstance(m.get("config"), dict) else {}
        protocol = find_protocol(config.get("corpus"), config.get("protocol"))
        carved = protocol.identity_split_of if protocol is not None else {}
        for split, entry in sorted(desc.get("splits", {}).items()):
            source = carved.get(split, split)  # seen_heard: media of train identities; fame's heard: of test
            ids = df.loc[df["split"] == source, "vox_id"].tolist()
            if sha256_ids(ids) != entry.get("identities_sha256") or len(ids) != entry.get("identities"):
                problems.append(f"splits.csv: {split} identities differ from manifest.json")
                entry["identities"], entry["identities_sha256"] = len(ids), sha256_ids(ids)
    if problems:
        desc["integrity"] = problems
    return desc


def _describe_tuples(dir: Path, m: dict) -> dict:
    from avdata.tuples import SOURCE_SHARDS_KEY

    desc = copy.deepcopy(m)
    # where the source shards were (a path relative to DIR), not what they are: the sha256 beside it is
    desc.pop(SOURCE_SHARDS_KEY, None)
    problems: list[str] = []
    _rehash(dir, desc.get("files", {}), problems)
    _rehash(dir, desc.get("shards", {}), problems)
    _stray_tars(dir, desc.get("shards", {}), "shards/*.tar", problems)
    _check_sizes(dir, {k: v["tuples"] for k, v in m.get("shards", {}).items()}, problems)
    if problems:
        desc["integrity"] = problems
    return desc


# ---------------------------------------------------------------- identity splits


def split_rule(protocol: str, corpus: str | None = None, options=None) -> str:
    """The rule as it is applied now, read off the corpus's protocol (avdata.corpora; not a fixed
    string), so a changed rule changes the manifest: matching probes the name-initial rule letter
    by letter."""
    from avdata.corpora import CorpusError, ProtocolOptions, get_corpus

    try:
        return get_corpus(corpus).split_rule(protocol, options or ProtocolOptions())
    except CorpusError as exc:
        raise ManifestError(str(exc)) from None


def identity_split_manifest(
    meta: str | Path,
    protocol: str,
    pins_splits: str | Path | None = None,
    corpus: str | None = None,
    options=None,
) -> dict:
    """Hashes and counts of a protocol's identity split from the official files. ``corpus`` and the
    protocol's other files appear only where they are not VoxCeleb1's (so the committed VoxCeleb1
    manifests stay as they were)."""
    from avdata.corpora import ProtocolOptions, get_corpus

    c = get_corpus(corpus)
    options = options or ProtocolOptions(pins_splits=pins_splits)
    meta_df = c.read_meta(meta)
    df = c.identity_splits(meta_df, protocol, options)
    per_split = {}
    for split in sorted(df["split"].unique()):
        ids = df.loc[df["split"] == split, "vox_id"].tolist()
        per_split[split] = {"identities": len(ids), "identities_sha256": sha256_ids(ids)}
    unplaced = [name for name, _ in df.attrs["unplaced"]]
    desc = {
        "kind": SPLITS_KIND,
        "format_version": FORMAT_VERSION,
        "protocol": protocol,
        "rule": split_rule(protocol, c.name, options),
        "inputs": {
            "meta_sha256": sha256_file(meta),
            "pins_splits_sha256": sha256_file(pins_splits) if pins_splits else None,
            "meta_identities": int(len(meta_df)),
        }
        | c.protocol_inputs(protocol, options),
        "splits": per_split,
        "unplaced": {"identities": len(unplaced), "names_sha256": sha256_ids(unplaced)},
    }
    if c.name != "voxceleb1":
        desc["corpus"] = c.name
    return desc
