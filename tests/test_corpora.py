"""Corpus recipes (avdata/corpora/): the registry, each corpus's meta reader, layout and protocols,
end to end on synthetic trees in its layout (avdata synth --layout) and on AAC files made here
from the real wavs in ../shared; bad input is one line naming the file, row or identity."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import one_line_error

from avdata.cli import main
from avdata.corpora import CORPORA, ProtocolOptions, get_corpus, protocol_names
from avdata.corpora.voxceleb1 import WEN2021_COUNTS, read_meta
from avdata.errors import InputError
from avdata.ingest import scan_tree
from avdata.reader import index_items
from avdata.synth import synth_corpus

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VOX1_META = DATA / "protocols" / "voxceleb1" / "vox1_meta.csv"
TINY = dict(identities=6, clips_per_identity=2, faces_per_identity=1, seed=1)


def cli(*args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.output
    return res


def rejects(shards: Path) -> list[dict]:
    return [json.loads(line) for line in (shards / "rejects.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- the registry


def test_the_registry_owns_the_corpora_and_their_protocols():
    assert list(CORPORA) == ["voxceleb1", "voxceleb2", "vggface2", "mavceleb", "csv"]
    for corpus in CORPORA.values():
        assert corpus.default_protocol in corpus.protocols
        assert all(p in protocol_names() for p in corpus.protocols)
    assert set(protocol_names()) == {"matching", "wen2021", "pins", "custom", "sets", "fame", "csv-splits"}
    help_text = cli("build-shards", "--help").output
    assert "[matching|wen2021|pins|custom|sets|fame|csv-splits]" in "".join(help_text.split())
    res = cli("splits", "--meta", VOX1_META, "--protocol", "fame", "--out", "x.csv", ok=False)
    one_line_error(
        res, "--protocol fame: not a protocol of corpus voxceleb1", "matching, wen2021, pins, custom"
    )


# ---------------------------------------------------------------- voxceleb1


def test_voxceleb1_source_id_of_every_layout(tmp_path):
    """The source video is the folder holding the file, in every supported layout; before #23 the
    released face tree unzippedFaces/NAME/1.6/YTID/NNNNNNN.jpg gave every face source_id "1.6"."""
    meta = read_meta(VOX1_META)
    files = {
        "audio": ["id10001/Y8hIVOBuels/00001.wav", "A.J._Buckley/Y8hIVOBuels_0000001.wav", "Aamir_Khan.wav"],
        "face": [
            "A.J._Buckley/Y8hIVOBuels/0006000.jpg",  # VoxCeleb1 face frames
            "Aamir_Khan/1.6/J9lHsKG98U8/0001375.jpg",  # the released unzippedFaces tree
            "Aamir_Khan/1.6/J9lHsKG98U8/0001400.jpg",
            "Aamir_Khan/1.6/ZZVlE5WlaV4/0000125.jpg",
            "Aaron_Tveit/00000042.png",  # a VGGFace photo
        ],
        "video": ["id10003/J9lHsKG98U8/00002.mp4", "Aaron_Yoo/clip.mp4"],
    }
    want = {
        "id10001/Y8hIVOBuels/00001.wav": "Y8hIVOBuels",
        "A.J._Buckley/Y8hIVOBuels_0000001.wav": "Y8hIVOBuels",
        "Aamir_Khan.wav": "Aamir_Khan",
        "A.J._Buckley/Y8hIVOBuels/0006000.jpg": "Y8hIVOBuels",
        "Aamir_Khan/1.6/J9lHsKG98U8/0001375.jpg": "J9lHsKG98U8",
        "Aamir_Khan/1.6/J9lHsKG98U8/0001400.jpg": "J9lHsKG98U8",
        "Aamir_Khan/1.6/ZZVlE5WlaV4/0000125.jpg": "ZZVlE5WlaV4",
        "Aaron_Tveit/00000042.png": "00000042",
        "id10003/J9lHsKG98U8/00002.mp4": "J9lHsKG98U8",
        "Aaron_Yoo/clip.mp4": "clip",
    }
    got = {}
    for modality, rels in files.items():
        root = tmp_path / modality
        for rel in rels:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"x")
        res = scan_tree(root, meta, modality)
        assert res.problems == []
        got |= dict(zip(res.media["rel_path"], res.media["source_id"]))
    assert got == want


def test_wen2021_is_the_name_initial_split_of_their_lists():
    """Wen et al. 2021's repository lists 942 / 116 / 193 identities in vox1_train/val/test.csv:
    id10001-id10116 (A-B), id10117-id10309 (C-E), id10310-id11251 (F-Z)."""
    c = get_corpus("voxceleb1")
    df = c.identity_splits(read_meta(VOX1_META), "wen2021", ProtocolOptions())
    assert df["split"].value_counts().to_dict() == WEN2021_COUNTS
    ranges = {s: (g["vox_id"].min(), g["vox_id"].max()) for s, g in df.groupby("split")}
    assert ranges == {
        "val": ("id10001", "id10116"),
        "test": ("id10117", "id10309"),
        "train": ("id10310", "id11251"),
    }
    matching = c.identity_splits(read_meta(VOX1_META), "matching", ProtocolOptions())
    pd.testing.assert_frame_equal(df, matching)


def test_custom_split_file_keeps_good_rows(tmp_path):
    splits = tmp_path / "splits.csv"
    splits.write_text(
        "identity,split\nA.J._Buckley,train\nid10002,test\nNobody_Here,train\nid10003,bad-name\n"
        "A.J._Buckley,test\n"
    )
    res = cli(
        "splits", "--meta", VOX1_META, "--protocol", "custom", "--splits", splits, "--out", tmp_path / "o.csv"
    )
    out = pd.read_csv(tmp_path / "o.csv")
    assert out[["vox_id", "split"]].values.tolist() == [["id10001", "train"], ["id10002", "test"]]
    assert f"{splits}: row 4: unknown identity 'Nobody_Here' (not in the meta file)" in res.output
    assert f"{splits}: row 5: split 'bad-name' is not a name of [A-Za-z0-9_] characters" in res.output
    assert f"{splits}: row 6: identity 'A.J._Buckley' is already in split 'train'; row skipped" in res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("who,where\nA.J._Buckley,train\n")
    res = cli(
        "splits",
        "--meta",
        VOX1_META,
        "--protocol",
        "custom",
        "--splits",
        bad,
        "--out",
        tmp_path / "o2",
        ok=False,
    )
    one_line_error(res, str(bad), "lacks the column(s) identity, split; its header is who, where")
    res = cli("splits", "--meta", VOX1_META, "--protocol", "custom", "--out", tmp_path / "o3", ok=False)
    one_line_error(res, "--protocol custom needs --splits")


# ---------------------------------------------------------------- voxceleb2 (+ VGGFace2 faces)


def test_vox2_meta_header_with_trailing_spaces_and_bad_rows(tmp_path):
    meta = tmp_path / "vox2_meta.csv"
    meta.write_text(
        "\ufeffVoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set \n"
        "id00012 ,n000012 ,m ,dev \n"
        "id00134 ,n000140 ,f ,test \n"
        "id00135 ,n000135 ,m \n"  # a field short
        "x00136 ,n000136 ,m ,dev \n"
        "id00137 ,n000137 ,m ,train \n"
        "id00012 ,n000999 ,m ,dev \n"
    )
    df = get_corpus("voxceleb2").read_meta(meta)
    assert df[["vox_id", "vggface2_id", "gender", "set"]].values.tolist() == [
        ["id00012", "n000012", "m", "dev"],
        ["id00134", "n000140", "f", "test"],
    ]
    assert [str(p) for p in df.attrs["problems"]] == [
        f"{meta}: row 4: 3 fields, the header has 4",
        f"{meta}: row 5: VoxCeleb2 ID 'x00136' is not idNNNNN; row skipped",
        f"{meta}: row 6: Set 'train' is not dev or test; row skipped",
        f"{meta}: row 7: identity id00012 repeats row 2; row skipped",
    ]
    meta.write_text("VoxCeleb2 ID ,Gender ,Set \nid00012 ,m ,dev \n")
    with pytest.raises(
        InputError, match="lacks the column.s. VGGFace2 ID; its header is VoxCeleb2 ID, Gender, Set"
    ):
        get_corpus("voxceleb2").read_meta(meta)


@pytest.fixture(scope="module")
def vox2_real(tmp_path_factory, real_wavs, real_photos):
    """VoxCeleb2's layout from real media: each real wav encoded to AAC in MP4 here (imageio-ffmpeg),
    aac/idNNNNN/YTID/00001.m4a, and the real photos as VGGFace2's nNNNNNN/0001_01.jpg of the same
    identities, joined to them only through vox2_meta.csv's VGGFace2 ID column."""
    from avdata.synth.layouts import encode_m4a

    root = tmp_path_factory.mktemp("vox2_real")
    rows = ["VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set "]
    for i, wav in enumerate(real_wavs[:4]):
        vox_id, vgg_id = f"id{i + 1:05d}", f"n{i + 501:06d}"  # the numbers differ, as in the release
        encode_m4a(wav, root / "aac" / vox_id / f"yt{i:09d}" / "00001.m4a")
        photo = root / "vggface2" / vgg_id / "0001_01.jpg"
        photo.parent.mkdir(parents=True)
        shutil.copy(real_photos[i], photo)
        rows.append(f"{vox_id} ,{vgg_id} ,m ,{'test' if i >= 2 else 'dev'} ")
    (root / "vox2_meta.csv").write_text("\n".join(rows) + "\n")
    return root


