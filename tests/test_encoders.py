"""Frozen pretrained encoders (avtrain.encoders) on real files from ../shared, their weights'
checks, the missing-extra message, and the feature store (build, reuse, refusal, atomicity,
rejects) built by `avtrain features`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from avdata.cli import main as avdata_main
from avdata.faces import FaceAligner
from avdata.io import sha256_file
from avdata.media import decode_audio
from avdata.reader import index_items
from avtrain.cli import main as avtrain_main
from avtrain.encoders import (
    EncoderError,
    ItemRejected,
    encoder_card,
    leakage_warning,
    load_encoder,
)
from avtrain.encoders.store import FeatureStore, FeatureStoreError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]
# The three shortest real utterances (3.9-4.8 s): Resemblyzer runs ~1x real time here.
SHORT_VOICES = ("Alan_Tudyk", "Bingbing_Li", "Witney_Carson")


def avtrain(*args, ok=True):
    res = CliRunner().invoke(avtrain_main, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.output
    return res


def one_line_error(res, *words):
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def resemblyzer():
    return load_encoder("resemblyzer")


@pytest.fixture(scope="module")
def dlib_face():
    return load_encoder("dlib")


@pytest.fixture(scope="module")
def real_crops(real_photos) -> np.ndarray:
    aligner = FaceAligner()
    return np.stack([aligner.align_path(p).face for p in real_photos])


def _random_facenet_state(seed: int):
    import torch
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(seed)
    return InceptionResnetV1(pretrained=None, classify=False).state_dict()


@pytest.fixture(scope="module")
def facenet_weights(tmp_path_factory) -> dict[str, Path]:
    """Weights files the test makes: a random-init InceptionResnetV1 state dict (as .pt and as
    .safetensors), another seed's, and bad ones."""
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("facenet_weights")
    state = _random_facenet_state(1)
    files = {"pt": root / "rand.pt", "safetensors": root / "rand.safetensors", "other": root / "other.pt"}
    torch.save(state, files["pt"])
    save_file(state, str(files["safetensors"]))
    torch.save(_random_facenet_state(2), files["other"])
    files["garbage"] = root / "garbage.pt"
    files["garbage"].write_bytes(b"not a weights file at all")
    wrong = dict(state)
    wrong["last_linear.weight"] = torch.zeros(3, 3)
    files["shape"] = root / "shape.pt"
    torch.save(wrong, files["shape"])
    partial = {k: v for k, v in state.items() if not k.startswith("block8")}
    files["keys"] = root / "keys.pt"
    torch.save(partial, files["keys"])
    return files


# ------------------------------------------------------------------------------ the encoders


def test_resemblyzer_on_real_voices_matches_resemblyzer_itself(resemblyzer, real_wavs):
    from resemblyzer import VoiceEncoder, preprocess_wav

    reference = VoiceEncoder(device="cpu", verbose=False)  # its own loader and network
    wavs = [w for w in real_wavs if w.stem in SHORT_VOICES[:2]]
    embeddings = []
    for wav in wavs:
        wave = decode_audio(wav)
        e = resemblyzer.embed_audio(wave)
        assert e.shape == (256,) and e.dtype == np.float32 and np.all(np.isfinite(e))
        assert abs(float(np.linalg.norm(e)) - 1.0) < 1e-5  # embed_utterance L2-norms
        np.testing.assert_array_equal(e, resemblyzer.embed_audio(decode_audio(wav)))  # same file: same bytes
        # the same network and weights on the same preprocessed wave: only summation order may differ
        np.testing.assert_allclose(e, reference.embed_utterance(preprocess_wav(wave)), atol=1e-6)
        embeddings.append(e)
    assert float(embeddings[0] @ embeddings[1]) < 0.95  # two people are two voices
    assert len(resemblyzer.weights_sha256) == 64


