"""Any corpus from one CSV file (``--corpus csv --meta corpus.csv``): a lab's own recordings.

Columns (a header row, any order, names case-insensitive): ``path, identity, modality`` and
optionally ``source, gender, nationality, language, split``.

* ``path``: the media file, relative to the CSV's folder (absolute paths, ``..`` and URLs are
  refused: the CSV may come from elsewhere); ``modality``: ``audio``, ``face`` or ``video``
  (a video feeds both);
* ``source``: the recording the file comes from (a video, a session). Without it, the folder
  holding the file (a file at the top: its own name): files of one folder are taken to share a
  recording, the cautious reading for ``make-tuples --positive-source other-video``;
* ``gender``, ``nationality`` (make-tuples ``--constrain``) and ``split`` belong to the
  identity: every row of an identity must agree; ``language`` belongs to the file (FAME).

A bad row (a field count other than the header's, an empty identity or path, an unknown
modality, an unsafe path, an attribute or split other than the identity's earlier rows) is one
line naming the row, and the good rows are kept. The CSV lists the media itself: no ``--audio``,
``--faces`` or ``--videos``.

Protocols:

* ``csv-splits``: the ``split`` column; without one, a seeded identity-disjoint split
  train 0.7 / val 0.1 / test 0.2 (``--seed``);
* ``fame`` (``--languages HEARD,UNHEARD``, needs the ``language`` column): train identities (split
  ``train`` in the split column, else a seeded 0.9 / 0.1 split) keep their HEARD files, the
  others are tested in both languages (``heard``, ``unheard``);
* ``custom``: a CSV ``identity,split`` (``--splits``).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from avdata.corpora.base import SPLIT_NAME, Protocol, ProtocolOptions
from avdata.corpora.mavceleb import FAME, FameCorpus
from avdata.corpora.voxceleb1 import CUSTOM

REQUIRED = ["path", "identity", "modality"]
OPTIONAL = ["source", "gender", "nationality", "language", "split"]
IDENTITY_FIELDS = ("gender", "nationality", "split")
MODALITIES = ("audio", "face", "video")


def _path_problem(rel: str) -> str | None:
    """Why a CSV path is not a plain relative path inside the CSV's folder (None: it is one)."""
    if any(ord(c) < 32 for c in rel):
        return "contains control characters"
    if "://" in rel or rel.startswith("pipe:"):
        return "a URL, not a relative path"
    if "\\" in rel:
        return "contains a backslash"
    p = PurePosixPath(rel)
    if p.is_absolute():
        return "an absolute path (paths are relative to the CSV's folder)"
    if ".." in p.parts:
        return "a '..' component leaves the CSV's folder"
    return None


def parse_csv(path: str | Path) -> tuple[list[dict], list]:
    """The good rows of a corpus CSV (dicts of every column, absent optional ones empty) and one
    problem line per bad row. A missing file, a wrong header or a missing column is one
    InputError."""
    from avdata.errors import InputError
    from avdata.splits import header_columns, read_table

    path = Path(path)
    rows = read_table(path, "corpus CSV")
    if not rows:
        raise InputError(path, "empty corpus CSV; expected the header path,identity,modality[,...]")
    header = rows[0]
    cols = header_columns(path, header, REQUIRED, "corpus CSV")
    lower = [h.lower() for h in header]
    cols |= {c: lower.index(c) for c in OPTIONAL if c in lower}
    good, problems = [], []
    first: dict[str, dict] = {}  # identity -> {field: (value, row)} of its first row with a value
    for lineno, row in enumerate(rows[1:], 2):
        where = f"row {lineno}"
        if len(row) != len(header):
            problems.append(
                InputError(path, f"{where}: {len(row)} fields, the header has {len(header)}; row skipped")
            )
            continue
        rec = {c: row[cols[c]] if c in cols else "" for c in REQUIRED + OPTIONAL}
        rec["modality"] = rec["modality"].lower()
        rec["row"] = lineno
        why = (
            "empty identity"
            if not rec["identity"]
            else "empty path"
            if not rec["path"]
            else f"modality {rec['modality']!r} is not audio, face or video"
            if rec["modality"] not in MODALITIES
            else f"path {rec['path']!r}: {_path_problem(rec['path'])}"
            if _path_problem(rec["path"])
            else f"split {rec['split']!r} is not a name of [A-Za-z0-9_] characters"
            if rec["split"] and not SPLIT_NAME.match(rec["split"])
            else None
        )
        if why is None:
            seen = first.setdefault(rec["identity"], {})
            for f in IDENTITY_FIELDS:
                if rec[f] and f in seen and seen[f][0] != rec[f]:
                    why = (
                        f"{f} {rec[f]!r} of identity {rec['identity']!r} differs from {seen[f][0]!r} "
                        f"(row {seen[f][1]})"
                    )
                    break
        if why:
            problems.append(InputError(path, f"{where}: {why}; row skipped"))
            continue
        for f in IDENTITY_FIELDS:
            if rec[f]:
                first[rec["identity"]].setdefault(f, (rec[f], lineno))
        good.append(rec)
    return good, problems