def test_voxceleb2_builds_m4a_voices_and_joins_vggface2_faces(
    vox2_real, real_wavs, tmp_path, one_torch_thread
):
    from avdata.audio import spectrogram
    from avdata.media import decode_audio
    from avdata.reader import iter_tar_samples

    r = vox2_real
    out = tmp_path / "shards"
    res = cli(
        "build-shards",
        "--corpus",
        "voxceleb2",
        "--audio",
        r / "aac",
        "--faces",
        r / "vggface2",
        "--meta",
        r / "vox2_meta.csv",
        "--out",
        out,
        "--no-progress",
    )
    assert "test: 2 identities, 2 audio, 2 face samples" in res.output
    assert "train: 2 identities, 2 audio, 2 face samples" in res.output
    items = index_items(out)
    faces = items[items.modality == "face"]
    assert sorted(faces["vox_id"]) == [
        "id00001",
        "id00002",
        "id00003",
        "id00004",
    ]  # joined by the VGGFace2 id
    assert set(faces["source_id"]) == {"0001"}  # the photo of face 01
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["corpus"] == "voxceleb2" and manifest["config"]["protocol"] == "sets"
    # the m4a spectrogram is the wav's, up to AAC's losses
    audio = items[(items.modality == "audio") & (items.vox_id == "id00001")].iloc[0]
    sample = next(s for s in iter_tar_samples(out / audio.tar) if s["__key__"] == audio.key)
    from_m4a = np.load(__import__("io").BytesIO(sample["npy"]), allow_pickle=False)
    from_wav = spectrogram(decode_audio(real_wavs[0]), 16000)
    assert from_m4a.shape == from_wav.shape == (224, 125)
    assert np.corrcoef(from_m4a.ravel(), from_wav.ravel())[0, 1] > 0.95