def test_resemblyzer_rejects_silence_and_too_little_voice(resemblyzer, real_wavs):
    with pytest.raises(ItemRejected, match=r"^silent: no non-zero sample in 1.00 s$"):
        resemblyzer.embed_audio(np.zeros(16000, np.float32))
    wave = decode_audio(real_wavs[0])
    with pytest.raises(ItemRejected, match=r"^too short after VAD: 0\.\d\d s of voice in 0.50 s"):
        resemblyzer.embed_audio(wave[:8000])


def test_dlib_on_real_faces_keeps_good_crops_around_a_rejected_one(dlib_face, real_crops):
    black = np.zeros((1, 224, 224, 3), np.uint8)
    out = dlib_face.embed_faces(np.concatenate([real_crops[:1], black, real_crops[1:]]))
    assert isinstance(out[1], ItemRejected)
    assert str(out[1]) == "no usable face landmarks: dlib's face detector finds no face in the crop"
    good = [out[0], *out[2:]]
    for e in good:
        assert e.shape == (128,) and e.dtype == np.float32 and np.all(np.isfinite(e))
        assert 0.5 < float(np.linalg.norm(e)) < 3.0  # dlib's descriptors are not L2-normed (about 1.5)
    again = dlib_face.embed_faces(real_crops)
    for a, b in zip(good, again):
        np.testing.assert_array_equal(a, b)
    distances = np.linalg.norm(np.stack(good)[:, None] - np.stack(good)[None], axis=-1)
    assert distances[np.triu_indices(len(good), 1)].min() > 0.6  # four people: above dlib's 0.6 threshold


def test_dlib_rejects_noise(dlib_face):
    noise = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    assert isinstance(dlib_face.embed_faces(noise)[0], ItemRejected)
    with pytest.raises(EncoderError, match=r"face crops must be \(N, 224, 224, 3\) uint8"):
        dlib_face.embed_faces(np.zeros((1, 160, 160, 3), np.uint8))


def test_facenet_loads_test_made_weights_pt_and_safetensors_alike(facenet_weights, real_crops):
    from_pt = load_encoder("facenet_vggface2", weights=facenet_weights["pt"])
    from_st = load_encoder("facenet_vggface2", weights=facenet_weights["safetensors"])
    assert from_pt.weights_sha256 == sha256_file(facenet_weights["pt"])
    a, b = from_pt.embed_faces(real_crops[:2]), from_st.embed_faces(real_crops[:2])
    for x, y in zip(a, b):
        assert x.shape == (512,) and abs(float(np.linalg.norm(x)) - 1.0) < 1e-5
        np.testing.assert_array_equal(x, y)  # the same weights, the same crop, one crop at a time
    # alone or in a batch: the same bytes (each crop runs alone)
    np.testing.assert_array_equal(from_pt.embed_faces(real_crops[1:2])[0], a[1])


@pytest.mark.parametrize(
    "name, words",
    [
        ("garbage", ["garbage.pt: not a weights file", "without pickle"]),
        ("shape", ["shape.pt: not InceptionResnetV1 weights: last_linear.weight has shape (3, 3)"]),
        ("keys", ["keys.pt: not InceptionResnetV1 weights: keys", "missing (first block8"]),
    ],
)
def test_facenet_bad_weights_file_is_one_line(facenet_weights, name, words):
    with pytest.raises(EncoderError) as err:
        load_encoder("facenet_vggface2", weights=facenet_weights[name])
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_facenet_never_unpickles_a_weights_file(tmp_path):
    import pickle

    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"last_linear.weight": Payload()}))
    with pytest.raises(EncoderError, match="evil.pt: not a weights file"):
        load_encoder("facenet_vggface2", weights=evil)
    assert not marker.exists()


