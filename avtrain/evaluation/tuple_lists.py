"""The evaluation lists of a tuple directory, as avtrain reads them.

avdata.tuples owns the tuple-directory format (:func:`avdata.tuples.index_lists` reads each list's
config from manifest.json); this module loads the rows of each list and knows which items, of
which modality, they reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from avdata.errors import AvmatchError, InputError
from avdata.tasks import DIRECTIONS
from avdata.tuples import index_lists, row_problem
from avdata.untrusted import MAX_INDEX_BYTES, read_inside

MODALITY_OF_ROLE = {  # (direction, role) -> modality, from the directions' owner
    (d, role): mods[i] for d, mods in DIRECTIONS.items() for i, role in enumerate(("query", "gallery"))
}


class EvaluationError(AvmatchError, ValueError):
    """A problem with the inputs of an evaluation (one line, for the CLI)."""


@dataclass
class TupleList:
    """One evaluation list of ``DIR/index``."""

    name: str  # file stem (retrieval: without _queries/_gallery)
    task: str  # matching | verification | retrieval
    split: str
    direction: str
    k: int = 0
    constraint: str = ""
    rows: list = field(default_factory=list)  # matching/verification tuples; retrieval queries
    gallery: list = field(default_factory=list)  # retrieval gallery lines
    sha256: str = ""  # which list: its index file's sha256 in manifest.json (retrieval: queries+gallery)
    # the position (0-based) of each row in its index file: rows left out (without_items) leave
    # gaps, so that runs scored on different subsets of the same list can be paired row by row
    row_index: list = field(default_factory=list)


def iter_jsonl(root: Path, path: Path, kind: str):
    """(line number, row) of each line of an index file of ``root`` (a ``kind`` list: matching,
    verification, retrieval or gallery), read as a regular file inside it of at most
    MAX_INDEX_BYTES (:func:`avdata.untrusted.read_inside`: a FIFO, a device or a symlink leading
    out is refused in one line); each line checked by :func:`avdata.tuples.row_problem`, the first
    that fails is one line naming the file and its line number. One row at a time: a reader that
    keeps only what it needs of each row (``avtrain fit``) holds no list of dicts."""
    where = str(root / "manifest.json")
    data = read_inside(
        root, path.relative_to(root).as_posix(), where, MAX_INDEX_BYTES, "listed in manifest.json but missing"
    )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EvaluationError(f"{path}: not UTF-8 text") from None
    del data
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvaluationError(f"{path}:{n}: not JSON ({exc.msg})") from None
            except (ValueError, RecursionError) as exc:  # an over-long integer; nesting too deep
                raise EvaluationError(f"{path}:{n}: not usable JSON ({type(exc).__name__})") from None
            problem = row_problem(row, kind)
            if problem:
                raise EvaluationError(f"{path}:{n}: {problem}")
            yield n, row


def _read_jsonl(root: Path, path: Path, kind: str) -> list[dict]:
    """Every row of an index file (:func:`iter_jsonl`)."""
    return [row for _, row in iter_jsonl(root, path, kind)]


def read_tuple_lists(tuples_dir: str | Path) -> list[TupleList]:
    """Every non-empty list of a tuple directory, as its manifest.json records it (avdata.tuples
    owns the format), sorted by (task, name). Empty lists (a split with too few identities for
    that k) are left out."""
    try:
        indexed = index_lists(tuples_dir)
    except InputError as exc:
        raise EvaluationError(str(exc)) from None
    root = Path(tuples_dir)
    lists: list[TupleList] = []
    for il in indexed:
        rows = _read_jsonl(root, il.path, il.task)
        tl = TupleList(
            il.name, il.task, il.split, il.direction, il.k, il.constraint, rows, sha256=il.sha256,
            row_index=list(range(len(rows))),
        )  # fmt: skip
        if il.task == "retrieval":
            tl.gallery = _read_jsonl(root, il.gallery, "gallery")
            if bool(tl.rows) != bool(tl.gallery):
                raise EvaluationError(f"{il.path}: retrieval {il.name} needs both queries and a gallery")
        if not rows:
            continue
        check_rows(tl, il.path, il.gallery)
        if il.task == "verification":
            tl.split = rows[0].get("split", il.split)
        lists.append(tl)
    return lists


def _is_key(v) -> bool:
    return isinstance(v, str) and bool(v)


def list_row_problem(tl: TupleList, row) -> str | None:
    """What the list's own settings require of a row that already passed
    :func:`avdata.tuples.row_problem` (fields and types, direction, label a gallery position):
    non-empty item keys, and a gallery of the list's k (1 for verification)."""
    if not _is_key(row.get("query")):
        return "no query item key (a non-empty string)"
    if "split" in row and not _is_key(row["split"]):
        return "split is not a non-empty string"
    if tl.task == "retrieval":
        return None if _is_key(row.get("query_identity")) else "no query_identity (a non-empty string)"
    k = tl.k if tl.task == "matching" else 1
    gallery = row.get("gallery")
    if not (isinstance(gallery, list) and len(gallery) == k and all(_is_key(g) for g in gallery)):
        return f"gallery is not a list of {k} item key(s)"
    return None


