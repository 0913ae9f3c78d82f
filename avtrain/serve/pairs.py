"""Pair lists (FAME, labelled VoxCeleb-style, Learnable-PINs CSV) and :func:`safe_join`, which
keeps a list's relative paths inside their root."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from avdata.errors import UnsafeInputError
from avdata.untrusted import leads_outside
from avtrain.serve.errors import InferenceError

__all__ = ["FORMATS", "PINS_HEADER", "Pair", "read_pair_list", "safe_join"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
PINS_HEADER = ["id", "voice-speaker-id", "face-speaker-id", "label", "voice-path", "face-path"]
FORMATS = ("auto", "fame", "labelled", "pins-csv")


def safe_join(root: str | Path, rel: str) -> Path:
    """ROOT/rel for an untrusted relative path: refuses absolute paths, '..', URLs / 'pipe:',
    backslashes and symlinks that lead outside ROOT with UnsafeInputError (a name from a list
    never leaves its root)."""
    if not rel:
        raise UnsafeInputError(f"{rel!r}: empty path")
    if "\x00" in rel:
        raise UnsafeInputError(f"{rel!r}: the path contains a NUL byte")
    if "\\" in rel:
        raise UnsafeInputError(f"{rel!r}: backslash in a list path")
    if _SCHEME.match(rel):
        raise UnsafeInputError(f"{rel!r}: a URL or scheme, not a relative path")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or rel.startswith("~"):
        raise UnsafeInputError(f"{rel!r}: absolute path; list paths must be relative to --root")
    if ".." in pure.parts:
        raise UnsafeInputError(f"{rel!r}: '..' would leave --root")
    path = Path(root) / pure
    try:
        outside = leads_outside(root, path)
    except (OSError, RuntimeError) as exc:  # a symlink loop, an unreadable component
        raise UnsafeInputError(f"{rel!r}: cannot resolve the path ({exc})") from None
    if outside:
        raise UnsafeInputError(f"{rel!r}: a symlink leads outside {root}")
    return path


@dataclass(slots=True)  # one per list line: no per-object __dict__
class Pair:
    id: str
    voice: str
    face: str
    label: int | None = None
    line: int = 0  # 1-based line of the list file


def read_pair_list(path: str | Path, fmt: str = "auto") -> tuple[str, list[Pair]]:
    """(format, pairs) of a pair list. Formats:

    * ``fame``: FAME challenge test lists, ``ID voice_path face_path`` per line;
    * ``labelled``: VoxCeleb-style verification lists, ``LABEL voice_path face_path`` (LABEL 0/1;
      the pair's ID is its 1-based line number);
    * ``pins-csv``: Learnable-PINs ``veriflist_*.txt``, CSV with the header
      ``id,voice-speaker-id,face-speaker-id,label,voice-path,face-path``.
    ``auto``: pins-csv if that header is the first line; else, from the first fields of all
    lines, labelled if they are all 0 or 1 and repeat, fame if some are not 0/1 and no 0/1
    repeats (IDs are unique); any other list is ambiguous and refused (:func:`_detect_format`).
    A UTF-8 byte order mark is ignored. Repeated pair IDs are refused.
    """
    if fmt not in FORMATS:
        raise InferenceError(f"unknown list format {fmt!r}; one of {FORMATS}")
    from avdata.untrusted import MAX_INDEX_BYTES, read_regular

    path = Path(path)
    raw = read_regular(path, MAX_INDEX_BYTES, "pair list not found")  # regular, capped: no FIFO wait
    try:
        text = raw.decode("utf-8-sig")  # -sig: a leading byte order mark is dropped
    except UnicodeDecodeError as exc:
        raise InferenceError(f"{path}: cannot read the pair list ({type(exc).__name__})") from None
    del raw
    lines = text.splitlines()
    del text
    if fmt == "auto":
        fmt = _detect_format(path, lines)
    pairs: list[Pair] = []
    if fmt == "pins-csv":
        import csv

        rows = list(csv.reader(lines))
        if not rows or [c.strip() for c in rows[0]] != PINS_HEADER:
            raise InferenceError(f"{path}: first line is not the header {','.join(PINS_HEADER)}")
        for n, row in enumerate(rows[1:], 2):
            if not row:
                continue
            if len(row) != 6 or row[3].strip() not in ("0", "1"):
                raise InferenceError(f"{path}:{n}: expected 6 CSV fields with label 0/1")
            pairs.append(Pair(row[0].strip(), row[4].strip(), row[5].strip(), int(row[3]), n))
        _check_unique_ids(path, pairs)
        return fmt, pairs
    for n, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        parts = ln.split()
        if len(parts) != 3:
            raise InferenceError(
                f"{path}:{n}: expected 3 fields ({'LABEL' if fmt == 'labelled' else 'ID'} "
                f"voice face), got {len(parts)}"
            )
        if fmt == "labelled":
            if parts[0] not in ("0", "1"):
                raise InferenceError(f"{path}:{n}: label {parts[0]!r} is not 0 or 1")
            pairs.append(Pair(str(n), parts[1], parts[2], int(parts[0]), n))
        else:
            pairs.append(Pair(parts[0], parts[1], parts[2], None, n))
    _check_unique_ids(path, pairs)
    return fmt, pairs


def _detect_format(path: Path, lines: list[str]) -> str:
    """The format of a list from all its lines (see read_pair_list); one-line InferenceError
    when it fits both labelled and fame, or neither."""
    first = next((ln for ln in lines if ln.strip()), "")
    if [c.strip() for c in first.split(",")] == PINS_HEADER:
        return "pins-csv"
    heads = [(n, ln.split()[0]) for n, ln in enumerate(lines, 1) if ln.strip()]
    if not heads:
        return "fame"  # no pairs either way
    not_label = next(((n, h) for n, h in heads if h not in ("0", "1")), None)
    seen: dict[str, int] = {}  # a repeated 0/1 first field: a label (FAME IDs are unique)
    repeat = next(((n, seen[h]) for n, h in heads if h in ("0", "1") and seen.setdefault(h, n) != n), None)
    if not_label is None and repeat is not None:
        return "labelled"
    if not_label is not None and repeat is None:
        return "fame"
    if not_label is None:  # one or two lines, first fields 0 and 1: labels or FAME IDs
        raise InferenceError(
            f"{path}: ambiguous list: its first fields are all 0/1 but never repeat, so it reads as "
            "labelled (LABEL voice face) or as FAME (ID voice face); give --format labelled or --format fame"
        )
    raise InferenceError(
        f"{path}: neither a labelled nor a FAME list: line {not_label[0]} starts with {not_label[1]!r}, "
        f"not a 0/1 label, and line {repeat[0]} repeats the first field of line {repeat[1]}, which a "
        "FAME ID may not; fix the list or give --format"
    )


def _check_unique_ids(path: Path, pairs: list[Pair]) -> None:
    """Refuse a list whose pair IDs repeat: its score file would be an invalid FAME submission
    (one score per ID), and which of the repeated pairs a score belongs to would be lost."""
    seen: dict[str, int] = {}
    for p in pairs:
        first = seen.setdefault(p.id, p.line)
        if first != p.line:
            raise InferenceError(
                f"{path}:{p.line}: pair ID {p.id!r} repeats line {first}; pair IDs must be unique "
                "(a FAME submission has one score per ID)"
            )