def test_facenet_weights_over_the_cap_or_with_a_lying_zip_directory_are_refused_unread(tmp_path):
    """The shared weights reader's checks before torch reads a byte: a file over the size cap (a
    sparse file: nothing written), and a small torch zip whose directory says a record unpacks to
    2 GiB (a decompression bomb's signature; avtrain.run.checkpoint.check_archive)."""
    import io
    import struct

    import torch

    from avtrain.encoders.weights import MAX_WEIGHTS_BYTES

    big = tmp_path / "big.pt"
    with open(big, "wb") as f:
        f.truncate(MAX_WEIGHTS_BYTES + (1 << 20))
    buf = io.BytesIO()
    torch.save({"last_linear.weight": torch.zeros(4)}, buf)
    data = bytearray(buf.getvalue())
    entry = data.find(b"PK\x01\x02")  # the zip directory's first record: its unpacked size at +24
    data[entry + 24 : entry + 28] = struct.pack("<I", 2**31 - 1)
    lying = tmp_path / "lying.pt"
    lying.write_bytes(bytes(data))
    for path, words in (
        (big, "big.pt: 257 MiB, more than a frozen encoder's weights file holds (256 MiB); refusing it"),
        (lying, "lying.pt: its zip records unpack to 2048 MiB, more than"),
    ):
        with pytest.raises(EncoderError) as err:
            load_encoder("facenet_vggface2", weights=path)
        assert "\n" not in str(err.value) and words in str(err.value), str(err.value)


def test_facenet_reads_torchs_legacy_format_without_unpickling(facenet_weights, real_crops, tmp_path):
    """torch.save's pre-1.6, non-zip format (facenet-pytorch's own files are in it) loads to the
    same embeddings; a pickled object in it is still refused unrun."""
    import torch

    legacy = tmp_path / "legacy.pt"
    torch.save(
        torch.load(facenet_weights["pt"], weights_only=True), legacy, _use_new_zipfile_serialization=False
    )
    assert not legacy.read_bytes().startswith(b"PK")
    got = load_encoder("facenet_vggface2", weights=legacy).embed_faces(real_crops[:1])[0]
    want = load_encoder("facenet_vggface2", weights=facenet_weights["pt"]).embed_faces(real_crops[:1])[0]
    np.testing.assert_array_equal(got, want)

    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil_legacy.pt"
    torch.save({"last_linear.weight": Payload()}, evil, _use_new_zipfile_serialization=False)
    with pytest.raises(EncoderError, match="evil_legacy.pt: not a weights file.*without pickle"):
        load_encoder("facenet_vggface2", weights=evil)
    assert not marker.exists()


def test_facenet_without_weights_or_download_names_both_ways():
    with pytest.raises(EncoderError, match="--encoder-weights FILE .*--allow-download"):
        load_encoder("facenet_vggface2")


def test_download_is_kept_only_with_the_pinned_sha256(facenet_weights, tmp_path):
    from avtrain.encoders.weights import fetch_weights

    url = facenet_weights["pt"].as_uri()  # file:// through the same downloader as https://
    dest = tmp_path / "cache" / "w.pt"
    with pytest.raises(EncoderError, match=r"downloaded file has sha256 [0-9a-f]{64}, expected 0{64}"):
        fetch_weights(url, dest, "0" * 64)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # nothing half-written kept
    right = sha256_file(facenet_weights["pt"])
    assert fetch_weights(url, dest, right) == dest and sha256_file(dest) == right


@pytest.mark.parametrize("module, encoder", [("dlib", "dlib"), ("resemblyzer", "resemblyzer")])
def test_missing_extra_is_one_line_naming_it(module, encoder, tmp_path):
    """The package made unimportable (sys.modules[NAME] = None) in a fresh interpreter: what a user
    without the extra sees from the CLI. The card stays readable without it."""
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from avtrain.encoders import encoder_card\n"
        f"assert encoder_card({encoder!r}).name == {encoder!r}\n"
        "from avtrain.cli import main\n"
        f"main(['features', '--shards', {str(tmp_path)!r}, '--encoder', {encoder!r}], standalone_mode=True)\n"
    )
    env = os.environ | {"PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert lines == [
        f"Error: encoder {encoder} needs the 'encoders' extra ({module} cannot be imported: "
        f"ModuleNotFoundError): pip install 'avmatch[encoders]'"
    ], res.stderr
    assert "Traceback" not in res.stderr