def test_synthetic_voxceleb2_layout_end_to_end(tmp_path, one_torch_thread):
    corpus = tmp_path / "vox2"
    synth_corpus(corpus, **TINY, layout="voxceleb2")
    assert (corpus / "vox2_meta.csv").read_text().splitlines()[0] == "VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set "
    assert (
        sorted(p.suffix for p in corpus.rglob("*.*") if p.parent.parent.parent.name == "aac") == [".m4a"] * 12
    )
    out = tmp_path / "shards"
    cli(
        "build-shards",
        "--corpus",
        "voxceleb2",
        "--audio",
        corpus / "aac",
        "--faces",
        corpus / "vggface2",
        "--meta",
        corpus / "vox2_meta.csv",
        "--out",
        out,
        "--no-progress",
    )
    splits = pd.read_csv(out / "splits.csv")
    assert splits["split"].value_counts().to_dict() == {"train": 5, "test": 1}
    items = index_items(out)
    assert set(items[items.modality == "audio"]["vox_id"]) == set(splits["vox_id"])
    res = cli(
        *[
            "make-tuples",
            "--shards",
            out,
            "--task",
            "verification",
            "--split",
            "train",
            "--out",
            tmp_path / "t",
        ]
    )
    assert "all tuple checks passed" in res.output


# ---------------------------------------------------------------- vggface2


