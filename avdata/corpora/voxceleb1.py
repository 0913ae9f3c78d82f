"""VoxCeleb1 (+ VGGFace1 face photos or VoxCeleb1's own face frames): avmatch's first corpus.

Meta: ``vox1_meta.csv`` (tab separated; header ``VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality,
Set``; the VGGFace1 ID is the name, e.g. ``A.J._Buckley``).

Layouts (the first path component under a root names the identity, by VoxCeleb id ``idNNNNN``
or by name):

* audio  ``idNNNNN/YTID/NNNNN.wav`` (the release), ``NAME/YTID_0000001.wav`` (PINs lists),
  ``NAME.wav`` (one clip per identity);
* faces  ``NAME/YTID/NNNNNNN.jpg`` (VoxCeleb1 face frames), ``NAME/1.6/YTID/NNNNNNN.jpg`` (the
  released ``unzippedFaces`` tree: give ``--faces unzippedFaces``), ``NAME/*.jpg|png`` (VGGFace);
* videos ``idNNNNN/YTID/NNNNN.mp4``, ``NAME/*.mp4``.

The source video of a file is the folder holding it (the YTID in every layout above, also below
``unzippedFaces``' ``1.6`` folder); a file directly in its identity folder is its own source.

Protocols:

* ``matching`` (SVHF / DIMNet / AML): the first letter of the name: A-B ``val``, C-E ``test``,
  F-Z ``train`` (116 / 193 / 942 identities on the official meta file);
* ``wen2021``: the identity split of Wen et al. 2021's lists (``vox1_val.csv``, ``vox1_test.csv``,
  ``vox1_train.csv`` of github.com/KID-7391/seeking-the-shape-of-sound: 116 / 193 / 942 identities,
  id10001-id10116 / id10117-id10309 / id10310-id11251): the same name-initial rule, checked
  against those counts in the tests. Their test faces are VGGFace photos, not frames of the voice's
  video: build with VGGFace photos as ``--faces`` and draw ``make-tuples --positive-source
  other-video`` to get lists of that kind;
* ``pins`` (Learnable PINs): ``identity_splits.txt`` set 1 ``train``, 2 ``val``, 4
  ``unseen_unheard`` (901 / 100 / 250); ``seen_heard`` holds held-out source videos of train
  identities, carved per video when shards are built;
* ``custom``: a CSV ``identity,split`` (``--splits``).
"""

from __future__ import annotations

import string
from pathlib import Path

from avdata.corpora.base import Corpus, Protocol, ProtocolOptions
from avdata.errors import InputError

META_COLUMNS = ["VoxCeleb1 ID", "VGGFace1 ID", "Gender", "Nationality", "Set"]
MATCHING_SPLITS = ("train", "val", "test")
PINS_SPLITS = ("train", "val", "seen_heard", "unseen_unheard")
PINS_SET_TO_SPLIT = {1: "train", 2: "val", 4: "unseen_unheard"}
# Identity counts of Wen et al. 2021's VoxCeleb1 lists (train, val, test csv files of their
# repository), what the wen2021 protocol must give on the official vox1_meta.csv.
WEN2021_COUNTS = {"train": 942, "val": 116, "test": 193}

MATCHING_HELP = "first letter of the VGGFace1 name: A-B val, C-E test, F-Z train"
CUSTOM = Protocol("custom", "a CSV identity,split (--splits): any identity split", (), {}, ("splits",))


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


def read_meta(path: str | Path):
    """Read a VoxCeleb1 meta file (tab separated, official header) into
    columns ``vox_id, name, gender, nationality, set``, sorted by vox_id."""
    import pandas as pd

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


def make_pins_sets(names: list[str], seed: int = 0, fractions=(0.72, 0.08, 0.20)) -> dict[str, int]:
    """A Learnable-PINs style identity split for a corpus without an official one
    (the synthetic corpus): sets 1 (train) / 2 (val) / 4 (unseen-unheard) in the
    official proportions 901 / 100 / 250, each set non-empty when there are >= 3 names."""
    import numpy as np

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
    from avdata.io import atomic_write_text

    atomic_write_text(path, "".join(f"{name} {s} \n" for name, s in sets.items()))


