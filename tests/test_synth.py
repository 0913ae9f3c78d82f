"""The synthetic corpus: VoxCeleb layouts, determinism, detectable faces, attribute-bearing voices."""

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from avdata.corpora.voxceleb1 import matching_split
from avdata.errors import InputError
from avdata.io import sha256_file
from avdata.synth import (
    META_HEADER,
    corpus_attributes,
    identity_attributes,
    matching_group_sizes,
    render_face,
    synth_corpus,
    synth_names,
)

SMALL = dict(identities=8, clips_per_identity=2, faces_per_identity=3, videos=True, seed=0)
YTID = r"[A-Za-z0-9_-]{11}"


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _meta_rows(root: Path) -> list[list[str]]:
    lines = (root / "vox1_meta.csv").read_text().splitlines()
    assert lines[0] == META_HEADER
    return [line.split("\t") for line in lines[1:]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "corpus"
    return root, synth_corpus(root, **SMALL)


def test_summary_and_meta(corpus):
    root, summary = corpus
    assert summary == {
        "out": str(root),
        "identities": 8,
        "wavs": 16,
        "faces": 24,
        "videos": 8,
        "seed": 0,
        "matching_splits": {"val": 1, "test": 2, "train": 5},
    }
    rows = _meta_rows(root)
    assert len(rows) == 8 and all(len(r) == 5 for r in rows)
    names = [r[1] for r in rows]
    assert names == sorted(names) and len(set(names)) == 8
    assert [r[0] for r in rows] == [f"id{10001 + i}" for i in range(8)]
    for vox_id, name, gender, nationality, set_ in rows:
        assert re.fullmatch(r"[A-Z][A-Za-z._-]+_[A-Za-z._-]+", name), name
        assert gender in ("m", "f") and nationality and " " not in nationality
        assert set_ == ("test" if name.startswith("E") else "dev")  # official VoxCeleb1 rule


def test_every_matching_split_populated():
    for n in (3, 6, 8, 60):
        splits = [matching_split(name) for name, _ in synth_names(n, seed=0)]
        assert {s: splits.count(s) for s in ("val", "test", "train")} == matching_group_sizes(n)
        assert min(splits.count(s) for s in ("val", "test", "train")) >= 1
    sizes = matching_group_sizes(60)
    assert sizes["val"] >= 8 and sizes["test"] >= 8


def test_names_unique_and_punctuated_like_vggface():
    people = synth_names(60, seed=0)
    names = [n for n, _ in people]
    assert len(set(names)) == 60
    assert any("." in n for n in names) and any("-" in n for n in names)
    assert {g for _, g in people} == {"m", "f"}
    assert synth_names(60, seed=1) != people


def test_wavs(corpus):
    root, _ = corpus
    wavs = sorted((root / "wav").rglob("*.wav"))
    assert len(wavs) == 16
    ytids_per_id = {}
    for w in wavs:
        rel = w.relative_to(root / "wav").as_posix()
        assert re.fullmatch(rf"id1\d{{4}}/{YTID}/\d{{5}}\.wav", rel), rel
        ytids_per_id.setdefault(w.parts[-3], set()).add(w.parts[-2])
        info = sf.info(w)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        assert 4.0 <= info.duration <= 8.0
        audio, _ = sf.read(w, dtype="int16")
        assert 0 < np.abs(audio).max() < 32767
    assert all(len(y) >= 2 for y in ytids_per_id.values())  # clips come from several videos


def test_faces(corpus):
    root, _ = corpus
    names = {r[1] for r in _meta_rows(root)}
    jpgs = sorted((root / "faces").rglob("*.jpg"))
    assert len(jpgs) == 24
    sizes = []
    for j in jpgs:
        rel = j.relative_to(root / "faces").as_posix()
        assert re.fullmatch(rf"[^/]+/{YTID}/\d{{7}}\.jpg", rel), rel
        assert j.parts[-3] in names
        with Image.open(j) as im:
            im.load()
            assert im.format == "JPEG" and im.mode == "RGB" and not im.info.get("exif")
            assert 160 <= min(im.size) and max(im.size) <= 640
            sizes.append(im.size)
    assert len(set(sizes)) > 10 and any(w != h for w, h in sizes)


def test_videos_decode(corpus):
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    root, _ = corpus
    mp4s = sorted((root / "mp4").rglob("*.mp4"))
    assert len(mp4s) == 8
    for m in mp4s:
        assert re.fullmatch(rf"id1\d{{4}}/{YTID}/\d{{5}}\.mp4", m.relative_to(root / "mp4").as_posix())
        pcm = subprocess.run(
            [exe, "-v", "error", "-i", str(m), "-vn", "-f", "s16le", "-ac", "1", "-ar", "16000", "pipe:"],
            capture_output=True,
            check=True,
        ).stdout
        audio = np.frombuffer(pcm, np.int16)
        assert 1.9 <= len(audio) / 16000 <= 3.3 and np.abs(audio).max() > 1000
        raw = subprocess.run(
            [
                exe,
                "-v",
                "error",
                "-i",
                str(m),
                "-an",
                "-vf",
                "scale=64:64",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgb24",
                "pipe:",
            ],
            capture_output=True,
            check=True,
        ).stdout
        frames = np.frombuffer(raw, np.uint8).reshape(-1, 64, 64, 3)
        assert 2 * 15 <= len(frames) <= 3 * 25 + 1
        assert frames[0].std() > 10 and np.abs(frames[0].astype(int) - frames[-1]).mean() > 0.5  # it moves


def test_same_seed_identical_bytes_any_workers_different_seed_differs(corpus, tmp_path):
    root, _ = corpus
    again = tmp_path / "again"
    synth_corpus(again, **SMALL, workers=2)  # parallel rendering must not change a byte
    first, second = _hashes(root), _hashes(again)
    assert first == second
    assert sum(k.endswith((".wav", ".jpg", ".mp4")) for k in first) == 16 + 24 + 8
    other = tmp_path / "other"
    synth_corpus(other, **{**SMALL, "videos": False, "seed": 1})
    third = _hashes(other)
    assert third["vox1_meta.csv"] != first["vox1_meta.csv"]
    assert not set(third.values()) & set(first.values())


def test_rerun_replaces_earlier_corpus(tmp_path):
    out = tmp_path / "c"
    synth_corpus(out, identities=4, clips_per_identity=1, faces_per_identity=1)
    fresh = _hashes(out)
    synth_corpus(out, identities=3, clips_per_identity=1, faces_per_identity=1)  # smaller: old files go
    synth_corpus(out, identities=4, clips_per_identity=1, faces_per_identity=1)
    assert _hashes(out) == fresh


def test_bad_arguments(tmp_path):
    for kwargs in (
        {"identities": 2},
        {"identities": "60"},
        {"clips_per_identity": 0},
        {"faces_per_identity": -1},
        {"seed": -1},
        {"videos_per_identity": 0},
    ):
        with pytest.raises(ValueError):
            synth_corpus(tmp_path / "x", **kwargs)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        synth_corpus(tmp_path / "busy", identities=3)
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="not a directory"):
        synth_corpus(tmp_path / "file", identities=3)
    with pytest.raises(ValueError, match="no identity"):
        identity_attributes("Nobody_Here", seed=0)