def test_vggface2_meta_scan_and_sets(tmp_path):
    meta = tmp_path / "identity_meta.csv"
    meta.write_text(
        "Class_ID, Name, Sample_Num, Flag, Gender\n"
        'n000001, "14th_Dalai_Lama", 424, 0, m\n'
        'n000002, "A_Fine_Frenzy", 315, 1, f\n'
        'n000003, "A._A._Gill", 205, 1, m,\n'  # a trailing comma, as some copies have
        'x000004, "Bad_Id", 1, 1, m\n'
        'n000005, "Bad_Flag", 1, 2, f\n'
    )
    c = get_corpus("vggface2")
    df = c.read_meta(meta)
    assert df[["vox_id", "name", "set"]].values.tolist() == [
        ["n000001", "14th_Dalai_Lama", "test"],
        ["n000002", "A_Fine_Frenzy", "train"],
        ["n000003", "A._A._Gill", "train"],
    ]
    assert [p.reason for p in df.attrs["problems"]] == [
        "row 5: Class_ID 'x000004' is not nNNNNNN; row skipped",
        "row 6: Flag '2' is not 0 or 1; row skipped",
    ]
    for rel in (
        "n000002/0001_01.jpg",
        "n000002/0001_02.jpg",
        "n000002/0007_01.jpg",
        "n000003/deep/0001_01.jpg",
    ):
        (tmp_path / "faces" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "faces" / rel).write_bytes(b"x")
    res = c.scan(df, faces=tmp_path / "faces")
    assert dict(zip(res.media["rel_path"], res.media["source_id"])) == {
        "n000002/0001_01.jpg": "0001",  # two faces cut from one photo share it
        "n000002/0001_02.jpg": "0001",
        "n000002/0007_01.jpg": "0007",
    }
    assert res.problems[0]["reason"] == "not in the VGGFace2 layout nNNNNNN/NNNN_NN.jpg"
    splits = c.identity_splits(df, "sets", ProtocolOptions())
    assert dict(zip(splits["vox_id"], splits["split"])) == {
        "n000001": "test",
        "n000002": "train",
        "n000003": "train",
    }


# ---------------------------------------------------------------- mavceleb (FAME)