def test_leakage_warning_follows_the_cards():
    assert "resemblyzer was trained on" in leakage_warning("resemblyzer", "voxceleb1")
    assert leakage_warning("resemblyzer", "voxceleb2") and leakage_warning("dlib", "voxceleb1")
    assert leakage_warning("facenet_vggface2", "vggface2") and leakage_warning("ecapa", "voxceleb1")
    assert leakage_warning("resemblyzer", "mavceleb") is None
    assert leakage_warning("dlib", "vggface2") is None  # not documented: no warning
    assert leakage_warning("aml", "voxceleb1") is None
    assert {encoder_card(n).dim for n in ("resemblyzer", "dlib", "facenet_vggface2", "ecapa")} == {
        256,
        128,
        512,
        192,
    }
    with pytest.raises(EncoderError, match="unknown encoder 'nope'; known: dlib, ecapa"):
        encoder_card("nope")


# ------------------------------------------------------------------------------ the feature store


def _build_shards(corpus: Path, out: Path) -> Path:
    args = ["build-shards", "--audio", corpus / "wav", "--faces", corpus / "faces"]
    args += ["--meta", corpus / "vox1_meta.csv", "--out", out, "--no-progress"]
    res = CliRunner().invoke(avdata_main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def real_shards(tmp_path_factory, real_wavs, real_photos) -> Path:
    """Item shards of real media in VoxCeleb1's layout, made here: three real utterances as
    wav/idN/ytN/00001.wav and two real photos as faces/NAME/ytN/0000001.jpg, each its own identity
    in a vox1_meta.csv written here."""
    root = tmp_path_factory.mktemp("real_corpus")
    rows = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    voices = [w for w in real_wavs if w.stem in SHORT_VOICES]
    for n, wav in enumerate(voices, 1):
        folder = root / "corpus" / "wav" / f"id1{n:04d}" / f"yt{n:09d}"
        folder.mkdir(parents=True)
        shutil.copy(wav, folder / "00001.wav")
        rows.append(f"id1{n:04d}\t{wav.stem}\tm\tUSA\tdev")
    for n, photo in enumerate(real_photos[:2], len(voices) + 1):
        folder = root / "corpus" / "faces" / photo.parent.name / f"yt{n:09d}"
        folder.mkdir(parents=True)
        shutil.copy(photo, folder / "0000001.jpg")
        rows.append(f"id1{n:04d}\t{photo.parent.name}\tf\tUSA\tdev")
    (root / "corpus" / "vox1_meta.csv").write_text("\n".join(rows) + "\n")
    return _build_shards(root / "corpus", root / "shards")


@pytest.fixture(scope="module")
def synth_shards(tmp_path_factory) -> Path:
    from avdata.synth import synth_corpus

    root = tmp_path_factory.mktemp("synth_corpus")
    synth_corpus(root / "corpus", identities=4, clips_per_identity=1, faces_per_identity=2, seed=5)
    return _build_shards(root / "corpus", root / "shards")


def test_store_of_real_voices_holds_each_source_files_embedding(real_shards, resemblyzer, tmp_path):
    audio = real_shards.parent / "corpus" / "wav"
    res = avtrain("features", "--shards", real_shards, "--encoder", "resemblyzer", "--audio", audio)
    store_dir = real_shards / "features" / "resemblyzer"
    assert res.output.splitlines()[:2] == [f"wrote {store_dir}", "3 of 3 items embedded, 0 rejected"]
    # the shards were built as voxceleb1, whose identities Resemblyzer's training data holds
    assert res.output.splitlines()[2] == leakage_warning("resemblyzer", "voxceleb1")
    store = FeatureStore(store_dir)
    store.check_matches(real_shards)
    assert (store.encoder, store.modality, store.dim, len(store)) == ("resemblyzer", "audio", 256, 3)
    assert store.weights_sha256 == resemblyzer.weights_sha256 and store.rejects == []
    manifest = json.loads((store_dir / "manifest.json").read_text())
    assert manifest["encoder"]["overlaps"] == ["voxceleb1", "voxceleb2"]
    assert manifest["counts"]["source_files_embedded"] == 3
    for item in store.items:  # each row: the encoder on the whole source file, bit for bit
        folder = audio / item["vox_id"]
        (wav,) = folder.rglob("*.wav")
        np.testing.assert_array_equal(
            store.array()[store.locate(item["key"])], resemblyzer.embed_audio(decode_audio(wav))
        )
    assert store.locate("no-such-key") is None
    # the same command again reuses it; a second build elsewhere gives byte-identical files
    res = avtrain("features", "--shards", real_shards, "--encoder", "resemblyzer", "--audio", audio)
    assert (
        res.output.splitlines()[0]
        == f"reused {store_dir}: built earlier from the same shards, settings and weights"
    )
    avtrain(
        "features",
        "--shards",
        real_shards,
        "--encoder",
        "resemblyzer",
        "--audio",
        audio,
        "--out",
        tmp_path / "b",
    )
    for name in ("features.npy", "items.jsonl", "rejects.jsonl", "manifest.json"):
        assert sha256_file(store_dir / name) == sha256_file(tmp_path / "b" / name), name


@pytest.fixture(scope="module")
def audio_and_video_shards(tmp_path_factory, real_wavs, real_mp4s) -> Path:
    """Item shards built from --audio and --videos at once: one real utterance (wav/NAME.wav)
    and one real talking-head video (mp4/NAME/CLIP.mp4, its audio track a voice item, its frames
    face items), two identities in a vox1_meta.csv written here."""
    root = tmp_path_factory.mktemp("audio_and_video")
    corpus = root / "corpus"
    (corpus / "wav").mkdir(parents=True)
    shutil.copy(next(w for w in real_wavs if w.stem == "Alan_Tudyk"), corpus / "wav" / "Alan_Tudyk.wav")
    (corpus / "mp4" / "Katie_Hill").mkdir(parents=True)
    shutil.copy(real_mp4s[-1], corpus / "mp4" / "Katie_Hill" / real_mp4s[-1].name)
    (corpus / "vox1_meta.csv").write_text(
        "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
        "id10001\tAlan_Tudyk\tm\tUSA\tdev\nid10002\tKatie_Hill\tf\tUSA\tdev\n"
    )
    args = ["build-shards", "--audio", corpus / "wav", "--videos", corpus / "mp4"]
    args += ["--meta", corpus / "vox1_meta.csv", "--out", root / "shards", "--no-progress"]
    res = CliRunner().invoke(avdata_main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return root / "shards"


def test_store_of_shards_from_audio_and_videos_reads_each_voice_under_its_root(
    audio_and_video_shards, resemblyzer, tmp_path
):
    """Each voice item's source lies under the root of its .json source_modality: both roots
    together embed both; without --videos the video's voice is a reject that names it; a face
    encoder given media roots says in a note that it does not use them."""
    shards, corpus = audio_and_video_shards, audio_and_video_shards.parent / "corpus"
    wav, mp4 = corpus / "wav" / "Alan_Tudyk.wav", next((corpus / "mp4").rglob("*.mp4"))
    both = tmp_path / "both"
    res = avtrain(
        "features", "--shards", shards, "--encoder", "resemblyzer", "--audio", corpus / "wav",
        "--videos", corpus / "mp4", "--out", both,
    )  # fmt: skip
    assert res.output.splitlines()[1] == "2 of 2 items embedded, 0 rejected" and not res.stderr
    store = FeatureStore(both)
    by_id = {item["vox_id"]: store.array()[item["row"]] for item in store.items}
    np.testing.assert_array_equal(by_id["id10001"], resemblyzer.embed_audio(decode_audio(wav)))
    np.testing.assert_array_equal(by_id["id10002"], resemblyzer.embed_audio(decode_audio(mp4)))

    only_audio = tmp_path / "only_audio"
    res = avtrain(
        "features", "--shards", shards, "--encoder", "resemblyzer", "--audio", corpus / "wav",
        "--out", only_audio,
    )  # fmt: skip
    assert res.output.splitlines()[1] == "1 of 2 items embedded, 1 rejected"
    store = FeatureStore(only_audio)
    (item,) = store.items
    assert item["vox_id"] == "id10001"
    np.testing.assert_array_equal(store.array()[0], by_id["id10001"])
    (reject,) = store.rejects
    assert reject["source"] == f"Katie_Hill/{mp4.name}"
    assert reject["reason"].startswith(
        "its source is a video file (source_modality video): give --videos ROOT"
    )

    res = avtrain(
        "features", "--shards", shards, "--encoder", "dlib", "--audio", corpus / "wav",
        "--videos", corpus / "mp4", "--out", tmp_path / "faces",
    )  # fmt: skip
    assert res.output.splitlines()[1] == "8 of 8 items embedded, 0 rejected"
    assert res.stderr.splitlines() == [
        f"note: --audio {corpus / 'wav'} not used: dlib embeds the face crops stored in the shards",
        f"note: --videos {corpus / 'mp4'} not used: dlib embeds the face crops stored in the shards",
    ]


def test_store_of_real_faces_and_its_checks(real_shards, dlib_face, tmp_path):
    out = tmp_path / "dlib"
    avtrain("features", "--shards", real_shards, "--encoder", "dlib", "--out", out)
    store = FeatureStore(out)
    assert (store.modality, store.dim, len(store), store.extract["face_margin"]) == ("face", 128, 2, 0.2)
    assert np.all(np.isfinite(store.array())) and store.rejects == []
    # a voice encoder without its media root; a store that was tampered with: one line each
    one_line_error(
        avtrain("features", "--shards", real_shards, "--encoder", "resemblyzer", ok=False),
        "give --audio ROOT (or --videos ROOT)",
    )
    lines = (out / "items.jsonl").read_text().splitlines()
    (out / "items.jsonl").write_text("\n".join(lines[:1]) + "\n")
    with pytest.raises(FeatureStoreError, match="items.jsonl differs from its sha256 in manifest.json"):
        FeatureStore(out)


def test_store_from_other_shards_or_weights_is_refused_never_overwritten(
    real_shards, synth_shards, facenet_weights, tmp_path
):
    out = tmp_path / "faces"
    w1, w2 = facenet_weights["pt"], facenet_weights["other"]
    avtrain(
        "features",
        "--shards",
        synth_shards,
        "--encoder",
        "facenet_vggface2",
        "--encoder-weights",
        w1,
        "--out",
        out,
    )
    before = sha256_file(out / "features.npy")
    err = one_line_error(
        avtrain(
            "features",
            "--shards",
            synth_shards,
            "--encoder",
            "facenet_vggface2",
            "--encoder-weights",
            w2,
            "--out",
            out,
            ok=False,
        ),
        f"{out} was built from other weights_sha256 than asked now",
        "never overwritten",
    )
    assert "shards_manifest_sha256" not in err
    one_line_error(
        avtrain(
            "features",
            "--shards",
            real_shards,
            "--encoder",
            "facenet_vggface2",
            "--encoder-weights",
            w1,
            "--out",
            out,
            ok=False,
        ),
        "other shards_manifest_sha256",
    )
    assert sha256_file(out / "features.npy") == before
    with pytest.raises(FeatureStoreError, match="built from other item shards than"):
        FeatureStore(out).check_matches(real_shards)
    one_line_error(
        avtrain(
            "features",
            "--shards",
            synth_shards,
            "--encoder",
            "dlib",
            "--out",
            tmp_path / "x",
            "--encoder-weights",
            w1,
            ok=False,
        ),
        "encoder dlib takes no --encoder-weights",
    )


def test_synthetic_items_embedded_or_rejected_with_reasons(synth_shards):
    """The synthetic corpus's voices and cartoon faces: what the real encoders make of them."""
    audio = synth_shards.parent / "corpus" / "wav"
    avtrain("features", "--shards", synth_shards, "--encoder", "resemblyzer", "--audio", audio)
    avtrain("features", "--shards", synth_shards, "--encoder", "dlib")
    items = index_items(synth_shards)
    for name, n_items in (("resemblyzer", 4), ("dlib", 8)):
        store = FeatureStore(synth_shards / "features" / name)
        counts = json.loads((store.root / "manifest.json").read_text())["counts"]
        assert (
            counts["items"]
            == n_items
            == counts["embedded"] + counts["rejected"]
            == len(store) + len(store.rejects)
        )
        for reject in store.rejects:
            assert set(reject) == {"key", "source", "reason"} and reject["reason"]
        # every item of the modality is either a row or a reject, never both, never lost; a row is
        # a finite vector of the encoder's width (a store that rejected or dropped everything, or
        # wrote rows of another width, fails here)
        modality = encoder_card(name).modality
        keys = set(items.loc[items["modality"] == modality, "key"])
        rows, rejected = {item["key"] for item in store.items}, {r["key"] for r in store.rejects}
        assert rows | rejected == keys and not rows & rejected and len(rows) == len(store)
        vectors = store.array()
        assert vectors.shape == (len(rows), encoder_card(name).dim) and np.isfinite(vectors).all()
        assert len(rows) > 0 and np.linalg.norm(vectors, axis=1).min() > 0


def test_a_voice_encoder_notes_a_root_no_item_comes_from(synth_shards, tmp_path):
    """Shards built from --audio alone, given --videos too: built from --audio, with a note."""
    audio, videos = synth_shards.parent / "corpus" / "wav", tmp_path / "videos"
    videos.mkdir()
    res = avtrain(
        "features", "--shards", synth_shards, "--encoder", "resemblyzer", "--audio", audio,
        "--videos", videos, "--out", tmp_path / "store",
    )  # fmt: skip
    assert res.output.splitlines()[1] == "4 of 4 items embedded, 0 rejected"
    assert res.stderr.splitlines() == [
        f"note: --videos {videos} not used: no voice item of {synth_shards} comes from a video file"
    ]


def test_a_failed_build_leaves_no_store_and_a_killed_ones_temp_is_cleared(
    synth_shards, monkeypatch, tmp_path
):
    from avtrain.encoders import store as store_module
    from avtrain.encoders.dlib_face import DlibFace

    out = tmp_path / "features" / "dlib"
    dead = tmp_path / "features" / "dlib.tmp-999999999"  # a killed builder's (no such pid)
    dead.mkdir(parents=True)
    (dead / "features.npy").write_bytes(b"half")
    calls = []
    real_embed = DlibFace.embed_faces

    def embed_then_fail(self, crops):
        calls.append(len(crops))
        if len(calls) == 2:
            raise RuntimeError("the machine went away mid-build")
        return real_embed(self, crops)

    monkeypatch.setattr(store_module, "FACE_BATCH", 3)
    monkeypatch.setattr(DlibFace, "embed_faces", embed_then_fail)
    with pytest.raises(RuntimeError, match="mid-build"):
        store_module.build_feature_store(synth_shards, "dlib", out=out)
    assert sorted(p.name for p in out.parent.iterdir()) == []  # no STORE, no STORE.tmp-*, the dead one gone
    monkeypatch.setattr(DlibFace, "embed_faces", real_embed)
    built = store_module.build_feature_store(synth_shards, "dlib", out=out)
    assert not built.reused and len(FeatureStore(out)) == built.counts["embedded"]
