"""MAV-Celeb, the corpus of the FAME challenge (face-voice association in multilingual
environments): v1 English/Urdu, v2 English/Hindi, v3 English/German.

As the challenge's baseline repository (github.com/mavceleb/mavceleb_baseline) and evaluation
plan describe it:

* meta: ``vN_meta.csv`` (``ids,name,gender``: ``id0001,Abhishek Bachchan,Male``); further columns
  are ignored;
* the training release: ``voices/idNNNN/LANGUAGE/VIDEO/NNNNN.wav`` and
  ``faces/idNNNN/LANGUAGE/VIDEO/NNNNNNN.jpg`` (give ``--audio voices --faces faces``): every file
  carries its language and its source video in its path;
* the split lists: ``LANGUAGE_train.txt`` (a training pair per line,
  ``idNNNN/LANGUAGE/VIDEO/NNNNN.wav idNNNN/LANGUAGE/VIDEO/NNNNNNN.jpg``) and ``LANGUAGE_test.txt``
  (``ID voices/LANGUAGE/NNNNN.wav faces/LANGUAGE/NNNNN.jpg``: the unlabelled test pairs, whose
  files sit in ``voices/LANGUAGE/`` and ``faces/LANGUAGE/`` beside the identity folders). The
  test identities are hidden: score those lists with ``avtrain score --pairs LANGUAGE_test.txt``;
  ``build-shards`` skips the ``LANGUAGE`` folders (one line each) and builds the labelled part.

Protocols:

* ``fame`` (``--languages HEARD,UNHEARD``): train on one language, test on disjoint identities
  in the heard and in the unheard language. Train identities are those of ``HEARD_train.txt``
  in the ``--splits`` folder (without it: a seeded identity-disjoint split, 0.9 train / 0.1 test,
  about FAME's own 64 / 6 of v1); their ``HEARD`` files go to ``train`` (their ``UNHEARD`` files
  are left out); the other identities' files go to ``heard`` or ``unheard`` by language. A file
  in a third language is left out with one line naming it.
* ``custom``: a CSV ``identity,split`` (``--splits``).
"""

from __future__ import annotations

import re
from pathlib import Path

from avdata.corpora.base import Corpus, CorpusError, Protocol, ProtocolOptions, meta_frame, meta_rows
from avdata.corpora.voxceleb1 import CUSTOM

META_COLUMNS = ["ids", "name", "gender"]
FAME_FRACTIONS = {"train": 0.9, "test": 0.1}
_MAV_ID = re.compile(r"^id\d+$")

FAME = Protocol(
    "fame",
    "train on the heard language (--languages HEARD,UNHEARD), test disjoint identities in both",
    ("train", "heard", "unheard"),
    {"heard": "test", "unheard": "test"},
    ("languages",),
)


def read_meta(path: str | Path):
    """``vox_id, name, gender, nationality, set`` (vox_id = ids, nationality and set empty) from a
    MAV-Celeb meta file, sorted by vox_id. A wrong header or a missing column is one InputError; a
    bad row (too few fields, an id that is not idNNNN, an id or name seen before) is one line in
    ``attrs['problems']`` and the good rows are kept."""

    path = Path(path)
    cols, good, problems = meta_rows(path, META_COLUMNS)

    def parse(row):
        ident, name, gender = (row[cols[c]] for c in META_COLUMNS)
        if not _MAV_ID.match(ident):
            return None, f"id {ident!r} is not idNNNN"
        if not name:
            return None, "empty name"
        return (ident, name, gender, "", ""), None

    unique = [(0, "identity {}"), (1, "name {!r}")]
    return meta_frame(path, good, problems, parse, unique, ["vox_id", "name", "gender", "nationality", "set"])


