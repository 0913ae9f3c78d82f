"""Identity splits: the machinery every corpus's protocols share (avdata.corpora owns the
protocols themselves: which identity goes where, by which file).

Splits are decided here, once, at the identity level, from protocol files alone
(never from media), so that every later stage (shards, tuples, training) inherits
identity-disjointness instead of re-deciding it. The one media-level decision is a
hold-out whose unit is the source video (PINs' seen-heard, :func:`assign_media_splits`),
so one source video never lands on both sides.

* :func:`custom_identity_splits`: a CSV ``identity,split`` (any corpus's ``custom`` protocol);
* :func:`seeded_identity_splits`: a seeded identity-disjoint split with stated fractions (a
  CSV corpus without a split column, FAME without its lists).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from avdata.corpora.base import SPLIT_NAME
from avdata.errors import AvmatchError, InputError

# Fraction of each train identity's source videos held out as seen-heard test media.
DEFAULT_SEEN_HEARD_FRACTION = 0.1
# A corpus without a split of its own (a CSV without a split column): identity fractions.
DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


class SplitError(AvmatchError, ValueError):
    """A protocol that cannot be applied as asked (unknown protocol, missing PINs file,
    identities in two splits). A ValueError too, for callers that catch those."""


def check_disjoint(splits: pd.DataFrame) -> None:
    """Raise if any identity (by name or vox id) is in more than one split."""
    for col in ("name", "vox_id"):
        per_id = splits.groupby(col)["split"].nunique()
        bad = per_id[per_id > 1]
        if len(bad):
            raise SplitError(f"identities in more than one split ({col}): {sorted(bad.index)[:5]}")


def split_counts(splits: pd.DataFrame) -> dict[str, int]:
    return {k: int(v) for k, v in splits["split"].value_counts().sort_index().items()}


def _identity_rng(seed: int, name: str) -> np.random.Generator:
    # crc32 of the name, not hash(): stable across processes and Python versions.
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def seen_heard_sources(
    name: str, sources: list[str], seed: int, fraction: float = DEFAULT_SEEN_HEARD_FRACTION
) -> set[str]:
    """The source videos of one train identity held out as seen-heard test media.

    Rule: sort the identity's distinct source-video ids (over all modalities), draw a
    permutation with ``default_rng([seed, crc32(name)])`` and hold out the first
    ``max(1, round(fraction * n))`` of them; an identity with fewer than two source
    videos keeps all its media in train. Because the unit is the source video, a
    video's audio and its face frames always fall on the same side.
    """
    uniq = sorted(set(sources))
    if len(uniq) < 2:
        return set()
    n_held = min(len(uniq) - 1, max(1, int(round(fraction * len(uniq)))))
    order = _identity_rng(seed, name).permutation(len(uniq))
    return {uniq[i] for i in order[:n_held]}


def assign_media_splits(
    media: pd.DataFrame,
    splits: pd.DataFrame,
    protocol: str,
    seed: int = 0,
    seen_heard_fraction: float = DEFAULT_SEEN_HEARD_FRACTION,
) -> pd.DataFrame:
    """Add a ``split`` column to a media table (from :mod:`avdata.ingest`).

    Media of identities the protocol does not place get split ``None`` (the caller
    records them as rejects). For ``pins``, media of held-out source videos of train
    identities move to ``seen_heard``.
    """
    by_name = dict(zip(splits["name"], splits["split"]))
    out = media.copy()
    out["split"] = [by_name.get(n) for n in out["name"]]
    if protocol == "pins" and len(out):
        train = out["split"] == "train"
        held: dict[str, set[str]] = {}
        for name, group in out[train].groupby("name", sort=True):
            held[name] = seen_heard_sources(name, group["source_id"].tolist(), seed, seen_heard_fraction)
        move = [bool(t) and s in held.get(n, ()) for t, n, s in zip(train, out["name"], out["source_id"])]
        out.loc[move, "split"] = "seen_heard"
    return out


def read_table(
    path: str | Path, what: str, sep: str = ",", skipinitialspace: bool = False
) -> list[list[str]]:
    """The rows of a small delimited protocol file (a split CSV, a corpus meta file), each field
    stripped of surrounding spaces (VoxCeleb2's and VGGFace2's files pad them) and of a UTF-8
    byte-order mark; blank lines left out. ``skipinitialspace``: a quoted field may follow the
    delimiter's space (VGGFace2's ``, "Name"``). A file that is missing or not UTF-8 text is one
    line."""
    import csv
    import io

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(path, f"{what} not found") from None
    except IsADirectoryError:
        raise InputError(path, f"a directory, not a {what}") from None
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(path, f"cannot read the {what} ({exc.strerror or exc})") from None
    rows = [
        [f.strip() for f in row]
        for row in csv.reader(io.StringIO(text), delimiter=sep, skipinitialspace=skipinitialspace)
    ]
    return [r for r in rows if any(r)]


def header_columns(path: Path, header: list[str], required: list[str], what: str) -> dict[str, int]:
    """Column positions of ``required`` (case-insensitive) in ``header``; a missing column is one
    line naming the file, the columns it lacks and the ones it has."""
    lower = [h.lower() for h in header]
    missing = [c for c in required if c.lower() not in lower]
    if missing:
        raise InputError(
            path,
            f"{what} lacks the column(s) {', '.join(missing)}; its header is {', '.join(header) or '(empty)'}",
        )
    return {c: lower.index(c.lower()) for c in required}


def _splits_frame(rows: list[tuple[str, str, str]], unplaced: list, problems: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["name", "vox_id", "split"]).sort_values("vox_id").reset_index(drop=True)
    check_disjoint(df)
    df.attrs["unplaced"] = unplaced
    df.attrs["problems"] = problems
    return df


def custom_identity_splits(meta: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """A CSV with the header ``identity,split`` (an identity by its id or its name in the meta
    file). A row with an unknown identity, a split name that is not ``[A-Za-z0-9_]`` (splits become
    folder names), or a second split for one identity is one line in ``attrs['problems']``
    (``FILE: row N: reason``) and the good rows are kept; identities the file leaves out are
    unplaced."""
    path = Path(path)
    rows = read_table(path, "split file")
    if not rows:
        raise InputError(path, "empty split file; expected the header identity,split")
    cols = header_columns(path, rows[0], ["identity", "split"], "split file")
    by_id = dict(zip(meta["vox_id"], meta["name"]))
    by_name = dict(zip(meta["name"], meta["vox_id"]))
    placed: dict[str, str] = {}
    problems: list[str] = []
    for lineno, row in enumerate(rows[1:], 2):
        ident = row[cols["identity"]] if cols["identity"] < len(row) else ""
        split = row[cols["split"]] if cols["split"] < len(row) else ""
        vox_id = ident if ident in by_id else by_name.get(ident)
        if vox_id is None:
            problems.append(
                InputError(path, f"row {lineno}: unknown identity {ident!r} (not in the meta file)")
            )
        elif not SPLIT_NAME.match(split):
            problems.append(
                InputError(path, f"row {lineno}: split {split!r} is not a name of [A-Za-z0-9_] characters")
            )
        elif placed.get(vox_id, split) != split:
            problems.append(
                InputError(
                    path,
                    f"row {lineno}: identity {ident!r} is already in split {placed[vox_id]!r}; row skipped",
                )
            )
        else:
            placed[vox_id] = split
    rows_out = [(by_id[v], v, s) for v, s in placed.items()]
    unplaced = [(n, "not in the split file") for v, n in by_id.items() if v not in placed]
    return _splits_frame(rows_out, unplaced, problems)


def seeded_identity_splits(
    meta: pd.DataFrame, seed: int = 0, fractions: dict[str, float] | None = None
) -> pd.DataFrame:
    """A seeded identity-disjoint split with ``fractions`` (default :data:`DEFAULT_FRACTIONS`):
    identities sorted by id, permuted by ``default_rng([seed, 23])``; every split but the first
    gets ``max(1, round(fraction * n))`` identities (while at least one is left for the first),
    the first (train) the rest. Deterministic in the seed and the set of identities."""
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    ids = sorted(meta["vox_id"])
    name_of = dict(zip(meta["vox_id"], meta["name"]))
    order = np.random.default_rng([seed, 23]).permutation(len(ids))
    names = list(fractions)
    counts = {}
    left = len(ids)
    for s in names[1:]:
        n = min(max(1, int(round(fractions[s] * len(ids)))), max(0, left - 1))
        counts[s] = n
        left -= n
    rows, start = [], left  # the first split takes the first `left` of the permutation
    for i in order[:left]:
        rows.append((name_of[ids[i]], ids[i], names[0]))
    for s in names[1:]:
        for i in order[start : start + counts[s]]:
            rows.append((name_of[ids[i]], ids[i], s))
        start += counts[s]
    return _splits_frame(rows, [], [])


def fractions_text(fractions: dict[str, float] | None = None) -> str:
    fractions = fractions or DEFAULT_FRACTIONS
    return " / ".join(f"{s} {f:g}" for s, f in fractions.items())


def fame_media_splits(media: pd.DataFrame, splits: pd.DataFrame, heard: str, unheard: str) -> pd.DataFrame:
    """FAME's media splits (the face-voice association challenge on MAV-Celeb): train identities
    keep only their ``heard``-language media (``train``); the other identities' media are tested
    in the heard and in the unheard language (``heard`` / ``unheard``). A file in another language,
    or a train identity's unheard-language file, is placed nowhere, with its reason in
    ``unplaced``."""
    out = media.copy()
    by_name = dict(zip(splits["name"], splits["split"]))
    placed, why = [], []
    for name, language in zip(out["name"], out["language"]):
        ident = by_name.get(name)
        if ident is None:
            placed.append(None)
            why.append(None)  # not placed by the identity split: the caller's usual reason
        elif language not in (heard, unheard):
            placed.append(None)
            why.append(
                f"language {language!r} is not in the fame protocol (--languages {heard},{unheard})"
                if language
                else "no language in its path: the fame protocol needs LANGUAGE folders"
            )
        elif ident == "train":
            placed.append("train" if language == heard else None)
            why.append(
                None
                if language == heard
                else f"{unheard} file of a train identity: the fame protocol trains on {heard} only"
            )
        else:
            placed.append("heard" if language == heard else "unheard")
            why.append(None)
    out["split"] = placed
    out["unplaced"] = why
    return out