def matching_rule_text(protocol: str = "matching") -> str:
    """The name-initial rule as matching_split applies it now (probed letter by letter), so a
    changed rule changes the split manifests."""
    groups: list[list[str]] = []
    for letter in string.ascii_uppercase:
        try:
            s = matching_split(letter)
        except ValueError:
            s = "unplaced"
        if groups and groups[-1][2] == s:
            groups[-1][1] = letter
        else:
            groups.append([letter, letter, s])
    parts = [f"{a}-{b} {s}" if a != b else f"{a} {s}" for a, b, s in groups]
    return f"{protocol}: first letter of the VGGFace1 name: " + ", ".join(parts)


class VoxCeleb1(Corpus):
    name = "voxceleb1"
    title = "VoxCeleb1 voices and videos with VoxCeleb1 face frames or VGGFace1 photos"
    meta_help = "vox1_meta.csv (tab separated: VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality, Set)"
    layouts = {
        "audio": "idNNNNN/YTID/NNNNN.wav, NAME/YTID_0000001.wav or NAME.wav",
        "faces": "NAME/YTID/NNNNNNN.jpg, NAME/1.6/YTID/NNNNNNN.jpg (unzippedFaces) or NAME/*.jpg|png",
        "videos": "idNNNNN/YTID/NNNNN.mp4 or NAME/*.mp4",
    }
    protocols = {
        "matching": Protocol("matching", MATCHING_HELP, MATCHING_SPLITS),
        "wen2021": Protocol(
            "wen2021",
            "Wen et al. 2021's lists: the name-initial split (942 / 116 / 193 identities)",
            MATCHING_SPLITS,
        ),
        "pins": Protocol(
            "pins",
            "Learnable-PINs identity_splits.txt sets 1 train, 2 val, 4 unseen_unheard; "
            "seen_heard: held-out videos of train identities",
            PINS_SPLITS,
            {"seen_heard": "train"},
            ("pins_splits",),
        ),
        "custom": CUSTOM,
    }
    default_protocol = "matching"

    def read_meta(self, path):
        return read_meta(path)

    def identity_splits(self, meta, protocol: str, options: ProtocolOptions):
        import pandas as pd

        from avdata.splits import SplitError, check_disjoint

        proto = self.protocol(protocol)
        self.check_options(proto, options)
        if proto.name == "custom":
            return super().identity_splits(meta, protocol, options)
        rows, unplaced = [], []
        if proto.name in ("matching", "wen2021"):
            for name, vox_id in zip(meta["name"], meta["vox_id"]):
                try:
                    rows.append((name, vox_id, matching_split(name)))
                except ValueError as exc:
                    unplaced.append((name, str(exc)))
        elif proto.name == "pins":
            sets = read_pins_splits(options.pins_splits)
            for name, vox_id in zip(meta["name"], meta["vox_id"]):
                s = sets.get(name)
                if s is None:
                    unplaced.append((name, "not in the PINs split file"))
                elif s not in PINS_SET_TO_SPLIT:
                    unplaced.append((name, f"PINs set {s} has no identity split"))
                else:
                    rows.append((name, vox_id, PINS_SET_TO_SPLIT[s]))
        else:  # pragma: no cover - every protocol above is handled
            raise SplitError(f"protocol {proto.name} is not implemented for {self.name}")
        df = pd.DataFrame(rows, columns=["name", "vox_id", "split"])
        df = df.sort_values("vox_id").reset_index(drop=True)
        check_disjoint(df)
        df.attrs["unplaced"] = unplaced
        return df

    def split_rule(self, protocol: str, options: ProtocolOptions) -> str:
        proto = self.protocol(protocol)
        if proto.name in ("matching", "wen2021"):
            text = matching_rule_text(proto.name)
            if proto.name == "wen2021":
                text += " (Wen et al. 2021's vox1_train/val/test.csv: 942 / 116 / 193 identities)"
            return text
        if proto.name == "pins":
            sets = ", ".join(f"{k} {v}" for k, v in sorted(PINS_SET_TO_SPLIT.items()))
            return (
                f"pins: identity_splits.txt set {sets}; seen_heard holds media of train identities "
                "(held-out source videos, chosen when shards are built)"
            )
        return super().split_rule(protocol, options)


VOXCELEB1 = VoxCeleb1()
