"""VoxCeleb2 (AAC audio, mp4 video), with VGGFace2 photos as its faces.

Meta: ``vox2_meta.csv``, comma separated with a space before every comma and after the last field
(its header reads ``VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set ``; a UTF-8 byte-order mark is
allowed): one row per identity, ``idNNNNN ,nNNNNNN ,m|f ,dev|test``. The VGGFace2 id is *not*
the VoxCeleb2 number (``id00134 ,n000140``): it is what joins the two corpora.

Layouts:

* audio  ``aac/idNNNNN/YTID/NNNNN.m4a`` (give ``--audio aac``; AAC in MP4, decoded by ffmpeg);
  ``wav`` trees of the same shape also work;
* videos ``mp4/idNNNNN/YTID/NNNNN.mp4`` (audio track and face frames);
* faces  VGGFace2 photos ``nNNNNNN/NNNN_NN.jpg`` (give ``--faces vggface2/train``): each folder is
  resolved to its VoxCeleb2 identity through the meta file's VGGFace2 ID column; VoxCeleb2's own
  face frames ``idNNNNN/YTID/*.jpg`` work too.

VoxCeleb2 has no names in its meta file: an identity's name is its VoxCeleb2 id.

Protocols:

* ``sets``: the meta file's Set column, ``dev`` -> ``train``, ``test`` -> ``test`` (5,994 / 118
  identities in the release);
* ``custom``: a CSV ``identity,split`` (``--splits``).
"""

from __future__ import annotations

import re
from pathlib import Path

from avdata.corpora.base import Corpus, Protocol, ProtocolOptions, meta_frame, meta_rows
from avdata.corpora.voxceleb1 import CUSTOM

META_COLUMNS = ["VoxCeleb2 ID", "VGGFace2 ID", "Gender", "Set"]
SET_TO_SPLIT = {"dev": "train", "test": "test"}
_VOX2_ID = re.compile(r"^id\d+$")
_VGGFACE2_ID = re.compile(r"^n\d+$")


def read_meta(path: str | Path):
    """``vox_id, name, gender, nationality, set, vggface2_id`` (name = the VoxCeleb2 id, nationality
    empty) from ``vox2_meta.csv``, sorted by vox_id. A wrong header or a missing column is one
    InputError; a bad row (a field count other than the header's, an id that is not idNNNNN, a
    VGGFace2 id that is not nNNNNNN, a Set other than dev/test, an id seen before) is one line in
    ``attrs['problems']`` and the good rows are kept."""

    path = Path(path)
    cols, good, problems = meta_rows(path, META_COLUMNS, exact_width=True)

    def parse(row):
        vox_id, vgg_id, gender, set_ = (row[cols[c]] for c in META_COLUMNS)
        if not _VOX2_ID.match(vox_id):
            return None, f"VoxCeleb2 ID {vox_id!r} is not idNNNNN"
        if not _VGGFACE2_ID.match(vgg_id):
            return None, f"VGGFace2 ID {vgg_id!r} is not nNNNNNN"
        if set_ not in SET_TO_SPLIT:
            return None, f"Set {set_!r} is not dev or test"
        return (vox_id, vox_id, gender, "", set_, vgg_id), None

    unique = [(0, "identity {}"), (5, "VGGFace2 ID {}")]
    columns = ["vox_id", "name", "gender", "nationality", "set", "vggface2_id"]
    return meta_frame(path, good, problems, parse, unique, columns)


def sets_identity_splits(meta, set_to_split: dict[str, str]):
    """Identity splits from a meta file's set column (VoxCeleb2's dev/test, VGGFace2's flag)."""
    from avdata.splits import _splits_frame

    rows = [(n, v, set_to_split[s]) for n, v, s in zip(meta["name"], meta["vox_id"], meta["set"])]
    return _splits_frame(rows, [], [])


class VoxCeleb2(Corpus):
    name = "voxceleb2"
    title = "VoxCeleb2 (AAC voices, mp4 videos) with VGGFace2 photos joined by the VGGFace2 id"
    meta_help = "vox2_meta.csv (VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set)"
    layouts = {
        "audio": "aac/idNNNNN/YTID/NNNNN.m4a (give the aac folder)",
        "faces": "VGGFace2 nNNNNNN/NNNN_NN.jpg (joined by the VGGFace2 id) or idNNNNN/YTID/*.jpg",
        "videos": "mp4/idNNNNN/YTID/NNNNN.mp4 (give the mp4 folder)",
    }
    protocols = {
        "sets": Protocol("sets", "the meta file's Set column: dev -> train, test -> test", ("train", "test")),
        "custom": CUSTOM,
    }
    default_protocol = "sets"

    def read_meta(self, path):
        return read_meta(path)

    def identity_index(self, meta):
        from avdata.ingest import IdentityIndex

        return IdentityIndex(meta, aliases=dict(zip(meta["vggface2_id"], meta["vox_id"])))

    def file_fields(self, below: tuple[str, ...], modality: str) -> dict | str:
        if len(below) == 1 and modality == "face":  # a VGGFace2 photo NNNN_NN.jpg
            from avdata.corpora.vggface2 import photo_source

            return {"source_id": photo_source(below[0]), "language": ""}
        return super().file_fields(below, modality)

    def identity_splits(self, meta, protocol: str, options: ProtocolOptions):
        proto = self.protocol(protocol)
        self.check_options(proto, options)
        if proto.name == "sets":
            return sets_identity_splits(meta, SET_TO_SPLIT)
        return super().identity_splits(meta, protocol, options)

    def split_rule(self, protocol: str, options: ProtocolOptions) -> str:
        if self.protocol(protocol).name == "sets":
            return "sets: vox2_meta.csv Set " + ", ".join(f"{k} {v}" for k, v in SET_TO_SPLIT.items())
        return super().split_rule(protocol, options)


VOXCELEB2 = VoxCeleb2()
