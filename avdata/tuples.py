"""make-tuples: fixed, checkable evaluation and training tuples drawn from shards.

Protocols (see docs/tuples.md):

* matching — one query of one modality, its positive (other modality, same identity)
  and k-1 negatives (other modality, k-1 distinct other identities), the positive
  at a uniformly drawn position, which is the label. k = 2 ("binary"): one positive
  pair per identity and ``negatives_per_positive`` tuples with one negative each
  (942 train identities x 15 = 14,130); k > 2 ("multi-way"): ``sets_per_identity``
  tuples per identity (153 test identities x 50 = 7,650).
* verification — balanced (voice, face) pairs: per identity ``pairs_per_identity``
  positive and as many negative pairs; or ``pairs`` in all, spread over the identities
  (the Learnable-PINs training set: 901 train identities, 423,004 pairs).
* retrieval — every item of the split as a query against all items of the other
  modality (a query list and a gallery list per direction).

Positives from another video (``positive_source="other-video"``): the positive (verification:
the same-identity pair) never comes from the query's source video, so a model cannot match the
pair by the recording they share; identities whose items all come from one video are skipped
and counted. ``negative_source="other-video"`` keeps negatives off the query's video the same
way (a video can show two identities). The default ``any`` draws as before, byte for byte.

Every draw for one identity uses its own stream ``default_rng([seed, crc32(...)])``
keyed by task, split, direction, k and identity, so outputs are byte-identical for
the same shards and seed, and adding an identity does not reshuffle the others.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tarfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from avdata.errors import AvmatchError, InputError
from avdata.io import (
    add_tar_member,
    atomic_output,
    atomic_write_text,
    check_output_dir,
    sha256_bytes,
    sha256_file,
    sha256_stream,
    sha256_text,
    write_json,
)
from avdata.reader import (
    check_member,
    index_items,
    npy_problem,
    read_member,
    read_sizes,
)
from avdata.tasks import DIRECTIONS, TASKS
from avdata.untrusted import (
    MAX_INDEX_BYTES,
    UnsafeShardError,
    name_problem,
    open_inside,
    read_inside,
    resolve_inside,
)

ATTRIBUTES = ("gender", "nationality")
SOURCES = ("any", "other-video")  # --positive-source / --negative-source


class TupleError(AvmatchError, ValueError):
    """A tuple request or tuple directory that cannot be used (one line). Also a ValueError
    for callers written before AvmatchError existed."""


# ---------------------------------------------------------------- untrusted directories


def check_out_dir(shards: str | Path, out: str | Path) -> None:
    """Refuse an --out that would write into the shard directory (its sizes.json and
    manifest.json would be overwritten; it is shared and verified by its manifest), or a
    shard directory inside the parts of --out that make-tuples writes."""
    s, o = Path(shards).resolve(), Path(out).resolve()
    if o == s:
        raise TupleError(
            f"--out {out} is the shard directory: make-tuples would overwrite its sizes.json and "
            f"manifest.json; choose another directory"
        )
    if s in o.parents:
        raise TupleError(
            f"--out {out} lies inside the shard directory {shards}; write tuples beside it, not into it"
        )
    for sub in ("index", "shards"):
        if s == o / sub or (o / sub) in s.parents:
            raise TupleError(f"--shards {shards} lies inside {out}/{sub}, where make-tuples writes")


def source_manifest_sha256(shards: Path) -> str:
    """sha256 of SHARDS/manifest.json, after checking that it is a readable JSON object
    (an empty or unreadable one means the directory is not a finished build)."""
    path = Path(shards) / "manifest.json"
    raw = read_inside(
        shards, "manifest.json", missing="missing; not a shard directory from avdata build-shards"
    )
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        why = "empty file" if not raw else f"not valid JSON ({type(exc).__name__})"
        raise InputError(path, f"{why}; rebuild the shards with avdata build-shards") from None
    if not isinstance(data, dict):
        raise InputError(path, "not a JSON object; rebuild the shards with avdata build-shards")
    return sha256_bytes(raw)


SOURCE_SHARDS_KEY = "source_shards"  # tuple / item store manifests: where their item shards were


def source_shards_link(shards: str | Path, out: str | Path) -> str:
    """What a tuple directory's or an item store's manifest records as ``source_shards``: the
    item shard directory it was made from, as a path relative to OUT (both usually move together),
    beside ``source_shards_manifest_sha256`` that says which build it must be."""
    return os.path.relpath(Path(shards).resolve(), Path(out).resolve())


def _link_problem(link: str) -> str | None:
    """Why a ``source_shards`` link is not what :func:`source_shards_link` writes (a relative path,
    ``..`` components allowed), or None. A URL is never fetched, an absolute path never taken."""
    from avdata.untrusted import _SCHEME

    if any(ord(c) < 32 for c in link):
        return "contains control characters"
    if _SCHEME.match(link):
        return "a URL; avmatch reads local directories only"
    if link.startswith("/"):
        return "an absolute path"
    if link.startswith("~"):
        return "starts with ~"
    if "\\" in link:
        return "contains a backslash"
    return None


def linked_source_shards(dir: str | Path, manifest: dict) -> tuple[Path | None, str]:
    """The item shard directory that DIR's manifest (a tuple directory's or an item store's) links
    to, and "" -- or None and why not (one phrase): no ``source_shards`` recorded (made before
    avmatch recorded it), the directory gone, or its manifest.json not the sha256 recorded beside
    the link (rebuilt or replaced since). A link is only followed to a build whose manifest hashes
    to what DIR recorded, so a moved or edited link never names other shards; a link that is not a
    relative path (a URL, an absolute path, ``~``, control characters) is not followed at all."""
    link, want = manifest.get(SOURCE_SHARDS_KEY), manifest.get("source_shards_manifest_sha256")
    where = Path(dir) / "manifest.json"
    if link is None:
        return None, f"{where} records no {SOURCE_SHARDS_KEY} (made before avmatch recorded it)"
    if not isinstance(link, str) or not link or "\x00" in link or not isinstance(want, str):
        return None, f"{where}: {SOURCE_SHARDS_KEY} is not a path with its manifest sha256"
    problem = _link_problem(link)
    if problem:
        return (
            None,
            f"{where}: {SOURCE_SHARDS_KEY} {link!r} is not a relative path to a directory ({problem})",
        )
    shards = Path(dir) / link
    try:
        sha = source_manifest_sha256(shards)
    except AvmatchError as exc:
        return None, f"{where} names {link} as its item shards: {exc}"
    if sha != want:
        return None, (
            f"{where} names {link} as its item shards, but their manifest.json is not the one it was "
            f"made from (sha256 {sha[:12]}… vs {want[:12]}…)"
        )
    return shards, ""


def read_splits(shards: str | Path) -> pd.DataFrame:
    """SHARDS/splits.csv (one row per identity: vox_id, split, attributes), read as a regular
    file inside the shard directory (:func:`avdata.untrusted.read_inside`); a missing, unreadable
    or malformed table is one line."""
    path = Path(shards) / "splits.csv"
    raw = read_inside(shards, "splits.csv", missing="missing; not a shard directory from avdata build-shards")
    try:
        ids = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, encoding="utf-8")
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(path, f"not a readable CSV table ({type(exc).__name__})") from None
    missing = [c for c in ("vox_id", "split") if c not in ids.columns]
    if missing:
        raise InputError(path, f"lacks the column(s) {', '.join(missing)}")
    return ids


_CONFIG_TYPES = {"task": str, "split": str, "direction": str, "k": int}


def read_tuple_manifest(out: Path, required: bool) -> dict:
    """DIR/manifest.json of a tuple directory, checked before any name in it is used:
    ``files`` and ``shards`` objects whose names are plain relative paths (index/..., shards/...)
    and whose entries have the fields the readers use. Missing: a new manifest, unless required."""
    path = out / "manifest.json"
    if not required and not os.path.lexists(path):
        return {"kind": "avmatch.tuples", "format_version": 1, "files": {}, "shards": {}}
    raw = read_inside(out, "manifest.json", missing="missing; not a tuple directory from avdata make-tuples")
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(path, f"not valid JSON ({type(exc).__name__})") from None
    if not (
        isinstance(manifest, dict)
        and isinstance(manifest.get("files"), dict)
        and isinstance(manifest.get("shards"), dict)
    ):
        raise UnsafeShardError(f"{path}: not a tuple manifest (needs 'files' and 'shards' objects)")
    for rel, entry in manifest["files"].items():
        problem = name_problem(rel) or (
            "" if rel.startswith("index/") and rel.endswith(".jsonl") else "not an index/NAME.jsonl name"
        )
        if not problem and not (
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("config"), dict)
        ):
            problem = "entry lacks sha256 or config"
        if not problem:
            cfg = entry["config"]
            bad = [f for f, t in _CONFIG_TYPES.items() if not isinstance(cfg.get(f), t)]
            if bad or cfg["task"] not in TASKS or cfg["direction"] not in DIRECTIONS:
                problem = f"config has a missing or unknown {', '.join(bad) or 'task or direction'}"
            elif any(cfg.get(f, "any") not in SOURCES for f in ("positive_source", "negative_source")):
                problem = f"config has a positive_source or negative_source other than {' or '.join(SOURCES)}"
            elif "gallery" in entry and (
                name_problem(entry["gallery"]) or entry["gallery"] not in manifest["files"]
            ):
                problem = f"gallery {entry['gallery']!r} is not a listed index file"
            elif "identity_attributes" in entry and not _is_attribute_table(entry["identity_attributes"]):
                problem = "identity_attributes is not {identity: {gender|nationality: value}}"
        if problem:
            raise UnsafeShardError(f"{path}: files entry {rel!r}: {problem}")
    for rel, entry in manifest["shards"].items():
        problem = name_problem(rel) or (
            "" if _TUPLE_SHARD.match(rel) else "not a shards/NAME-NNNNNN.tar name"
        )
        if not problem and not (
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("tuples"), int)
        ):
            problem = "entry lacks sha256 or tuples"
        if problem:
            raise UnsafeShardError(f"{path}: shards entry {rel!r}: {problem}")
    return manifest


def _is_attribute_table(table) -> bool:
    """{identity: {attribute: value}} of strings, attributes among ATTRIBUTES."""
    return isinstance(table, dict) and all(
        isinstance(ident, str)
        and isinstance(attrs, dict)
        and all(a in ATTRIBUTES and isinstance(v, str) for a, v in attrs.items())
        for ident, attrs in table.items()
    )


def identity_attributes(tuples: list[dict], attrs: dict[str, dict]) -> dict[str, dict[str, str]]:
    """The attributes (ATTRIBUTES: gender, nationality) of every identity a list names, query or
    gallery, from ``attrs`` (vox_id -> its SHARDS/splits.csv row or Pool.attrs); empty values left
    out. make-tuples records it for each list it writes tuple shards for (what a method that
    classifies identities and their attributes trains on: avtrain's LabelSpace); check-tuples
    recomputes it."""
    ids = {t["query_identity"] for t in tuples} | {g for t in tuples for g in t["gallery_identities"]}
    return {i: {a: str(attrs[i][a]) for a in ATTRIBUTES if attrs.get(i, {}).get(a, "")} for i in sorted(ids)}


def list_attributes(tuples_dir: str | Path, name: str) -> dict[str, dict[str, str]] | None:
    """The identity attributes make-tuples recorded for list ``name`` in the tuple directory's
    checked manifest.json (:func:`identity_attributes`), or None where it recorded none (a list
    without tuple shards, or a directory made before attributes were recorded)."""
    manifest = read_tuple_manifest(Path(tuples_dir), required=True)
    return manifest["files"].get(f"index/{name}.jsonl", {}).get("identity_attributes")


@dataclass(frozen=True)
class IndexedList:
    """One evaluation/training list of a tuple directory, as its manifest.json records it."""

    name: str  # index file stem; retrieval: retrieval_SPLIT_DIR (queries + gallery files)
    task: str  # matching | verification | retrieval
    split: str
    direction: str
    k: int  # matching: gallery size; verification 1; retrieval 0
    constraint: str  # "+".join(constrain), "" when unconstrained
    path: Path  # the index file (retrieval: the queries file)
    gallery: Path | None = None  # retrieval: the gallery file
    sha256: str = ""  # the index file's sha256 in manifest.json (retrieval: queries "+" gallery)


def index_lists(tuples_dir: str | Path) -> list[IndexedList]:
    """Every list of a tuple directory, read from its checked manifest.json (each index file's
    config), never from file names. Sorted by (task, name)."""
    out = Path(tuples_dir)
    manifest = read_tuple_manifest(out, required=True)
    galleries = {e["gallery"] for e in manifest["files"].values() if "gallery" in e}
    lists = []
    for rel, entry in sorted(manifest["files"].items()):
        if rel in galleries:
            continue
        cfg = entry["config"]
        task = cfg["task"]
        if task == "retrieval" and "gallery" not in entry:
            raise UnsafeShardError(
                f"{out / 'manifest.json'}: files entry {rel!r}: retrieval queries without a gallery"
            )
        stem = Path(rel).stem
        lists.append(
            IndexedList(
                name=stem.removesuffix("_queries") if task == "retrieval" else stem,
                task=task,
                split=cfg["split"],
                direction=cfg["direction"],
                k={"matching": cfg["k"], "verification": 1}.get(task, 0),
                constraint="+".join(list(cfg.get("constrain") or ()) + source_tokens(cfg)),
                path=out / rel,
                gallery=out / entry["gallery"] if task == "retrieval" else None,
                sha256=entry["sha256"]
                + (f"+{manifest['files'][entry['gallery']]['sha256']}" if task == "retrieval" else ""),
            )
        )
    return sorted(lists, key=lambda t: (t.task, t.name))


_TUPLE_SHARD = re.compile(r"^shards/(.+)-[0-9]{6}\.tar$")
_ROLE_MEMBER = re.compile(r"^(q|g(?:0|[1-9][0-9]*))\.(npy|jpg)$")


def _tuple_members_problem(members: dict) -> str | None:
    exts = set(members)
    if not {"cls", "json"} <= exts:
        return "lacks its .cls or .json member"
    roles: dict[str, str] = {}
    for ext in sorted(exts - {"cls", "json"}):
        m = _ROLE_MEMBER.match(ext)
        if not m:
            return f"unexpected member .{ext}"
        if m.group(1) in roles:
            return f"two members for role {m.group(1)}"
        roles[m.group(1)] = ext
    k = len(roles) - 1
    if "q" not in roles or k < 1 or set(roles) != {"q", *(f"g{i}" for i in range(k))}:
        return f"members {sorted(roles)} are not q and g0..g(k-1)"
    return None


def scan_tuple_shard(path: str | Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """(tuple id, {member ext: (data offset, size)}) per sample of a tuple shard, in order,
    from its tar headers (nothing is decoded). Refuses (UnsafeShardError, naming the member)
    unsafe members (names leaving the directory, links, devices, pickles, object arrays),
    repeated members or samples, and samples that are not .cls + .json + q + g0..g(k-1)."""
    path = Path(path)
    samples: list[tuple[str, dict]] = []
    seen: set[str] = set()
    try:
        with tarfile.open(path, mode="r:") as tar:
            for m in tar:
                check_member(path, m)
                key, _, ext = m.name.partition(".")
                if not samples or samples[-1][0] != key:
                    if key in seen:
                        raise UnsafeShardError(
                            f"{path}: tuple {key!r} occurs twice (its members are not adjacent)"
                        )
                    seen.add(key)
                    samples.append((key, {}))
                members = samples[-1][1]
                if ext in members:
                    raise UnsafeShardError(f"{path}: member {m.name!r} occurs twice")
                if ext.endswith("npy"):
                    problem = npy_problem(tar.extractfile(m))
                    if problem:
                        raise UnsafeShardError(f"{path}: member {m.name!r}: refusing {problem}")
                members[ext] = (m.offset_data, m.size)
    except (tarfile.TarError, EOFError) as exc:
        raise InputError(path, f"not a readable uncompressed tar ({type(exc).__name__}: {exc})") from None
    for key, members in samples:
        problem = _tuple_members_problem(members)
        if problem:
            raise UnsafeShardError(f"{path}: tuple {key!r}: {problem}")
    return samples


@dataclass(frozen=True)
class TupleConfig:
    task: str
    split: str
    direction: str = "a2v"  # verification pairs are always (voice, face): "a2v"
    k: int = 2
    seed: int = 0
    negatives_per_positive: int = 15
    positives_per_identity: int = 1  # k = 2: (query, positive) pairs per identity, each with its negatives
    sets_per_identity: int = 50
    pairs_per_identity: int = 10
    # verification: this many pairs in all (half positive), instead of pairs_per_identity each
    pairs: int | None = None
    constrain: tuple[str, ...] = ()
    positive_source: str = "any"  # other-video: the positive never from the query's source video
    negative_source: str = "any"  # other-video: no negative from the query's source video

    def __post_init__(self):
        if self.pairs is not None and (self.pairs < 2 or self.pairs % 2):
            raise TupleError(f"--pairs: an even number >= 2 (half positive, half negative), got {self.pairs}")
        for flag, value in (
            ("--positive-source", self.positive_source),
            ("--negative-source", self.negative_source),
        ):
            if value not in SOURCES:
                raise TupleError(f"{flag}: {value!r} is not one of {', '.join(SOURCES)}")
        if self.task == "retrieval" and (self.positive_source, self.negative_source) != ("any", "any"):
            raise TupleError(
                "--positive-source / --negative-source other-video: matching and verification lists only "
                "(a retrieval gallery is every item of the split)"
            )

    @property
    def name(self) -> str:
        tokens = list(self.constrain) + source_tokens(
            {"positive_source": self.positive_source, "negative_source": self.negative_source}
        )
        c = "" if not tokens else "_" + "+".join(tokens)
        if self.task == "matching":
            return f"matching_{self.split}_{self.direction}_k{self.k}{c}"
        if self.task == "verification":
            return f"verification_{self.split}{c}"
        return f"retrieval_{self.split}_{self.direction}"


def source_tokens(config: dict) -> list[str]:
    """The source constraints of a list's config, as its name and ``IndexedList.constraint`` say
    them: ``pos-other-video``, ``neg-other-video`` (none for ``any``, as before they existed)."""
    return [
        f"{role}-other-video"
        for role, key in (("pos", "positive_source"), ("neg", "negative_source"))
        if config.get(key, "any") == "other-video"
    ]


def _rng(seed: int, *parts) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32("/".join(map(str, parts)).encode())])


@dataclass
class Pool:
    """The items of one split, grouped by identity and modality."""

    items: pd.DataFrame
    attrs: dict[str, dict]  # vox_id -> {"gender", "nationality"}
    by_id: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # modality -> vox_id -> keys
    source: dict[str, str] = field(default_factory=dict)  # key -> source video (source_id)

    def __post_init__(self):
        for modality in ("audio", "face"):
            sub = self.items[self.items["modality"] == modality]
            self.by_id[modality] = {v: sorted(g["key"]) for v, g in sub.groupby("vox_id", sort=True)}
        self.source = dict(zip(self.items["key"], self.items["source_id"]))

    def other_video(self, keys: list[str], query: str) -> list[str]:
        """The keys of ``keys`` from another source video than ``query``'s."""
        src = self.source[query]
        return [k for k in keys if self.source[k] != src]

    def cross_video_queries(self, q_keys: list[str], p_keys: list[str]) -> list[str]:
        """Queries that have a positive from another video (all of them if the identity's items
        come from two videos or more; none if from one)."""
        p_sources = {self.source[k] for k in p_keys}
        return [q for q in q_keys if p_sources - {self.source[q]}]

    def identities_with(self, *modalities: str) -> list[str]:
        ids = set.intersection(*(set(self.by_id[m]) for m in modalities))
        return sorted(ids)

    def negatives_for(self, vox_id: str, modality: str, constrain: tuple[str, ...]) -> list[str]:
        """Other identities with items of ``modality`` sharing the constrained attributes."""
        want = {a: self.attrs.get(vox_id, {}).get(a) for a in constrain}
        return [
            v
            for v in self.by_id[modality]
            if v != vox_id and all(self.attrs.get(v, {}).get(a) == want[a] for a in constrain)
        ]


def load_pool(shards: str | Path, split: str, items: pd.DataFrame | None = None) -> Pool:
    shards = Path(shards)
    items = index_items(shards) if items is None else items
    split_items = items[items["split"] == split].reset_index(drop=True)
    if split_items.empty:
        present = sorted(items["split"].unique())
        raise TupleError(f"{shards}: no samples in split {split!r}; splits present: {present}")
    ids = read_splits(shards)
    attrs = {r["vox_id"]: {a: r.get(a, "") for a in ATTRIBUTES} for r in ids.to_dict("records")}
    return Pool(split_items, attrs)


def _tuple(
    cfg: TupleConfig, n: int, query: str, q_id: str, gallery: list[str], g_ids: list[str], label: int
) -> dict:
    return {
        "tuple_id": f"{cfg.name}-{n:07d}",
        "task": cfg.task,
        "split": cfg.split,
        "direction": cfg.direction,
        "query": query,
        "query_identity": q_id,
        "gallery": gallery,
        "gallery_identities": g_ids,
        "label": int(label),
    }


def _empty_reason(pool: Pool, cfg: TupleConfig, skipped: list[dict]) -> str:
    """Why a list came out empty, in one line (make-tuples warns with it; --strict fails)."""
    q_mod, g_mod = DIRECTIONS[cfg.direction]
    with_both = pool.identities_with(q_mod, g_mod)
    if not with_both:
        return f"no identity of split {cfg.split} has both {q_mod} and {g_mod} samples"
    if skipped and all(s["reason"] == SINGLE_VIDEO for s in skipped) and len(skipped) == len(with_both):
        return (
            f"no identity of split {cfg.split} has {q_mod} and {g_mod} items from two source videos: "
            f"--positive-source other-video has no positive to draw ({len(skipped)} single-video identities)"
        )
    if skipped:
        return (
            f"{len(skipped)} of {len(with_both)} identities skipped, e.g. {skipped[0]['identity']}: "
            f"{skipped[0]['reason']}"
        )
    return f"{len(with_both)} identities of split {cfg.split} gave no tuple"


def _draw_key(cfg: TupleConfig) -> str:
    """The constraint part of an identity's draw stream: the attributes, then the source tokens
    (none for ``any``: the streams of lists drawn before sources existed are unchanged)."""
    return "+".join(list(cfg.constrain) + source_tokens(asdict(cfg)))


SINGLE_VIDEO = "one source video: no positive from another video"


def draw_matching(pool: Pool, cfg: TupleConfig) -> tuple[list[dict], list[dict]]:
    q_mod, g_mod = DIRECTIONS[cfg.direction]
    other_pos, other_neg = cfg.positive_source == "other-video", cfg.negative_source == "other-video"
    tuples, skipped = [], []
    for vox_id in pool.identities_with(q_mod, g_mod):
        rng = _rng(cfg.seed, cfg.task, cfg.split, cfg.direction, cfg.k, _draw_key(cfg), vox_id)
        candidates = pool.negatives_for(vox_id, g_mod, cfg.constrain)
        if len(candidates) < cfg.k - 1:
            skipped.append(
                {
                    "identity": vox_id,
                    "reason": f"{len(candidates)} eligible negative identities < k-1 = {cfg.k - 1}",
                }
            )
            continue
        q_keys, p_keys = pool.by_id[q_mod][vox_id], pool.by_id[g_mod][vox_id]
        if other_pos:
            q_keys = pool.cross_video_queries(q_keys, p_keys)
            if not q_keys:
                skipped.append({"identity": vox_id, "reason": SINGLE_VIDEO})
                continue

        def pair() -> tuple[str, str]:
            query = q_keys[rng.integers(len(q_keys))]
            positives = pool.other_video(p_keys, query) if other_pos else p_keys
            return query, positives[rng.integers(len(positives))]

        def eligible(query: str) -> list[str]:  # negative identities with an item off the query's video
            if not other_neg:
                return candidates
            return [n for n in candidates if pool.other_video(pool.by_id[g_mod][n], query)]

        draws, short = [], 0
        if cfg.k == 2:
            # positives_per_identity (query, positive) pairs (1: the paper's protocol), each with
            # negatives_per_positive tuples whose negatives come from distinct identities while
            # there are enough of them
            for _ in range(cfg.positives_per_identity):
                query, positive = pair()
                negs = eligible(query)
                if not negs:
                    short += 1
                    continue
                replace = len(negs) < cfg.negatives_per_positive
                neg_ids = rng.choice(negs, cfg.negatives_per_positive, replace=replace)
                draws += [(query, positive, [n]) for n in neg_ids]
        else:
            for _ in range(cfg.sets_per_identity):
                query, positive = pair()
                negs = eligible(query)
                if len(negs) < cfg.k - 1:
                    short += 1
                    continue
                draws.append((query, positive, list(rng.choice(negs, cfg.k - 1, replace=False))))
        if short and not draws:
            skipped.append(
                {
                    "identity": vox_id,
                    "reason": "too few negative identities with a face off the query's video",
                }
            )
        for query, positive, neg_ids in draws:
            negs = []
            for n in neg_ids:
                items = pool.by_id[g_mod][n]
                items = pool.other_video(items, query) if other_neg else items
                negs.append(items[rng.integers(len(items))])
            pos = int(rng.integers(cfg.k))
            gallery = negs[:pos] + [positive] + negs[pos:]
            g_ids = list(neg_ids[:pos]) + [vox_id] + list(neg_ids[pos:])
            tuples.append(_tuple(cfg, len(tuples), query, vox_id, gallery, [str(g) for g in g_ids], pos))
    return tuples, skipped


def _positive_pairs(cfg: TupleConfig, identities: list[str]) -> dict[str, int]:
    """Positive pairs of each identity: ``pairs_per_identity``, or with ``pairs`` set, pairs/2 spread
    as evenly as the identities allow (each gets ⌊pairs/2/n⌋ and a seeded draw of the remainder
    one more)."""
    if cfg.pairs is None:
        return dict.fromkeys(identities, cfg.pairs_per_identity)
    if not identities:
        return {}
    base, extra = divmod(cfg.pairs // 2, len(identities))
    order = _rng(cfg.seed, cfg.task, cfg.split, _draw_key(cfg), "pairs").permutation(len(identities))
    more = {identities[i] for i in order[:extra]}
    return {v: base + (v in more) for v in identities}


def draw_verification(pool: Pool, cfg: TupleConfig) -> tuple[list[dict], list[dict]]:
    other_pos, other_neg = cfg.positive_source == "other-video", cfg.negative_source == "other-video"
    tuples, skipped, eligible = [], [], []
    for vox_id in pool.identities_with("audio", "face"):
        if other_pos and not pool.cross_video_queries(
            pool.by_id["audio"][vox_id], pool.by_id["face"][vox_id]
        ):
            skipped.append({"identity": vox_id, "reason": SINGLE_VIDEO})
        elif pool.negatives_for(vox_id, "face", cfg.constrain):
            eligible.append(vox_id)
        else:
            skipped.append({"identity": vox_id, "reason": "no eligible negative identity"})
    for vox_id, n_positive in _positive_pairs(cfg, eligible).items():
        rng = _rng(cfg.seed, cfg.task, cfg.split, _draw_key(cfg), vox_id)
        candidates = pool.negatives_for(vox_id, "face", cfg.constrain)
        voices, faces = pool.by_id["audio"][vox_id], pool.by_id["face"][vox_id]
        if other_pos:  # voices with a face of their identity from another video
            voices = pool.cross_video_queries(voices, faces)
        for _ in range(n_positive):
            v = voices[rng.integers(len(voices))]
            same = pool.other_video(faces, v) if other_pos else faces
            tuples.append(_tuple(cfg, len(tuples), v, vox_id, [same[rng.integers(len(same))]], [vox_id], 1))
            if not other_neg:  # the draw order of the lists made before sources existed
                other = candidates[rng.integers(len(candidates))]
                of = pool.by_id["face"][other]
                v = voices[rng.integers(len(voices))]
            else:  # the voice first: the negative identity must have a face off its video
                v = voices[rng.integers(len(voices))]
                others = [n for n in candidates if pool.other_video(pool.by_id["face"][n], v)]
                if not others:  # every other identity's faces share this voice's video: no pair
                    tuples.pop()
                    continue
                other = others[rng.integers(len(others))]
                of = pool.other_video(pool.by_id["face"][other], v)
            tuples.append(_tuple(cfg, len(tuples), v, vox_id, [of[rng.integers(len(of))]], [other], 0))
    return tuples, skipped


def retrieval_lists(pool: Pool, cfg: TupleConfig) -> tuple[list[dict], list[dict]]:
    """Queries (one per item of the query modality) and the gallery (all items of the other)."""
    q_mod, g_mod = DIRECTIONS[cfg.direction]
    items = pool.items
    gallery = [
        {"key": k, "identity": v}
        for k, v in items[items["modality"] == g_mod][["key", "vox_id"]].itertuples(index=False)
    ]
    n_rel = items[items["modality"] == g_mod].groupby("vox_id").size().to_dict()
    queries = [
        {
            "tuple_id": f"{cfg.name}-{i:07d}",
            "task": "retrieval",
            "split": cfg.split,
            "direction": cfg.direction,
            "query": k,
            "query_identity": v,
            "relevant": int(n_rel.get(v, 0)),
        }
        for i, (k, v) in enumerate(
            items[items["modality"] == q_mod][["key", "vox_id"]].itertuples(index=False)
        )
    ]
    return queries, gallery


# ---------------------------------------------------------------- outputs


def _dump_jsonl(rows: list[dict], path: Path) -> str:
    """Compact JSON lines (the committed tuple-list format), written atomically; its sha256."""
    text = "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in rows)
    atomic_write_text(path, text)
    return sha256_text(text)


def write_tuple_shards(
    tuples: list[dict], items: pd.DataFrame, shards_root: Path, out: Path, name: str, per_shard: int
) -> dict[str, dict]:
    """Training tuple shards: each sample carries the query's and every gallery member's
    array bytes (copied as stored, no re-encoding), so training reads sequentially."""
    from avdata.manifest.content import ContentRecorder

    loc = items.set_index("key")[["tar", "data_ext", "data_offset", "data_size"]].to_dict("index")
    written = {}
    for s in range(math.ceil(len(tuples) / per_shard)):
        rel = f"shards/{name}-{s:06d}.tar"
        final = out / rel
        chunk = tuples[s * per_shard : (s + 1) * per_shard]
        content = ContentRecorder(digests=False)  # arrays are item copies: their digests are the items'
        with (
            atomic_output(final) as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar,
        ):
            for t in chunk:
                key = t["tuple_id"]
                members = [
                    ("cls", str(t["label"]).encode()),
                    ("json", json.dumps(t, sort_keys=True, separators=(",", ":")).encode()),
                ]
                for role, item in [("q", t["query"])] + [(f"g{i}", g) for i, g in enumerate(t["gallery"])]:
                    m = loc[item]
                    members.append(
                        (
                            f"{role}.{m['data_ext']}",
                            read_member(shards_root / m["tar"], m["data_offset"], m["data_size"]),
                        )
                    )
                for ext, data in members:
                    add_tar_member(tar, f"{key}.{ext}", data)
                content.add(key, members)
        written[rel] = {"sha256": sha256_file(final), "tuples": len(chunk), "content": content.result()}
    return written


def make_tuples(
    shards: str | Path,
    out: str | Path,
    configs: list[TupleConfig],
    tuple_shards: bool = False,
    tuples_per_shard: int = 500,
    items: pd.DataFrame | None = None,
) -> dict:
    """Draw every config's tuples, write index files (and tuple shards), update DIR/manifest.json.
    ``items`` (from index_items) saves re-reading the shards when the caller has it."""
    shards, out = Path(shards), Path(out)
    check_out_dir(shards, out)
    check_output_dir(out)  # a dangling symlink or a file: one line, before any work
    source_sha = source_manifest_sha256(shards)
    items = index_items(shards) if items is None else items
    manifest = read_tuple_manifest(out, required=False)
    manifest["source_shards_manifest_sha256"] = source_sha
    manifest[SOURCE_SHARDS_KEY] = source_shards_link(shards, out)
    pools: dict[str, Pool] = {}
    summary = {}
    for cfg in configs:
        pool = pools.setdefault(cfg.split, load_pool(shards, cfg.split, items))
        config = asdict(cfg) | {"constrain": list(cfg.constrain)}
        if cfg.pairs is None:  # recorded only when given: manifests of earlier draws stay as they were
            del config["pairs"]
        for key in ("positive_source", "negative_source"):  # likewise: recorded only when not "any"
            if config[key] == "any":
                del config[key]
        entry = {"config": config}
        if cfg.task == "retrieval":
            queries, gallery = retrieval_lists(pool, cfg)
            rel_q, rel_g = f"index/{cfg.name}_queries.jsonl", f"index/{cfg.name}_gallery.jsonl"
            manifest["files"][rel_q] = entry | {
                "sha256": _dump_jsonl(queries, out / rel_q),
                "tuples": len(queries),
                "gallery": rel_g,
            }
            manifest["files"][rel_g] = {
                "config": entry["config"],
                "sha256": _dump_jsonl(gallery, out / rel_g),
                "items": len(gallery),
            }
            summary[cfg.name] = {"queries": len(queries), "gallery": len(gallery)}
            if not queries:
                summary[cfg.name]["empty"] = _empty_reason(pool, cfg, [])
            continue
        draw = draw_matching if cfg.task == "matching" else draw_verification
        tuples, skipped = draw(pool, cfg)
        rel = f"index/{cfg.name}.jsonl"
        manifest["files"][rel] = entry | {
            "sha256": _dump_jsonl(tuples, out / rel),
            "tuples": len(tuples),
            "identities": len({t["query_identity"] for t in tuples}),
            "skipped_identities": skipped,
        }
        if tuple_shards or cfg.split == "train":
            # a training list (tuple shards or not): its identities' attributes (avtrain's LabelSpace)
            manifest["files"][rel]["identity_attributes"] = identity_attributes(tuples, pool.attrs)
        written = (
            write_tuple_shards(tuples, items, shards, out, cfg.name, tuples_per_shard) if tuple_shards else {}
        )
        for old in sorted(manifest["shards"]):
            # shards of an earlier draw of this list would hold other tuples (or more of them)
            if _TUPLE_SHARD.match(old).group(1) == cfg.name and old not in written:
                del manifest["shards"][old]
                resolve_inside(out, old, str(out / "manifest.json")).unlink(missing_ok=True)
        manifest["shards"].update(written)
        summary[cfg.name] = {
            "tuples": len(tuples),
            "identities": manifest["files"][rel]["identities"],
            "skipped_identities": len(skipped),
        }
        if cfg.positive_source == "other-video":
            summary[cfg.name]["single_video_identities"] = sum(s["reason"] == SINGLE_VIDEO for s in skipped)
        if not tuples:
            summary[cfg.name]["empty"] = _empty_reason(pool, cfg, skipped)
    sizes = {k: v["tuples"] for k, v in sorted(manifest["shards"].items())}
    write_json(out / "sizes.json", sizes)
    write_json(out / "manifest.json", manifest)
    return summary


# ---------------------------------------------------------------- checks


def _listed_file(
    out: Path, rel: str, entry: dict, problems: list[str], keep: bool = False
) -> tuple[Path, bytes | None] | None:
    """The file a tuple manifest lists under ``rel``, opened as a regular file inside ``out``
    (:func:`avdata.untrusted.open_inside`), and its bytes if ``keep`` (an index list, at most
    MAX_INDEX_BYTES); a problem line (and None when it cannot be read) if its name is unsafe, it
    is missing or not a regular file, or its sha256 differs."""
    where, missing = str(out / "manifest.json"), "listed in the manifest but missing"
    try:
        if keep:
            data = read_inside(out, rel, where, MAX_INDEX_BYTES, missing)
            digest = sha256_bytes(data)
        else:
            data = None
            with open_inside(out, rel, where, missing=missing) as f:
                digest = sha256_stream(f)
    except AvmatchError as exc:
        problems.append(str(exc))
        return None
    if digest != entry["sha256"]:
        problems.append(f"{rel}: sha256 differs from the manifest (edited after make-tuples?)")
    return out / rel, data


def check_tuples(
    out: str | Path, shards: str | Path, max_reports: int = 20, items: pd.DataFrame | None = None
) -> list[str]:
    """Every rule a tuple list must satisfy; returns one line per broken rule (empty: all hold)."""
    out, shards = Path(out), Path(shards)
    manifest = read_tuple_manifest(out, required=True)  # refuses unsafe names before any is opened
    items = (index_items(shards) if items is None else items).set_index("key")
    # one dict lookup per tuple member: DataFrame.loc per key was most of make-tuples' time at scale
    cols = ["modality", "split", "vox_id", "source_id", "data_ext", "data_size"]
    item_of = items.loc[~items.index.duplicated(), cols].to_dict("index")
    attrs = {r["vox_id"]: r for r in read_splits(shards).to_dict("records")}
    problems: list[str] = []
    lists: dict[str, list[dict]] = {}  # list NAME -> its tuples (for the tuple-shard checks)

    def report(rel: str, tid: str, msg: str):
        if len(problems) < max_reports:
            problems.append(f"{rel}: {tid}: {msg}")

    galleries: dict[str, bytes] = {}  # gallery lists' bytes, read once, checked with their queries

    def is_gallery(entry: dict) -> bool:
        return "gallery" not in entry and entry["config"]["task"] == "retrieval"

    # gallery lists first, so each is in `galleries` when its queries are checked
    for rel, entry in sorted(manifest["files"].items(), key=lambda kv: (not is_gallery(kv[1]), kv[0])):
        listed = _listed_file(out, rel, entry, problems, keep=True)
        if listed is None:
            continue
        cfg = entry["config"]
        if is_gallery(entry):
            galleries[rel] = listed[1]
            continue
        rows = _read_rows(listed[1], rel, cfg["task"], report)
        lists[rel[len("index/") : -len(".jsonl")]] = rows
        task = cfg["task"]
        q_mod, g_mod = DIRECTIONS[cfg["direction"]]
        other_pos = cfg.get("positive_source") == "other-video"
        other_neg = cfg.get("negative_source") == "other-video"
        labels = []
        for t in rows:
            tid, split = t["tuple_id"], t.get("split", cfg["split"])
            gallery = t["gallery"] if task != "retrieval" else []  # (row_problem checked it)
            members = [(t["query"], q_mod)] + [(g, g_mod) for g in gallery]
            for key, mod in members:
                if key not in item_of:
                    report(rel, tid, f"key {key} not in the shards")
                    continue
                it = item_of[key]
                if it["modality"] != mod:
                    report(rel, tid, f"key {key} is {it['modality']}, expected {mod}")
                if it["split"] != split:
                    report(
                        rel, tid, f"key {key} is in split {it['split']}, tuple is in {split} (crosses splits)"
                    )
            if task == "retrieval":
                continue
            q_id, g_ids, label = t["query_identity"], t["gallery_identities"], t["label"]
            if t["query"] in item_of and item_of[t["query"]]["vox_id"] != q_id:
                report(rel, tid, "query identity does not match its key")
            for g, gid in zip(t["gallery"], g_ids):
                if g in item_of and item_of[g]["vox_id"] != gid:
                    report(rel, tid, f"gallery identity of {g} does not match its key")
            if len(set(g_ids)) != len(g_ids):
                report(rel, tid, "an identity repeats inside the tuple")
            labels.append(label)
            if task == "matching":
                if len(g_ids) != cfg["k"]:
                    report(rel, tid, f"{len(g_ids)} gallery items, expected k={cfg['k']}")
                    continue
                if g_ids[label] != q_id:
                    report(rel, tid, "positive does not share the query's identity")
                negatives = [g for i, g in enumerate(g_ids) if i != label]
            else:
                if (g_ids[0] == q_id) != (label == 1):
                    report(rel, tid, f"label {label} contradicts the pair's identities")
                negatives = [g for g in g_ids if label == 0]
            if q_id in negatives:
                report(rel, tid, "a negative shares the query's identity")
            if other_pos or other_neg:
                _source_problems(t, task, item_of, other_pos, other_neg, lambda msg: report(rel, tid, msg))
            for a in cfg.get("constrain", []):
                for n in negatives:
                    if attrs.get(n, {}).get(a) != attrs.get(q_id, {}).get(a):
                        report(rel, tid, f"negative {n} breaks the {a} constraint")
        if task == "retrieval":
            split = cfg["split"]
            want_q = set(items[(items["split"] == split) & (items["modality"] == q_mod)].index)
            if {t["query"] for t in rows} != want_q or len(rows) != len(want_q):
                problems.append(f"{rel}: queries are not exactly the {len(want_q)} {q_mod} items of {split}")
            g_rel = entry["gallery"]  # a listed index file (read_tuple_manifest): its problems come with it
            if g_rel not in galleries:  # unreadable: its problems were reported when it was read
                continue
            gallery = [g["key"] for g in _read_rows(galleries[g_rel], g_rel, "gallery", report)]
            want_g = set(items[(items["split"] == split) & (items["modality"] == g_mod)].index)
            if set(gallery) != want_g or len(gallery) != len(want_g):
                problems.append(
                    f"{entry['gallery']}: gallery is not exactly the {len(want_g)} {g_mod} items of {split}"
                )
            continue
        if "identity_attributes" in entry and entry["identity_attributes"] != identity_attributes(
            rows, attrs
        ):
            problems.append(f"{rel}: identity_attributes differ from its identities' in SHARDS/splits.csv")
        if "imported_from" not in cfg:  # an official list is as balanced as its authors made it
            problems.extend(f"{rel}: {m}" for m in label_balance_problems(labels, task, cfg["k"]))
    problems.extend(tuple_shard_problems(out, manifest, lists, item_of, max_reports))
    return problems


def _source_problems(t: dict, task: str, item_of: dict, other_pos: bool, other_neg: bool, report) -> None:
    """The source-video rules of a list drawn with --positive-source / --negative-source
    other-video: its positive (verification: a same-identity pair) and, for negatives, every
    negative comes from another source video than the query."""
    if t["query"] not in item_of:
        return  # reported with the keys
    src = item_of[t["query"]]["source_id"]
    label, gallery = t["label"], t["gallery"]
    positive = gallery[label] if task == "matching" else gallery[0] if label == 1 else None
    negatives = [g for i, g in enumerate(gallery) if i != label] if task == "matching" else []
    if task == "verification" and label == 0:
        negatives = gallery[:1]
    if other_pos and positive in item_of and item_of[positive]["source_id"] == src:
        report(f"positive {positive} comes from the query's source video {src} (positive_source other-video)")
    for g in negatives if other_neg else []:
        if g in item_of and item_of[g]["source_id"] == src:
            report(f"negative {g} comes from the query's source video {src} (negative_source other-video)")


_ROW_FIELDS = {  # what each kind of index-list line must hold (docs/tuples.md), by type
    "gallery": {"key": str, "identity": str},
    "retrieval": {"tuple_id": str, "query": str, "query_identity": str},
    "matching": {
        "tuple_id": str,
        "query": str,
        "query_identity": str,
        "gallery": list,
        "gallery_identities": list,
        "label": int,
    },
}
_ROW_FIELDS["verification"] = _ROW_FIELDS["matching"]
_ROW_OPTIONAL = {"split": str, "direction": str}  # a tuple's own split and direction, where it has them


def row_problem(row, kind: str) -> str | None:
    """Why one parsed line of a ``kind`` index list (matching, verification, retrieval queries,
    or gallery) cannot be used, or None: every field ``kind`` needs present with its type (no bool
    for a number), gallery keys and identities strings, one identity per gallery key, a matching
    label a gallery position, a verification tuple one gallery item labelled 0 or 1, and a
    ``direction`` (where a line has one) a2v or v2a. The one check of index-list lines, used by
    check-tuples and by avtrain's readers (evaluate, fit --val-tuples)."""
    if not isinstance(row, dict):
        return "not a JSON object"
    fields = _ROW_FIELDS[kind] | {f: t for f, t in _ROW_OPTIONAL.items() if f in row}
    bad = [f for f, t in fields.items() if not isinstance(row.get(f), t) or isinstance(row.get(f), bool)]
    if bad:
        return f"missing or malformed field(s) {', '.join(bad)}"
    if "direction" in row and row["direction"] not in DIRECTIONS:
        return f"direction {row['direction']!r} is not a2v or v2a"
    if kind not in ("matching", "verification"):
        return None
    gallery, ids, label = row["gallery"], row["gallery_identities"], row["label"]
    if not all(isinstance(x, str) for x in gallery + ids):
        return "gallery and gallery_identities must be lists of strings"
    if len(gallery) != len(ids):
        return f"{len(gallery)} gallery items but {len(ids)} gallery_identities"
    if kind == "verification":
        if len(gallery) != 1 or label not in (0, 1):
            return f"not one gallery item labelled 0 or 1 ({len(gallery)} items, label {label})"
    elif not 0 <= label < len(gallery):
        return f"label {label} is not a gallery position 0..{len(gallery) - 1}"
    return None


def _read_rows(data: bytes, rel: str, kind: str, report) -> list[dict]:
    """The JSON lines of an index file (its bytes) that pass :func:`row_problem`; each other line
    is reported (by line number) and skipped."""
    rows = []
    for i, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # not JSON; an over-long integer; nesting too deep
            report(rel, f"line {i}", "not JSON")
            continue
        problem = row_problem(row, kind)
        if problem:
            report(rel, f"line {i}", problem)
            continue
        rows.append(row)
    return rows


def tuple_shard_problems(
    out: Path, manifest: dict, lists: dict[str, list[dict]], items: dict[str, dict], max_reports: int = 20
) -> list[str]:
    """Checks of DIR/sizes.json and DIR/shards/*.tar: sizes.json names only the manifest's
    shards with their counts; every shard is safe to read (scan_tuple_shard: member names and
    types, no pickles or object arrays), has its manifest sha256 and count, and holds exactly
    the tuples of its index list, in order (each sample's .json equal to the index line, .cls
    to its label, one array member per query/gallery item with that item's format and size)."""
    problems: list[str] = []
    listed = manifest["shards"]
    sizes_file = out / "sizes.json"
    sizes: dict | None = None
    if os.path.lexists(sizes_file):  # a FIFO, a device or a link out is read_sizes' to refuse
        try:
            sizes = read_sizes(sizes_file)
        except AvmatchError as exc:
            problems.append(str(exc))
    elif listed:
        problems.append(f"sizes.json: missing, but the manifest lists {len(listed)} tuple shard(s)")
    if sizes is not None:
        for name in sorted(sizes):
            problem = name_problem(name)
            if problem:
                problems.append(f"sizes.json: refusing the name {name!r}: {problem}")
        expected = {k: v["tuples"] for k, v in listed.items()}
        if sizes != expected:
            extra, absent = sorted(set(sizes) - set(expected)), sorted(set(expected) - set(sizes))
            differ = sorted(k for k in set(sizes) & set(expected) if sizes[k] != expected[k])
            problems.append(
                f"sizes.json: does not match the tuple shards of manifest.json (not in the manifest: "
                f"{extra[:3]}, missing: {absent[:3]}, other counts: {differ[:3]})"
            )
    in_shards: dict[str, list[str]] = {}
    for rel, entry in sorted(listed.items()):
        listed = _listed_file(out, rel, entry, problems)
        if listed is None:
            continue
        path = listed[0]
        try:
            samples = scan_tuple_shard(path)
        except (UnsafeShardError, InputError) as exc:
            problems.append(str(exc))
            continue
        if len(samples) != entry["tuples"]:
            problems.append(f"{rel}: holds {len(samples)} tuples, the manifest says {entry['tuples']}")
        name = _TUPLE_SHARD.match(rel).group(1)
        if name not in lists:
            problems.append(f"{rel}: no index/{name}.jsonl in the manifest for its tuples")
            continue
        index = {t["tuple_id"]: t for t in lists[name]}
        for key, members in samples:
            if len(problems) >= max_reports:
                break
            in_shards.setdefault(name, []).append(key)
            t = index.get(key)
            if t is None:
                problems.append(f"{rel}: {key}: not a tuple of index/{name}.jsonl")
                continue
            try:
                meta = json.loads(read_member(path, *members["json"]).decode("utf-8"))
                label = int(read_member(path, *members["cls"]).decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                problems.append(f"{rel}: {key}: .json or .cls member does not decode")
                continue
            if meta != t:
                problems.append(f"{rel}: {key}: .json member differs from its index line")
            if label != t["label"]:
                problems.append(f"{rel}: {key}: .cls {label} differs from the label {t['label']}")
            roles = [("q", t["query"])] + [(f"g{i}", g) for i, g in enumerate(t["gallery"])]
            if len(members) - 2 != len(roles):
                problems.append(f"{rel}: {key}: {len(members) - 2} array members for {len(roles)} items")
                continue
            for role, item in roles:
                if item not in items:
                    continue  # reported with the index file
                it = items[item]
                got = members.get(f"{role}.{it['data_ext']}")
                if got is None or got[1] != it["data_size"]:
                    problems.append(
                        f"{rel}: {key}: member {role} is not the {it['data_ext']} item {item} "
                        f"({it['data_size']} bytes)"
                    )
    for name, keys in sorted(in_shards.items()):
        want = [t["tuple_id"] for t in lists.get(name, [])]
        if keys != want and len(problems) < max_reports:
            problems.append(
                f"shards/{name}-*.tar: hold {len(keys)} tuples, index/{name}.jsonl has {len(want)} "
                f"(the shards must hold exactly its tuples, in order)"
            )
    return problems


def label_balance_problems(labels: list[int], task: str, k: int) -> list[str]:
    """Matching: each position's share within 4 binomial standard deviations (and
    0.05) of 1/k. Verification: exactly as many positive as negative pairs."""
    n = len(labels)
    if n == 0:
        return []
    if task == "verification":
        pos = sum(labels)
        return [] if 2 * pos == n else [f"labels unbalanced: {pos} positive / {n - pos} negative pairs"]
    counts = np.bincount(labels, minlength=k)
    p = 1.0 / k
    tol = max(0.05, 4 * math.sqrt(p * (1 - p) / n))
    return [
        f"label position {i} has share {c / n:.3f}, expected {p:.3f} +- {tol:.3f}"
        for i, c in enumerate(counts)
        if abs(c / n - p) > tol
    ]


# ---------------------------------------------------------------- official lists


def import_veriflist(list_path: str | Path, shards: str | Path, out: str | Path) -> dict:
    """Map an official Learnable-PINs verification list onto shard keys.

    Format: ``id,voice-speaker-id,face-speaker-id,label,voice-path,face-path`` with voice
    paths ``NAME/YTID_0000001.wav`` and face paths ``NAME/YTID/0006000.jpg``. A voice maps
    to the first spectrogram window of the clip of that identity, source video and clip
    number; a face to the aligned face of that identity and path. Pairs that cannot be
    mapped are counted by reason, never fatal. Writes ``index/verification_imported_STEM.jsonl``.
    """
    list_path, shards, out = Path(list_path), Path(shards), Path(out)
    try:
        rows = pd.read_csv(list_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, FileNotFoundError) as exc:
        raise TupleError(f"{list_path}: not a readable verification list ({type(exc).__name__})") from None
    cols = ["id", "voice-speaker-id", "face-speaker-id", "label", "voice-path", "face-path"]
    if list(rows.columns) != cols:
        raise TupleError(f"{list_path}: header {list(rows.columns)} is not {cols}")
    bad = [r["id"] for r in rows.to_dict("records") if not (r["id"].isdigit() and r["label"] in ("0", "1"))]
    if bad:
        raise TupleError(f"{list_path}: row id {bad[0]!r}: id must be an integer and label 0 or 1")
    check_out_dir(shards, out)
    check_output_dir(out)
    source_sha = source_manifest_sha256(shards)
    items = index_items(shards)
    vox_of = dict(zip(items["key"], items["vox_id"]))
    voice_index, face_index = {}, {}
    for key, split, modality, name, source in zip(
        items["key"], items["split"], items["modality"], items["name"], items["source"]
    ):
        if modality == "audio" and key.endswith("_w0"):
            parts = source.split("/")
            if len(parts) >= 2 and parts[-1].split(".")[0].isdigit():
                voice_index[(name, parts[-2], int(parts[-1].split(".")[0]))] = (key, split)
        elif modality == "face":
            parts = source.split("/")
            face_index[(name, "/".join(parts[-2:]))] = (key, split)
    names_in_shards = set(items["name"])
    mapped, reasons = [], {}

    def miss(reason):
        reasons[reason] = reasons.get(reason, 0) + 1

    for r in rows.to_dict("records"):
        v_name, v_file = r["voice-path"].split("/", 1) if "/" in r["voice-path"] else ("", r["voice-path"])
        f_name, f_rest = r["face-path"].split("/", 1) if "/" in r["face-path"] else ("", r["face-path"])
        if v_name not in names_in_shards:
            miss("voice identity not in shards")
            continue
        if f_name not in names_in_shards:
            miss("face identity not in shards")
            continue
        stem = v_file.rsplit(".", 1)[0]
        ytid, _, num = stem.rpartition("_")
        voice = voice_index.get((v_name, ytid, int(num))) if num.isdigit() else None
        face = face_index.get((f_name, f_rest))
        if voice is None:
            miss("voice clip not in shards")
            continue
        if face is None:
            miss("face image not in shards (missing or rejected)")
            continue
        if voice[1] != face[1]:
            miss("voice and face in different splits")
            continue
        label = int(r["label"])
        mapped.append(
            {
                "tuple_id": f"veriflist-{list_path.stem}-{int(r['id']):07d}",
                "task": "verification",
                "split": voice[1],
                "direction": "a2v",
                "query": voice[0],
                "query_identity": vox_of[voice[0]],
                "gallery": [face[0]],
                "gallery_identities": [vox_of[face[0]]],
                "label": label,
            }
        )
    rel = f"index/verification_imported_{list_path.stem}.jsonl"
    manifest = read_tuple_manifest(out, required=False)
    split = mapped[0]["split"] if mapped else ""
    manifest["files"][rel] = {
        "config": {
            "task": "verification",
            "split": split,
            "direction": "a2v",
            "k": 1,
            "imported_from": list_path.name,
            "imported_sha256": sha256_file(list_path),
            "constrain": [],
        },
        "sha256": _dump_jsonl(mapped, out / rel),
        "tuples": len(mapped),
        "unmapped": dict(sorted(reasons.items())),
    }
    if manifest.setdefault("source_shards_manifest_sha256", source_sha) == source_sha:
        manifest[SOURCE_SHARDS_KEY] = source_shards_link(shards, out)
    write_json(out / "manifest.json", manifest)
    return {
        "pairs": len(rows),
        "mapped": len(mapped),
        "unmapped": dict(sorted(reasons.items())),
        "index": str(out / rel),
    }
