"""The corpus seam: what a corpus recipe provides to ``build-shards`` and the split manifests.

A corpus (after lhotse's recipes: one module per corpus) owns

* its **meta reader** (:meth:`Corpus.read_meta`): the corpus's own identity file, read into one
  table ``vox_id, name, gender, nationality, set`` (``vox_id`` is the corpus's identity id,
  whatever the corpus calls it), sorted by ``vox_id``; bad rows are reported one line each and
  the good rows kept, a file that cannot be read as the corpus's meta file (its header, a
  missing column) is one :class:`~avdata.errors.InputError`;
* its **layout** (:meth:`Corpus.identity_index`, :meth:`Corpus.file_fields`): which folder or
  file stem names the identity, and what the path below it says about the file (the source
  video, the language); :mod:`avdata.ingest` walks the trees with them;
* its **protocols** (:attr:`Corpus.protocols`, :meth:`Corpus.identity_splits`,
  :meth:`Corpus.assign_media_splits`, :meth:`Corpus.split_rule`): identity splits decided once
  from protocol files, then media splits where a protocol cuts inside an identity (the PINs
  seen-heard videos, FAME's languages).

Nothing here imports pandas or torch at module level: the registry
(:mod:`avdata.corpora`) is read by the CLIs to offer the corpora and protocols as choices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from avdata.errors import AvmatchError

# A split becomes a folder name (SPLIT/audio-000000.tar) and a word in tuple names.
SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


class CorpusError(AvmatchError, ValueError):
    """A corpus or protocol asked for in a way it cannot be applied (an unknown corpus, a
    protocol of another corpus, a missing protocol file or option). One line."""


@dataclass(frozen=True)
class Protocol:
    """A named way to split a corpus: which splits it makes and what it needs.

    ``splits`` are the media splits (shard folders) it can make; empty: the identity splits a
    file names (custom split files, a CSV's split column). ``identity_split_of`` maps a media
    split cut inside identities to the identity split its media come from (PINs' seen_heard
    from train; FAME's heard and unheard from test). ``needs`` names the options it cannot do
    without: ``pins_splits``, ``splits`` (a split file or folder), ``languages``."""

    name: str
    help: str
    splits: tuple[str, ...] = ()
    identity_split_of: dict[str, str] = field(default_factory=dict)
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProtocolOptions:
    """The protocol files and settings of one build (or one split manifest)."""

    pins_splits: str | Path | None = None  # Learnable PINs identity_splits.txt
    splits: str | Path | None = None  # custom: a CSV identity,split; fame: the folder of LANG_train.txt
    languages: tuple[str, ...] = ()  # fame: (heard, unheard)
    seed: int = 0
    seen_heard_fraction: float = 0.1


OPTION_FLAGS = {"pins_splits": "--pins-splits", "splits": "--splits", "languages": "--languages"}


class Corpus:
    """Base of every corpus recipe. Subclasses set the class attributes and override what their
    layout and protocols need; the defaults are VoxCeleb's (identity folders named by id or name,
    the folder holding a file is its source video)."""

    name: str = ""
    title: str = ""  # one line: what the corpus is
    meta_help: str = ""  # what --meta is for this corpus
    layouts: dict[str, str] = {}  # --audio / --faces / --videos -> the layout under that root
    protocols: dict[str, Protocol] = {}
    default_protocol: str = ""
    meta_in_roots: bool = False  # the meta file lists the media itself (csv): no --audio/--faces/--videos

    # ------------------------------------------------------------ protocols

    def protocol(self, name: str | None) -> Protocol:
        """The protocol ``name`` (None: the corpus's default), or a one-line CorpusError."""
        name = name or self.default_protocol
        if name not in self.protocols:
            raise CorpusError(
                f"--protocol {name}: not a protocol of corpus {self.name}; "
                f"choose from {', '.join(self.protocols)}"
            )
        return self.protocols[name]

    def check_options(self, protocol: Protocol, options: ProtocolOptions) -> None:
        """A one-line CorpusError for an option the protocol needs and was not given, or one it
        does not use (a file given for nothing is a mistake worth a line, not silence)."""
        given = {
            "pins_splits": options.pins_splits is not None,
            "splits": options.splits is not None,
            "languages": bool(options.languages),
        }
        for need in protocol.needs:
            if not given[need]:
                raise CorpusError(f"--protocol {protocol.name} needs {OPTION_FLAGS[need]}")
        for opt, is_given in given.items():
            if is_given and opt not in protocol.needs:
                raise CorpusError(
                    f"{OPTION_FLAGS[opt]} is not used by --protocol {protocol.name} of corpus {self.name}"
                )

    # ------------------------------------------------------------ meta and layout

    def read_meta(self, path):  # -> pd.DataFrame
        raise NotImplementedError

    def identity_index(self, meta):
        """Resolves a folder name or file stem to (name, vox_id)."""
        from avdata.ingest import IdentityIndex

        return IdentityIndex(meta)

    def file_fields(self, below: tuple[str, ...], modality: str) -> dict | str:
        """What a file's path below its identity folder says: ``{"source_id", "language"}``, or
        a reason (str) why the file is not in the corpus's layout. VoxCeleb's rule: the folder
        holding the file is its source video (``YTID`` in ``idNNNNN/YTID/NNNNN.wav``,
        ``NAME/YTID/NNNNNNN.jpg`` and ``NAME/1.6/YTID/NNNNNNN.jpg``); a file directly in the
        identity folder (or a flat ``NAME.wav``) is its own source."""
        from avdata.ingest import flat_source_id

        if len(below) >= 2:
            return {"source_id": below[-2], "language": ""}
        return {"source_id": flat_source_id(below[0], modality), "language": ""}

    def scan(self, meta, audio=None, faces=None, videos=None, meta_path=None):
        """One sorted media table of every root (:class:`avdata.ingest.ScanResult`); ``meta_path``
        is for a corpus whose meta file lists the media (csv)."""
        from avdata.ingest import scan_all

        return scan_all(meta, audio=audio, faces=faces, videos=videos, corpus=self)

    def attributes(self, meta):
        """Identity attributes written beside the identity split (SHARDS/splits.csv), the
        constraints of make-tuples --constrain: ``vox_id, gender, nationality``."""
        return meta[["vox_id", "gender", "nationality"]]

    # ------------------------------------------------------------ splits

    def identity_splits(self, meta, protocol: str, options: ProtocolOptions):
        """``name, vox_id, split`` for every identity the protocol places; the others listed in
        ``df.attrs['unplaced']`` as (name, reason) pairs."""
        from avdata import splits

        proto = self.protocol(protocol)
        self.check_options(proto, options)
        if proto.name == "custom":
            return splits.custom_identity_splits(meta, options.splits)
        raise CorpusError(f"corpus {self.name} does not implement protocol {proto.name}")  # a bug

    def assign_media_splits(self, media, identity_splits, protocol: str, options: ProtocolOptions):
        """The media table with a ``split`` column (None: not placed) and ``unplaced`` (why not,
        where a protocol knows better than "identity not placed")."""
        from avdata import splits

        return splits.assign_media_splits(
            media, identity_splits, self.protocol(protocol).name, options.seed, options.seen_heard_fraction
        )

    def split_rule(self, protocol: str, options: ProtocolOptions) -> str:
        """The rule as it is applied now, for the identity-split manifest (a changed rule changes
        the manifest)."""
        proto = self.protocol(protocol)
        if proto.name == "custom":
            return "custom: identity,split rows of the --splits file (identity by id or name)"
        return f"{proto.name}: {proto.help}"

    def protocol_inputs(self, protocol: str, options: ProtocolOptions) -> dict:
        """sha256 of the protocol files a build read beyond the meta and PINs files (recorded in
        the shard manifest's inputs only when there are any, so older manifests stay as they were)."""
        from avdata.io import sha256_file

        if options.splits is not None and Path(options.splits).is_file():
            return {"splits_sha256": sha256_file(options.splits)}
        return {}


def media_split_names(protocol: Protocol, identity_split_names) -> list[str]:
    """The media splits a build makes from identity splits ``identity_split_names``: each identity
    split that keeps its media, and each split cut from one that is present (sorted)."""
    present = set(identity_split_names)
    carved_whole = {i for m, i in protocol.identity_split_of.items() if m != i} - set(protocol.splits)
    out = {s for s in present if s not in carved_whole}
    out |= {m for m, i in protocol.identity_split_of.items() if i in present}
    return sorted(out)


def meta_rows(path: Path, columns, *, exact_width: bool = False, **read_kw):
    """The data rows of a corpus meta file with their line numbers: (column index by name,
    [(lineno, row)], problems). A missing file, an empty file, a wrong header or a missing column
    is one InputError; a row with too few fields (``exact_width``: other than the header's) is one
    InputError in ``problems`` and left out, so the good rows are kept."""
    from avdata.errors import InputError
    from avdata.splits import header_columns, read_table

    rows = read_table(path, "meta file", **read_kw)
    if not rows:
        raise InputError(path, "empty meta file")
    cols = header_columns(path, rows[0], columns, "meta file")
    good, problems = [], []
    for lineno, row in enumerate(rows[1:], 2):
        short = len(row) != len(rows[0]) if exact_width else len(row) <= max(cols.values())
        if short:
            problems.append(
                InputError(path, f"row {lineno}: {len(row)} fields, the header has {len(rows[0])}")
            )
        else:
            good.append((lineno, row))
    return cols, good, problems


def meta_frame(path: Path, good, problems: list, parse, unique, columns):
    """The meta frame of the rows :func:`meta_rows` kept, sorted by ``vox_id``: ``parse(row)`` gives
    (record, None) or (None, why the row is bad); ``unique`` = [(index into the record, label
    format)] of the fields no two rows may share ("identity {}", "name {!r}"). A bad or repeated
    row is one InputError in ``attrs['problems']`` (after ``problems``) and the good rows are kept."""
    import pandas as pd

    from avdata.errors import InputError

    out, seen = [], {}
    for lineno, row in good:
        record, why = parse(row)
        if why is None:
            why = next(
                (
                    f"{label.format(record[i])} repeats row {seen[(i, record[i])]}"
                    for i, label in unique
                    if (i, record[i]) in seen
                ),
                None,
            )
        if why:
            problems.append(InputError(path, f"row {lineno}: {why}; row skipped"))
            continue
        seen.update({(i, record[i]): lineno for i, _ in unique})
        out.append(record)
    df = pd.DataFrame(out, columns=columns).sort_values("vox_id").reset_index(drop=True)
    df.attrs["problems"] = problems
    return df