def test_mtcnn_finds_most_faces_and_skin_follows_brightness(corpus, one_torch_thread):
    from facenet_pytorch import MTCNN

    root, _ = corpus
    detector = MTCNN()
    images, brightness = [], []
    truth = {a["name"]: a for a in json.loads((root / "attributes.json").read_text())["identities"]}
    for j in sorted((root / "faces").rglob("*.jpg")):
        images.append(Image.open(j).convert("RGB"))
        brightness.append(truth[j.parts[-3]]["brightness"])
    for at in corpus_attributes(60, seed=3):  # plus one photo of each of 60 more identities
        images.append(render_face(at, np.random.default_rng([3, 99, at.index])))
        brightness.append(at.brightness)
    hits, skin, skin_truth = 0, [], []
    for img, b in zip(images, brightness):
        boxes, _ = detector.detect(img)
        if boxes is None:
            continue
        hits += 1
        x0, y0, x1, y1 = boxes[0]
        w, h = x1 - x0, y1 - y0  # the cheeks and nose: mostly skin
        patch = np.asarray(
            img.crop((int(x0 + 0.2 * w), int(y0 + 0.45 * h), int(x1 - 0.2 * w), int(y0 + 0.7 * h)))
        )
        skin.append(patch.mean())
        skin_truth.append(b)
    assert hits / len(images) >= 0.9, f"MTCNN found faces in only {hits}/{len(images)} photos"
    assert np.corrcoef(skin, skin_truth)[0, 1] > 0.7


def test_voice_pitch_tracks_hidden_attribute(corpus):
    import librosa

    root, _ = corpus
    truth = {a["vox_id"]: a for a in json.loads((root / "attributes.json").read_text())["identities"]}
    estimated, hidden = [], []
    for w in sorted((root / "wav").rglob("*.wav")):
        audio, sr = sf.read(w, dtype="float32")
        f0 = librosa.yin(audio, fmin=60, fmax=420, sr=sr, frame_length=1024, hop_length=256)
        rms = librosa.feature.rms(y=audio, frame_length=1024, hop_length=256)[0][: len(f0)]
        estimated.append(np.log(np.median(f0[rms > 0.3 * rms.max()])))
        hidden.append(np.log(truth[w.parts[-3]]["f0_hz"]))
    assert np.corrcoef(estimated, hidden)[0, 1] > 0.9


