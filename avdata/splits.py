"""Identity splits for the two standard face-voice protocols.

Splits are decided here, once, at the identity level, from protocol files alone
(never from media), so that every later stage (shards, tuples, training) inherits
identity-disjointness instead of re-deciding it.

* ``matching`` (SVHF / DIMNet / AML): the first letter of the VGGFace1 name decides:
  A-B ``val``, C-E ``test``, F-Z ``train``. On the official ``vox1_meta.csv`` this
  gives 116 / 193 / 942 identities.
* ``pins`` (Learnable PINs): ``identity_splits.txt`` set 1 ``train``, 2 ``val``,
  4 ``unseen_unheard`` (901 / 100 / 250). The fourth split, ``seen_heard``, holds
  *media* of train identities; it is carved out per source video by
  :func:`assign_media_splits` so one source video never lands on both sides.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from avdata.errors import AvmatchError, InputError
from avdata.io import atomic_write_text

PROTOCOLS = ("matching", "pins")
MATCHING_SPLITS = ("train", "val", "test")
PINS_SPLITS = ("train", "val", "seen_heard", "unseen_unheard")
PINS_SET_TO_SPLIT = {1: "train", 2: "val", 4: "unseen_unheard"}
META_COLUMNS = ["VoxCeleb1 ID", "VGGFace1 ID", "Gender", "Nationality", "Set"]
# Fraction of each train identity's source videos held out as seen-heard test media.
DEFAULT_SEEN_HEARD_FRACTION = 0.1


class SplitError(AvmatchError, ValueError):
    """A protocol that cannot be applied as asked (unknown protocol, missing PINs file,
    identities in two splits). A ValueError too, for callers that catch those."""


def _check_rows(path: Path) -> None:
    """Every row has exactly the header's number of tab-separated fields. pandas would
    otherwise shift a row with an extra field (a stray tab) into the wrong columns, or
    take the first column as an index when every row has one."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except IsADirectoryError:
        raise InputError(path, "a directory, not a meta file") from None
    except OSError as exc:
        raise InputError(path, f"cannot read meta file ({exc.strerror or exc})") from None
    lines = text.splitlines()
    if not lines:
        raise InputError(path, "empty meta file")
    n_header = len(lines[0].split("\t"))
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        n = len(line.split("\t"))
        if n != n_header:
            raise InputError(
                path,
                f"row {lineno}: {n} tab-separated fields, the header has {n_header} ({line.strip()[:60]!r})",
            )


def read_meta(path: str | Path) -> pd.DataFrame:
    """Read a VoxCeleb1 meta file (tab separated, official header) into
    columns ``vox_id, name, gender, nationality, set``, sorted by vox_id."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "meta file not found")
    _check_rows(path)
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise InputError(path, "meta file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a tab-separated meta file ({exc})") from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in META_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(path, f"meta file lacks columns {missing}; expected {META_COLUMNS}")
    df = df[META_COLUMNS].apply(lambda col: col.str.strip())
    df.columns = ["vox_id", "name", "gender", "nationality", "set"]
    dup = df["name"][df["name"].duplicated()].tolist() + df["vox_id"][df["vox_id"].duplicated()].tolist()
    if dup:
        raise InputError(path, f"duplicate identities in meta file: {dup[:5]}")
    return df.sort_values("vox_id").reset_index(drop=True)


def matching_split(name: str) -> str:
    """A-B val, C-E test, F-Z train, by the first letter of the name (case-insensitive)."""
    first = name[:1].upper()
    if not ("A" <= first <= "Z"):
        raise ValueError(f"name {name!r} does not start with a letter A-Z")
    if first <= "B":
        return "val"
    if first <= "E":
        return "test"
    return "train"


def read_pins_splits(path: str | Path) -> dict[str, int]:
    """Read Learnable-PINs ``identity_splits.txt``: ``NAME SET`` per line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "PINs split file not found")
    sets: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise InputError(path, f"line {lineno}: expected 'NAME SET', got {line.strip()!r}")
        sets[parts[0]] = int(parts[1])
    return sets


def identity_splits(meta: pd.DataFrame, protocol: str, pins_splits: str | Path | None = None) -> pd.DataFrame:
    """Return ``name, vox_id, split`` for every identity the protocol places.

    Identities the protocol cannot place (a name not starting with A-Z, a name absent
    from the PINs file, a PINs set without a split) are left out and listed in
    ``df.attrs['unplaced']`` as ``(name, reason)`` pairs.
    """
    if protocol not in PROTOCOLS:
        raise SplitError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    rows, unplaced = [], []
    if protocol == "matching":
        for name, vox_id in zip(meta["name"], meta["vox_id"]):
            try:
                rows.append((name, vox_id, matching_split(name)))
            except ValueError as exc:
                unplaced.append((name, str(exc)))
    else:
        if pins_splits is None:
            raise SplitError("--protocol pins needs --pins-splits identity_splits.txt")
        sets = read_pins_splits(pins_splits)
        for name, vox_id in zip(meta["name"], meta["vox_id"]):
            s = sets.get(name)
            if s is None:
                unplaced.append((name, "not in the PINs split file"))
            elif s not in PINS_SET_TO_SPLIT:
                unplaced.append((name, f"PINs set {s} has no identity split"))
            else:
                rows.append((name, vox_id, PINS_SET_TO_SPLIT[s]))
    df = pd.DataFrame(rows, columns=["name", "vox_id", "split"])
    df = df.sort_values("vox_id").reset_index(drop=True)
    check_disjoint(df)
    df.attrs["unplaced"] = unplaced
    return df


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


def make_pins_sets(names: list[str], seed: int = 0, fractions=(0.72, 0.08, 0.20)) -> dict[str, int]:
    """A Learnable-PINs style identity split for a corpus without an official one
    (the synthetic corpus): sets 1 (train) / 2 (val) / 4 (unseen-unheard) in the
    official proportions 901 / 100 / 250, each set non-empty when there are >= 3 names."""
    order = np.random.default_rng([seed, 4]).permutation(len(names))
    n = len(names)
    n_val = max(1, int(round(fractions[1] * n))) if n >= 3 else 0
    n_test = max(1, int(round(fractions[2] * n))) if n >= 3 else 0
    sets = {}
    for rank, i in enumerate(order):
        sets[names[i]] = 2 if rank < n_val else 4 if rank < n_val + n_test else 1
    return dict(sorted(sets.items()))


def write_pins_sets(sets: dict[str, int], path: str | Path) -> None:
    """Write ``NAME SET`` lines with the official file's trailing space."""
    atomic_write_text(path, "".join(f"{name} {s} \n" for name, s in sets.items()))
