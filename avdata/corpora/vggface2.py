"""VGGFace2 face photos on their own (with VoxCeleb2 voices: ``--corpus voxceleb2``, which joins
the two by the VGGFace2 id).

Meta: ``identity_meta.csv``, comma separated, every column name but the first after a space
(``Class_ID, Name, Sample_Num, Flag, Gender``), names in double quotes:
``n000002, "A_Fine_Frenzy", 315, 1, f``. Flag 1: the identity is in the training release
(``train/``), 0: in the test release (``test/``).

Layout: faces ``nNNNNNN/NNNN_NN.jpg`` (give ``--faces vggface2/train``, or a folder holding both
releases' identity folders). ``NNNN`` numbers the photo and ``NN`` the face in it: the photo is
the file's source (two faces cut from one photo share it).

Protocols: ``sets`` (Flag 1 -> ``train``, 0 -> ``test``), ``custom`` (a CSV ``identity,split``).
"""

from __future__ import annotations

import re
from pathlib import Path

from avdata.corpora.base import Corpus, Protocol, ProtocolOptions, meta_frame, meta_rows
from avdata.corpora.voxceleb1 import CUSTOM

META_COLUMNS = ["Class_ID", "Name", "Sample_Num", "Flag", "Gender"]
FLAG_TO_SPLIT = {"1": "train", "0": "test"}
_CLASS_ID = re.compile(r"^n\d+$")


def photo_source(file_name: str) -> str:
    """The photo a VGGFace2 face comes from: ``0001`` of ``0001_01.jpg`` (the stem otherwise)."""
    stem = Path(file_name).stem
    photo, sep, face = stem.rpartition("_")
    return photo if sep and photo and face.isdigit() else stem


def read_meta(path: str | Path):
    """``vox_id, name, gender, nationality, set`` (vox_id = Class_ID, set = train|test from Flag)
    from ``identity_meta.csv``, sorted by vox_id. A wrong header or a missing column is one
    InputError; a bad row (too few fields, a Class_ID that is not nNNNNNN, a Flag other than 0/1,
    an id or name seen before) is one line in ``attrs['problems']`` and the good rows are kept."""

    path = Path(path)
    cols, good, problems = meta_rows(path, META_COLUMNS, skipinitialspace=True)

    def parse(row):
        class_id, name, flag, gender = (row[cols[c]] for c in ("Class_ID", "Name", "Flag", "Gender"))
        if not _CLASS_ID.match(class_id):
            return None, f"Class_ID {class_id!r} is not nNNNNNN"
        if flag not in FLAG_TO_SPLIT:
            return None, f"Flag {flag!r} is not 0 or 1"
        if not name:
            return None, "empty Name"
        return (class_id, name, gender, "", FLAG_TO_SPLIT[flag]), None

    unique = [(0, "identity {}"), (1, "name {!r}")]
    return meta_frame(path, good, problems, parse, unique, ["vox_id", "name", "gender", "nationality", "set"])


class VGGFace2(Corpus):
    name = "vggface2"
    title = "VGGFace2 face photos (faces only; with voices use --corpus voxceleb2)"
    meta_help = "identity_meta.csv (Class_ID, Name, Sample_Num, Flag, Gender)"
    layouts = {"faces": "nNNNNNN/NNNN_NN.jpg (give vggface2/train or a folder of both releases)"}
    protocols = {
        "sets": Protocol("sets", "identity_meta.csv Flag: 1 -> train, 0 -> test", ("train", "test")),
        "custom": CUSTOM,
    }
    default_protocol = "sets"

    def read_meta(self, path):
        return read_meta(path)

    def identity_index(self, meta):
        from avdata.ingest import IdentityIndex

        return IdentityIndex(meta, any_id=True)

    def file_fields(self, below: tuple[str, ...], modality: str) -> dict | str:
        if len(below) != 1:
            return "not in the VGGFace2 layout nNNNNNN/NNNN_NN.jpg"
        return {"source_id": photo_source(below[0]), "language": ""}

    def identity_splits(self, meta, protocol: str, options: ProtocolOptions):
        from avdata.corpora.voxceleb2 import sets_identity_splits

        proto = self.protocol(protocol)
        self.check_options(proto, options)
        if proto.name == "sets":
            return sets_identity_splits(meta, {"train": "train", "test": "test"})
        return super().identity_splits(meta, protocol, options)

    def split_rule(self, protocol: str, options: ProtocolOptions) -> str:
        if self.protocol(protocol).name == "sets":
            return "sets: identity_meta.csv Flag " + ", ".join(f"{k} {v}" for k, v in FLAG_TO_SPLIT.items())
        return super().split_rule(protocol, options)


VGGFACE2 = VGGFace2()