def test_attributes_file_matches_function(corpus):
    root, _ = corpus
    data = json.loads((root / "attributes.json").read_text())
    assert data["generator"] == "avdata.synth" and data["seed"] == 0
    entry = data["identities"][3]
    at = identity_attributes(entry["name"], seed=0, identities=8)
    assert at.vox_id == entry["vox_id"] == "id10004"
    assert identity_attributes(3, seed=0, identities=8) == at == identity_attributes("id10004", 0, 8)
    assert json.loads(json.dumps(at.__dict__)) == entry


def test_each_video_marks_its_voices_and_faces(corpus):
    """Issue #23: every source video's recording condition shows in its voices (a room tone at
    tone_hz(c), the loudest band of the clip's mean spectrogram) and in its faces (a colour cast
    whose sign follows c), so a pair from one video shares something a pair from two does not."""
    from avdata.audio import spectrogram
    from avdata.synth.recording import tone_hz

    root, _ = corpus
    data = json.loads((root / "attributes.json").read_text())
    conditions = data["recording_conditions"]
    names = {a["vox_id"]: a["name"] for a in data["identities"]}
    for vox_id, per_video in conditions.items():  # every video of every identity has one, in [-1, 1]
        folders = [root / "wav" / vox_id, root / "mp4" / vox_id, root / "faces" / names[vox_id]]
        assert set(per_video) == {p.name for f in folders for p in f.iterdir()}
        assert all(-1 <= c <= 1 for c in per_video.values())
    # the corpus's clips are the synthesiser's voice plus its video's room tone, drawn from their streams
    from avdata.synth.corpus import _plan
    from avdata.synth.identity import _K_RECORDING, _K_WAV
    from avdata.synth.recording import add_room_tone
    from avdata.synth.voice import synth_voice

    at = identity_attributes(2, seed=0, identities=8)
    plan = _plan(at, 0, SMALL["clips_per_identity"], SMALL["faces_per_identity"], 1)
    bin_hz = 22050 / 2048
    for k, (y, fname) in enumerate(plan.wav_paths):
        rng = np.random.default_rng([0, _K_WAV, at.index, k])
        voice, mouth = synth_voice(at, rng, float(rng.uniform(4.0, 7.9)))
        c = conditions[at.vox_id][plan.ytids[y]]
        toned = add_room_tone(
            voice, mouth, c, np.random.default_rng([0, _K_RECORDING, at.index, _K_WAV, k]), 16000
        )
        on_disk, sr = sf.read(root / "wav" / at.vox_id / plan.ytids[y] / fname, dtype="float32")
        assert np.abs(on_disk - toned).max() <= 1 / 32768  # 16-bit PCM of the toned clip
        added = spectrogram(toned, sr).mean(axis=1) - spectrogram(voice, sr).mean(axis=1)  # dB per bin
        peak_hz = np.argmax(added) * bin_hz
        assert abs(np.log2(peak_hz / tone_hz(c))) < 1 / 6, (c, peak_hz, tone_hz(c))  # the tone's band
        assert added.max() > 3  # dB: it shows

    at = identity_attributes(0, seed=0, identities=8)
    warm = np.asarray(render_face(at, np.random.default_rng(7), flaw=None, recording=1.0), np.float32)
    cool = np.asarray(render_face(at, np.random.default_rng(7), flaw=None, recording=-1.0), np.float32)
    plain = np.asarray(render_face(at, np.random.default_rng(7), flaw=None), np.float32)
    red_minus_blue = [float((im[..., 0] - im[..., 2]).mean()) for im in (cool, plain, warm)]
    assert red_minus_blue == sorted(red_minus_blue) and red_minus_blue[2] - red_minus_blue[0] > 20


def test_no_video_conditions_leaves_the_files_unmarked(tmp_path):
    """--no-video-conditions: the corpus of before issue #23 (no room tone, no cast, no conditions in
    attributes.json); with conditions only the media change, never the layout."""
    small = dict(identities=3, clips_per_identity=1, faces_per_identity=1, seed=1)
    synth_corpus(tmp_path / "a", **small, video_conditions=False)
    synth_corpus(tmp_path / "b", **small)
    a, b = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert a.keys() == b.keys()
    assert "recording_conditions" not in json.loads((tmp_path / "a" / "attributes.json").read_text())
    differ = {k for k in a if a[k] != b[k]}
    assert differ == {k for k in a if k.endswith((".wav", ".jpg")) or k == "attributes.json"}
