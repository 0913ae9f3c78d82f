"""Scanners over real media trees and hand-made VoxCeleb layouts."""

import shutil
from pathlib import Path

import pandas as pd

from avdata.corpora.voxceleb1 import read_meta
from avdata.ingest import scan_all, scan_tree

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
META = DATA / "protocols" / "voxceleb1" / "vox1_meta.csv"


def test_flat_named_voice_dir_real():
    meta = read_meta(META)
    res = scan_tree(DATA / "media" / "voice" / "voxceleb1_named", meta, "audio")
    assert len(res.media) == 10 and res.problems == []
    row = res.media[res.media.name == "Alan_Tudyk"].iloc[0]
    assert row.vox_id == meta.set_index("name").loc["Alan_Tudyk", "vox_id"]
    assert row.rel_path == "Alan_Tudyk.wav"


def test_voxceleb_layouts_and_problems(tmp_path):
    meta = read_meta(META)
    wav = next((DATA / "media" / "voice" / "voxceleb1_named").glob("*.wav"))
    # VoxCeleb1 audio: idNNNNN/YTID/NNNNN.wav
    for ytid, n in (("Y8hIVOBuels", 1), ("Y8hIVOBuels", 2), ("a-b_c123XYZ", 1)):
        d = tmp_path / "wav" / "id10001" / ytid
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(wav, d / f"{n:05d}.wav")
    (tmp_path / "wav" / "id99999" / "zz").mkdir(parents=True)  # unknown id
    shutil.copy(wav, tmp_path / "wav" / "id99999" / "zz" / "00001.wav")
    (tmp_path / "wav" / "id10002").mkdir()  # empty folder
    (tmp_path / "wav" / "id10003" / "yt").mkdir(parents=True)
    (tmp_path / "wav" / "id10003" / "yt" / "00001.wav").write_bytes(b"")  # zero-byte
    # PINs-style voice names: NAME/YTID_0000001.wav
    d = tmp_path / "pins" / "A.J._Buckley"
    d.mkdir(parents=True)
    shutil.copy(wav, d / "Y8hIVOBuels_0000001.wav")
    # faces: NAME/YTID/NNNNNNN.jpg and NAME/*.png
    (tmp_path / "faces" / "A.J._Buckley" / "Y8hIVOBuels").mkdir(parents=True)
    (tmp_path / "faces" / "A.J._Buckley" / "Y8hIVOBuels" / "0006000.jpg").write_bytes(b"x")
    (tmp_path / "faces" / "Aamir_Khan").mkdir(parents=True)
    (tmp_path / "faces" / "Aamir_Khan" / "photo.png").write_bytes(b"x")
    (tmp_path / "faces" / "Nobody_Known").mkdir()
    (tmp_path / "faces" / "Nobody_Known" / "1.jpg").write_bytes(b"x")

    audio = scan_tree(tmp_path / "wav", meta, "audio")
    assert audio.media["rel_path"].tolist() == [
        "id10001/Y8hIVOBuels/00001.wav",
        "id10001/Y8hIVOBuels/00002.wav",
        "id10001/a-b_c123XYZ/00001.wav",
    ]
    assert set(audio.media.source_id) == {"Y8hIVOBuels", "a-b_c123XYZ"}
    assert set(audio.media.name) == {"A.J._Buckley"}
    reasons = {Path(p["path"]).name: p["reason"] for p in audio.problems}
    assert "unknown identity" in reasons["id99999"]
    assert "empty folder" in reasons["id10002"]
    assert "0 bytes" in reasons["00001.wav"]

    pins = scan_tree(tmp_path / "pins", meta, "audio")
    assert pins.media.iloc[0].source_id == "Y8hIVOBuels"

    both = scan_all(meta, audio=tmp_path / "wav", faces=tmp_path / "faces")
    faces = both.media[both.media.modality == "face"]
    assert dict(zip(faces.name, faces.source_id)) == {"A.J._Buckley": "Y8hIVOBuels", "Aamir_Khan": "photo"}
    assert any("Nobody_Known" in p["path"] and "unknown identity" in p["reason"] for p in both.problems)


def test_scan_order_is_stable(tmp_path):
    meta = read_meta(META)
    a = scan_tree(DATA / "media" / "voice" / "voxceleb1_named", meta, "audio").media
    b = scan_tree(DATA / "media" / "voice" / "voxceleb1_named", meta, "audio").media
    pd.testing.assert_frame_equal(a, b)
    assert a["vox_id"].is_monotonic_increasing