def _source_of(rel: str) -> str:
    p = PurePosixPath(rel)
    return p.parent.name if len(p.parts) > 1 else p.stem


class CsvCorpus(FameCorpus):
    name = "csv"
    title = "any corpus listed in one CSV: path, identity, modality[, source, gender, nationality, language, split]"
    meta_help = "the corpus CSV (path,identity,modality[,source][,gender][,nationality][,language][,split])"
    layouts = {}
    meta_in_roots = True
    protocols = {
        "csv-splits": Protocol(
            "csv-splits",
            "the CSV's split column, else a seeded identity-disjoint split train 0.7 / val 0.1 / test 0.2",
        ),
        "fame": FAME,
        "custom": CUSTOM,
    }
    default_protocol = "csv-splits"

    def read_meta(self, path):
        """One row per identity (``vox_id`` = ``name`` = the identity), with its ``split`` ("" if
        the CSV gives none); ``attrs['problems']``: the bad rows."""
        import pandas as pd

        good, problems = parse_csv(path)
        ids: dict[str, dict] = {}
        for rec in good:
            entry = ids.setdefault(rec["identity"], dict.fromkeys(IDENTITY_FIELDS, ""))
            for f in IDENTITY_FIELDS:
                entry[f] = entry[f] or rec[f]
        df = pd.DataFrame(
            [(i, i, e["gender"], e["nationality"], "", e["split"]) for i, e in ids.items()],
            columns=["vox_id", "name", "gender", "nationality", "set", "split"],
        )
        df = df.sort_values("vox_id").reset_index(drop=True)
        df.attrs["problems"] = problems
        return df

    def scan(self, meta, audio=None, faces=None, videos=None, meta_path=None):
        """The CSV's good rows as the media table; a listed file that is missing, empty or not a
        regular file is a problem naming it (the CSV's row)."""
        import pandas as pd

        from avdata.ingest import COLUMNS, ScanResult, _not_a_file, sort_media

        root = Path(meta_path).parent
        good, _ = parse_csv(meta_path)  # the bad rows were reported when the meta was read
        rows, problems = [], []
        for rec in good:
            rel = PurePosixPath(rec["path"]).as_posix()
            full = root / rel
            reason = _not_a_file(full)
            if reason is None and not os.path.realpath(full).startswith(os.path.realpath(root) + os.sep):
                reason = "a symlink leading out of the CSV's folder"
            if reason is None and full.stat().st_size == 0:
                reason = "empty file (0 bytes)"
            if reason is not None:
                problems.append({"path": str(full), "reason": f"{reason} (row {rec['row']})"})
                continue
            st = full.stat()
            rows.append(
                (
                    rec["modality"],
                    rec["identity"],
                    rec["identity"],
                    rec["source"] or _source_of(rel),
                    rel,
                    str(full),
                    int(st.st_size),
                    int(st.st_mtime_ns),
                    rec["language"],
                )
            )
        return ScanResult(sort_media(pd.DataFrame(rows, columns=COLUMNS)), problems)

    def identity_splits(self, meta, protocol: str, options: ProtocolOptions):
        from avdata.splits import _splits_frame, seeded_identity_splits

        proto = self.protocol(protocol)
        self.check_options(proto, options)
        has_split = bool((meta["split"] != "").any())
        if proto.name == "csv-splits" and not has_split:
            return seeded_identity_splits(meta, options.seed)
        if proto.name == "csv-splits":
            placed = meta[meta["split"] != ""]
            unplaced = [(n, "no split in the CSV") for n in meta.loc[meta["split"] == "", "name"]]
            return _splits_frame(list(zip(placed["name"], placed["vox_id"], placed["split"])), unplaced, [])
        if proto.name == "fame":
            self.check_languages(options)
            if not has_split:
                return self.fame_identity_splits(meta, options)
            rows = [
                (n, v, "train" if s == "train" else "test")
                for n, v, s in zip(meta["name"], meta["vox_id"], meta["split"])
            ]
            return _splits_frame(rows, [], [])
        return super().identity_splits(meta, protocol, options)

    def split_rule(self, protocol: str, options: ProtocolOptions) -> str:
        from avdata.splits import fractions_text

        proto = self.protocol(protocol)
        if proto.name == "csv-splits":
            return f"csv-splits: the split column, else seeded (--seed {options.seed}) {fractions_text()}"
        if proto.name == "fame":
            heard, unheard = self.check_languages(options)
            return (
                f"fame: train identities (split column train, else seeded 0.9 / 0.1): their {heard} files; "
                f"heard / unheard: the other identities' {heard} / {unheard} files"
            )
        return super().split_rule(protocol, options)


CSV_CORPUS = CsvCorpus()