@pytest.fixture(scope="module")
def mav(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("mav") / "corpus"
    synth_corpus(corpus, identities=8, clips_per_identity=2, faces_per_identity=2, seed=1, layout="mavceleb")
    return corpus


def build_fame(mav, out, *extra, ok=True):
    return cli(
        "build-shards",
        "--corpus",
        "mavceleb",
        "--audio",
        mav / "voices",
        "--faces",
        mav / "faces",
        "--meta",
        mav / "v1_meta.csv",
        "--languages",
        "English,Urdu",
        "--out",
        out,
        "--no-progress",
        *extra,
        ok=ok,
    )


def test_fame_protocol_heard_and_unheard(mav, tmp_path, one_torch_thread):
    out = tmp_path / "shards"
    build_fame(mav, out, "--splits", mav / "lists")
    train_ids = {
        line.split("/")[0] for line in (mav / "lists" / "English_train.txt").read_text().splitlines()
    }
    splits = pd.read_csv(out / "splits.csv")
    assert set(splits.loc[splits.split == "train", "vox_id"]) == train_ids
    test_ids = set(splits.loc[splits.split == "test", "vox_id"])
    assert test_ids and not test_ids & train_ids
    items = index_items(out)
    lang = items["source"].str.split("/").str[1]
    assert set(lang[items.split == "train"]) == {"English"}  # train on the heard language only
    assert set(lang[items.split == "heard"]) == {"English"} and set(lang[items.split == "unheard"]) == {
        "Urdu"
    }
    assert set(items.loc[items.split.isin(["heard", "unheard"]), "vox_id"]) <= test_ids
    reasons = [r["reason"] for r in rejects(out)]
    assert any(r.startswith("'English' is not an identity folder idNNNN") for r in reasons)
    assert any(
        r == "Urdu file of a train identity: the fame protocol trains on English only" for r in reasons
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["languages"] == ["English", "Urdu"]
    assert sorted(manifest["splits"]) == ["heard", "train", "unheard"]
    assert manifest["splits"]["heard"]["identities"] == len(test_ids)
    assert "splits_sha256" in manifest["inputs"]
    res = cli(
        "make-tuples",
        "--shards",
        out,
        "--task",
        "verification",
        "--split",
        "heard",
        "--split",
        "unheard",
        "--out",
        tmp_path / "t",
    )
    assert "all tuple checks passed" in res.output
    # the manifest of shards whose splits are cut inside identities still verifies
    assert "identical" in cli("manifest", "verify", out, "--against", out / "manifest.json").output


def test_fame_bad_input_is_one_line_each(mav, tmp_path, one_torch_thread):
    tree = tmp_path / "mav"
    shutil.copytree(mav, tree)
    hindi = tree / "voices" / "id0007" / "Hindi" / "vid00000001" / "00001.wav"
    hindi.parent.mkdir(parents=True)
    shutil.copy(next((tree / "voices" / "id0007").rglob("*.wav")), hindi)
    lists = tree / "lists" / "English_train.txt"
    lists.write_text(
        lists.read_text() + "id0099/English/v/00001.wav id0099/English/v/0000001.jpg\nnot a path\n"
    )
    n = len(lists.read_text().splitlines())
    out = tmp_path / "shards"
    res = build_fame(tree, out, "--splits", tree / "lists")
    assert f"{lists}: row {n - 1}: unknown identity 'id0099' (not in the meta file)" in res.output
    assert f"{lists}: row {n}: expected 'idNNNN/English/VIDEO/NNNNN.wav" in res.output
    recs = rejects(out)
    assert {
        "root": "audio",
        "source": "id0007/Hindi/vid00000001/00001.wav",
        "stage": "split",
        "reason": "language 'Hindi' is not in the fame protocol (--languages English,Urdu)",
    } in recs
    protocol_recs = [(r["root"], r["source"]) for r in recs if r["stage"] == "protocol"]
    assert protocol_recs == [("protocol", "English_train.txt")] * 2  # by the file's name, not its path
    assert pd.read_csv(out / "splits.csv")["split"].value_counts()["train"] >= 1  # the good rows were kept
    bad_meta = tmp_path / "meta.csv"
    bad_meta.write_text("ids,gender\nid0001,Male\n")
    res = cli(
        "build-shards",
        "--corpus",
        "mavceleb",
        "--audio",
        tree / "voices",
        "--meta",
        bad_meta,
        "--languages",
        "English,Urdu",
        "--out",
        tmp_path / "o2",
        ok=False,
    )
    one_line_error(res, str(bad_meta), "lacks the column(s) name; its header is ids, gender")
    res = cli(
        "build-shards",
        "--corpus",
        "mavceleb",
        "--audio",
        tree / "voices",
        "--meta",
        tree / "v1_meta.csv",
        "--out",
        tmp_path / "o4",
        ok=False,
    )
    one_line_error(res, "--protocol fame needs --languages")


def test_fame_without_lists_is_a_seeded_identity_split(mav, tmp_path):
    c = get_corpus("mavceleb")
    meta = c.read_meta(mav / "v1_meta.csv")
    options = ProtocolOptions(languages=("Urdu", "English"), seed=3)
    a, b = c.identity_splits(meta, "fame", options), c.identity_splits(meta, "fame", options)
    pd.testing.assert_frame_equal(a, b)
    assert a["split"].value_counts().to_dict() == {"train": 7, "test": 1}  # 0.9 / 0.1 of 8
    assert "seeded identity split train 0.9 / test 0.1" in c.split_rule("fame", options)


# ---------------------------------------------------------------- csv


@pytest.fixture(scope="module")
def csv_corpus(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("csv") / "corpus"
    synth_corpus(corpus, **TINY, layout="csv")
    return corpus


def test_csv_with_and_without_a_split_column(csv_corpus, tmp_path, one_torch_thread):
    table = pd.read_csv(csv_corpus / "corpus.csv")
    assert list(table.columns) == ["path", "identity", "modality", "gender", "nationality", "split"]
    out = tmp_path / "given"
    cli("build-shards", "--corpus", "csv", "--meta", csv_corpus / "corpus.csv", "--out", out, "--no-progress")
    splits = pd.read_csv(out / "splits.csv")
    want = table.drop_duplicates("identity").set_index("identity")["split"].to_dict()
    assert dict(zip(splits["vox_id"], splits["split"])) == want
    items = index_items(out)
    assert set(items["source_id"]) == {p.split("/")[2] for p in table["path"]}  # the folder holding the file

    seeded = csv_corpus / "no_split.csv"
    table.drop(columns="split").to_csv(seeded, index=False)
    res = cli(
        "splits",
        "--corpus",
        "csv",
        "--meta",
        seeded,
        "--protocol",
        "csv-splits",
        "--seed",
        "5",
        "--out",
        tmp_path / "s.csv",
    )
    got = pd.read_csv(tmp_path / "s.csv")
    assert got["split"].value_counts().to_dict() == {"train": 4, "test": 1, "val": 1}  # 0.7 / 0.1 / 0.2 of 6
    again = cli(
        "splits",
        "--corpus",
        "csv",
        "--meta",
        seeded,
        "--protocol",
        "csv-splits",
        "--seed",
        "5",
        "--out",
        tmp_path / "s2.csv",
    )
    assert (tmp_path / "s.csv").read_bytes() == (
        tmp_path / "s2.csv"
    ).read_bytes() and res.output == again.output.replace("s2.csv", "s.csv")


def test_csv_bad_rows_are_one_line_each_and_the_rest_is_built(csv_corpus, tmp_path, one_torch_thread):
    lines = (csv_corpus / "corpus.csv").read_text().splitlines()
    ident = lines[1].split(",")[1]
    other_gender = "f" if lines[1].split(",")[3] == "m" else "m"
    bad = [
        "media/x.wav,someone,audio,m,UK",  # a field short
        f"media/{ident}/v/1.wav,{ident},smell,m,UK,train",
        "../outside.wav,someone,audio,m,UK,train",
        f"/abs/path.wav,{ident},audio,m,UK,train",
        lines[1].replace(f",{lines[1].split(',')[3]},", f",{other_gender},"),
        "media/missing/file.wav,ghost,audio,m,UK,train",
    ]
    csv = csv_corpus / "bad.csv"
    csv.write_text("\n".join(lines + bad) + "\n")
    n = len(lines)
    out = tmp_path / "shards"
    res = cli("build-shards", "--corpus", "csv", "--meta", csv, "--out", out, "--no-progress")
    assert f"{csv}: row {n + 1}: 5 fields, the header has 6; row skipped" in res.output
    assert f"{csv}: row {n + 2}: modality 'smell' is not audio, face or video; row skipped" in res.output
    assert (
        f"{csv}: row {n + 3}: path '../outside.wav': a '..' component leaves the CSV's folder; row skipped"
        in res.output
    )
    assert f"{csv}: row {n + 4}: path '/abs/path.wav': an absolute path" in res.output
    assert f"{csv}: row {n + 5}: gender '{other_gender}' of identity '{ident}' differs from" in res.output
    recs = rejects(out)
    assert sum(r["stage"] == "protocol" for r in recs) == 5
    assert any(r["source"] == "media/missing/file.wav" and "file not found (row" in r["reason"] for r in recs)
    assert len(index_items(out)) > 0  # the good rows were built
    header_only = csv_corpus / "wrong.csv"
    header_only.write_text("file,person,kind\nmedia/a.wav,x,audio\n")
    res = cli("build-shards", "--corpus", "csv", "--meta", header_only, "--out", tmp_path / "o", ok=False)
    one_line_error(
        res,
        str(header_only),
        "lacks the column(s) path, identity, modality; its header is file, person, kind",
    )
    res = cli(
        "build-shards",
        "--corpus",
        "csv",
        "--meta",
        csv,
        "--audio",
        csv_corpus,
        "--out",
        tmp_path / "o2",
        ok=False,
    )
    one_line_error(res, "--corpus csv lists its media in --meta; give no --audio, --faces or --videos")


def test_synth_layouts_replace_each_other(tmp_path):
    """A re-run of avdata synth into a corpus of another layout leaves only the new layout."""
    out = tmp_path / "c"
    small = dict(identities=3, clips_per_identity=1, faces_per_identity=1, seed=0)
    synth_corpus(out, **small, layout="mavceleb")
    assert {p.name for p in out.iterdir()} == {"attributes.json", "faces", "lists", "v1_meta.csv", "voices"}
    synth_corpus(out, **small)
    assert {p.name for p in out.iterdir()} == {
        "attributes.json",
        "faces",
        "identity_splits.txt",
        "vox1_meta.csv",
        "wav",
    }
    res = cli("synth", out, "--identities", "3", "--layout", "nowhere", ok=False)
    assert res.exit_code == 2 and "'nowhere' is not one of" in res.output