def check_rows(tl: TupleList, path: Path, gallery_path: Path | None = None) -> None:
    """Every row of a list, checked for what the list's settings require (item keys, gallery size
    k; retrieval identities) after :func:`_read_jsonl` checked each line's fields, so a malformed
    row is one line naming the file and row before any work (``avtrain fit`` validates after
    every epoch)."""
    if tl.task == "matching" and not tl.k >= 2:
        raise EvaluationError(f"{path}: a matching list with k = {tl.k} in manifest.json, expected k >= 2")
    for n, row in enumerate(tl.rows, 1):
        problem = list_row_problem(tl, row)
        if problem:
            tid = row.get("tuple_id") if isinstance(row, dict) else None
            raise EvaluationError(f"{path}: row {n}{f' ({str(tid)[:40]})' if tid else ''}: {problem}")
    for n, g in enumerate(tl.gallery, 1):
        if not (isinstance(g, dict) and _is_key(g.get("key")) and _is_key(g.get("identity"))):
            raise EvaluationError(f"{gallery_path}: row {n}: not a gallery item (key and identity strings)")


def needed_items(lists: list[TupleList]) -> dict[str, str]:
    """key -> modality ('audio' or 'face') of every item the lists reference."""
    need: dict[str, str] = {}

    def add(key: str, modality: str, where: str):
        if need.setdefault(key, modality) != modality:
            raise EvaluationError(f"{where}: item {key} is used both as audio and as face")

    for tl in lists:
        if tl.task == "retrieval":
            for r in tl.rows:
                add(r["query"], MODALITY_OF_ROLE[tl.direction, "query"], tl.name)
            for g in tl.gallery:
                add(g["key"], MODALITY_OF_ROLE[tl.direction, "gallery"], tl.name)
            continue
        for r in tl.rows:
            d = r.get("direction", tl.direction)
            add(r["query"], MODALITY_OF_ROLE[d, "query"], tl.name)
            for g in r["gallery"]:
                add(g, MODALITY_OF_ROLE[d, "gallery"], tl.name)
    return need


def without_items(lists: list[TupleList], keys: set[str]) -> tuple[list[TupleList], dict[str, int]]:
    """The lists without the rows that name one of ``keys`` (items a frozen encoder rejected:
    they have no vector), and per list the number of rows left out (retrieval: queries and
    gallery items). A list left with no row is left out."""
    if not keys:
        return lists, {}
    out, dropped = [], {}
    for tl in lists:
        index = tl.row_index or range(len(tl.rows))
        if tl.task == "retrieval":
            kept_rows = [(i, r) for i, r in zip(index, tl.rows) if r["query"] not in keys]
            gallery = [g for g in tl.gallery if g["key"] not in keys]
            n = len(tl.rows) - len(kept_rows) + len(tl.gallery) - len(gallery)
        else:
            kept_rows = [
                (i, r)
                for i, r in zip(index, tl.rows)
                if r["query"] not in keys and not keys.intersection(r["gallery"])
            ]
            n = len(tl.rows) - len(kept_rows)
            gallery = tl.gallery
        rows = [r for _, r in kept_rows]
        kept = replace(tl, rows=rows, gallery=gallery, row_index=[i for i, _ in kept_rows])
        if n:
            dropped[tl.name] = n
        if kept.rows:
            out.append(kept)
    return out, dropped