def fame_train_identities(lists: Path, language: str, meta) -> tuple[set[str], list[str]]:
    """The identities of ``LISTS/LANGUAGE_train.txt`` and one problem line per bad row (a row that
    is not one or more paths ``idNNNN/LANGUAGE/...``, an unknown identity, another language)."""
    from avdata.errors import InputError

    path = Path(lists) / f"{language}_train.txt"
    if not Path(lists).is_dir():
        raise InputError(lists, "not a folder of FAME split lists (LANGUAGE_train.txt)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(
            path, f"missing: the fame protocol's --splits folder needs {language}_train.txt"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read the split list ({exc})") from None
    known = set(meta["vox_id"])
    train, problems = set(), []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        parts = [f.split("/") for f in fields]
        if any(len(p) < 3 or not _MAV_ID.match(p[0]) for p in parts) or len({p[0] for p in parts}) != 1:
            problems.append(
                InputError(
                    path,
                    f"row {lineno}: expected 'idNNNN/{language}/VIDEO/NNNNN.wav idNNNN/{language}/VIDEO/"
                    f"NNNNNNN.jpg', got {line.strip()[:80]!r}",
                )
            )
            continue
        ident, lang = parts[0][0], parts[0][1]
        if lang != language or any(p[1] != language for p in parts):
            problems.append(
                InputError(path, f"row {lineno}: language {lang!r} in a list of {language}; row skipped")
            )
        elif ident not in known:
            problems.append(
                InputError(path, f"row {lineno}: unknown identity {ident!r} (not in the meta file)")
            )
        else:
            train.add(ident)
    return train, problems


class FameCorpus(Corpus):
    """A corpus whose files carry a language, with FAME's heard/unheard protocol."""

    def fame_identity_splits(self, meta, options: ProtocolOptions):
        """train / test identities: from the FAME lists when given, else seeded 0.9 / 0.1."""
        from avdata.splits import _splits_frame, seeded_identity_splits

        if options.splits is None:
            return seeded_identity_splits(meta, options.seed, FAME_FRACTIONS)
        train, problems = fame_train_identities(Path(options.splits), options.languages[0], meta)
        rows = [(n, v, "train" if v in train else "test") for n, v in zip(meta["name"], meta["vox_id"])]
        return _splits_frame(rows, [], problems)

    def check_languages(self, options: ProtocolOptions) -> tuple[str, str]:
        langs = options.languages
        if len(langs) != 2 or langs[0] == langs[1] or not all(langs):
            raise CorpusError(
                f"--languages: two different languages HEARD,UNHEARD (e.g. English,Urdu), got {','.join(langs)!r}"
            )
        return langs[0], langs[1]

    def assign_media_splits(self, media, identity_splits, protocol: str, options: ProtocolOptions):
        from avdata.splits import fame_media_splits

        if self.protocol(protocol).name == "fame":
            heard, unheard = self.check_languages(options)
            return fame_media_splits(media, identity_splits, heard, unheard)
        return super().assign_media_splits(media, identity_splits, protocol, options)


class MavCeleb(FameCorpus):
    name = "mavceleb"
    title = "MAV-Celeb (FAME challenge): voices and faces in two languages per identity"
    meta_help = "vN_meta.csv (ids,name,gender)"
    layouts = {
        "audio": "voices/idNNNN/LANGUAGE/VIDEO/NNNNN.wav (give the voices folder)",
        "faces": "faces/idNNNN/LANGUAGE/VIDEO/NNNNNNN.jpg (give the faces folder)",
    }
    protocols = {"fame": FAME, "custom": CUSTOM}
    default_protocol = "fame"

    def read_meta(self, path):
        return read_meta(path)

    def identity_index(self, meta):
        from avdata.ingest import IdentityIndex

        class Index(IdentityIndex):
            def unknown(self, token: str, files: int | None = None) -> str:
                if not _MAV_ID.match(token):  # FAME's test folders voices/English/, faces/Urdu/
                    return (
                        f"{token!r} is not an identity folder idNNNN ({files or 0} files skipped): FAME's "
                        f"unlabelled test files are scored with avtrain score --pairs {token}_test.txt"
                    )
                return super().unknown(token, files)

        return Index(meta, any_id=True)

    def file_fields(self, below: tuple[str, ...], modality: str) -> dict | str:
        if len(below) != 3:
            return "not in the MAV-Celeb layout idNNNN/LANGUAGE/VIDEO/FILE"
        return {"source_id": below[1], "language": below[0]}

    def identity_splits(self, meta, protocol: str, options: ProtocolOptions):
        proto = self.protocol(protocol)
        self.check_options(proto, options)
        if proto.name == "fame":
            self.check_languages(options)
            return self.fame_identity_splits(meta, options)
        return super().identity_splits(meta, protocol, options)

    def check_options(self, protocol: Protocol, options: ProtocolOptions) -> None:
        if protocol.name == "fame":  # --splits (the lists folder) is optional for fame
            options = ProtocolOptions(languages=options.languages)
        super().check_options(protocol, options)

    def split_rule(self, protocol: str, options: ProtocolOptions) -> str:
        if self.protocol(protocol).name == "fame":
            heard, unheard = self.check_languages(options)
            who = (
                f"train identities from {heard}_train.txt"
                if options.splits is not None
                else "seeded identity split train 0.9 / test 0.1"
            )
            return (
                f"fame: {who}; train: their {heard} files; heard / unheard: the test identities' "
                f"{heard} / {unheard} files"
            )
        return super().split_rule(protocol, options)

    def protocol_inputs(self, protocol: str, options: ProtocolOptions) -> dict:
        from avdata.io import sha256_file

        if self.protocol(protocol).name == "fame" and options.splits is not None:
            heard = options.languages[0]
            return {"splits_sha256": sha256_file(Path(options.splits) / f"{heard}_train.txt")}
        return super().protocol_inputs(protocol, options)


MAVCELEB = MavCeleb()
