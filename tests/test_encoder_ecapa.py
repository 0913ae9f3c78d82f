"""The ecapa encoder (avtrain.encoders.ecapa): SpeechBrain's ECAPA-TDNN written in torch.

SpeechBrain's published weights cannot be fetched here (no network), so the loading code runs on a
weights file the tests make: a seeded random-init state dict of the module, saved with torch.save
the way SpeechBrain saves embedding_model.ckpt. The feature pipeline is checked against values
worked out by hand from SpeechBrain's definitions (docs/encoders.md, ## ecapa).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from avdata.media import decode_audio
from avtrain.encoders import EncoderError, ItemRejected, ecapa
from avtrain.encoders.ecapa import ECAPA, ECAPATDNN, fbank, mel_filterbank, sentence_mean_norm

SR = 16000


@pytest.fixture(scope="module")
def random_state(one_torch_thread) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return ECAPATDNN().state_dict()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, random_state) -> Path:
    path = tmp_path_factory.mktemp("ecapa") / "embedding_model.ckpt"
    torch.save(random_state, path)
    return path


@pytest.fixture(scope="module")
def encoder(weights_file) -> ECAPA:
    return ECAPA(weights=weights_file)


@pytest.fixture(scope="module")
def voice(real_wavs) -> np.ndarray:
    return decode_audio(real_wavs[0], SR)  # Alan_Tudyk.wav, 3.9 s


# --------------------------------------------------------------------------- the architecture


def test_state_dict_has_speechbrain_names_and_sizes(random_state):
    """The keys and shapes SpeechBrain's ECAPA_TDNN(80, channels=[1024]*4+[3072], lin_neurons=192)
    has: its Conv1d/BatchNorm1d wrappers (conv.conv, norm.norm), 7 Res2Net sub-blocks of 128
    channels, attention over 3 x 3072 inputs, and 20,805,983 numbers in all (x4 bytes: 83.2 MB,
    the size of the published 83,316,686-byte embedding_model.ckpt less its zip records)."""
    shapes = {k: tuple(v.shape) for k, v in random_state.items()}
    assert shapes["blocks.0.conv.conv.weight"] == (1024, 80, 5)
    assert shapes["blocks.3.res2net_block.blocks.6.conv.conv.weight"] == (128, 128, 3)
    assert "blocks.3.res2net_block.blocks.7.conv.conv.weight" not in shapes
    assert shapes["blocks.2.se_block.conv1.conv.weight"] == (128, 1024, 1)
    assert shapes["mfa.conv.conv.weight"] == (3072, 3072, 1)
    assert shapes["asp.tdnn.conv.conv.weight"] == (128, 9216, 1)
    assert shapes["asp.conv.conv.weight"] == (3072, 128, 1)
    assert shapes["asp_bn.norm.running_var"] == (6144,)
    assert shapes["fc.conv.weight"] == (192, 6144, 1)
    assert len(shapes) == 231
    assert sum(v.numel() for v in random_state.values()) == 20_805_983


def test_dilated_convolutions_keep_the_length():
    """SpeechBrain's 'same' reflect padding: every block keeps the frame count."""
    torch.manual_seed(0)
    model = ECAPATDNN(channels=(64, 64, 64, 64, 192), attention_channels=8, lin_neurons=4).eval()
    x = torch.randn(1, 50, 80)
    lengths = []
    h = x.transpose(1, 2)
    for block in model.blocks:
        h = block(h)
        lengths.append(h.shape[-1])
    assert lengths == [50] * 4
    assert model(x).shape == (1, 4)


# --------------------------------------------------------------------------- the features


def _f1_hz() -> float:
    """The first of the 82 mel-spaced points above 0 Hz (0..8000 Hz split into 81 mel steps)."""
    top_mel = 2595 * math.log10(1 + 8000 / 700)
    return 700 * (10 ** (top_mel / 81 / 2595) - 1)


def test_filterbank_by_hand():
    fb = mel_filterbank()
    assert fb.shape == (201, 80) and fb.dtype == torch.float32
    # Filter 0 is centred at f1 ~ 22 Hz with half-width f1: of the 40 Hz-spaced FFT bins only
    # bin 1 (40 Hz) is inside, at 1 - (40 - f1) / f1.
    f1 = _f1_hz()
    assert 22.0 < f1 < 22.3
    assert torch.count_nonzero(fb[:, 0]) == 1
    assert float(fb[1, 0]) == pytest.approx(2 - 40 / f1, abs=1e-5)
    # every filter peaks at the FFT bin nearest its centre, with peak <= 1, and none is empty
    top_mel = 2595 * math.log10(1 + 8000 / 700)
    for i in range(80):
        centre = 700 * (10 ** ((i + 1) * top_mel / 81 / 2595) - 1)
        assert int(fb[:, i].argmax()) == round(centre / 40)
    assert float(fb.max()) <= 1.0 and bool((fb.sum(dim=0) > 0).all())
    assert float(fb.min()) == 0.0


def _tone(hz: float, seconds: float, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return (amplitude * torch.sin(2 * math.pi * hz * t)).float()


def test_pure_tone_level_by_hand():
    """A 1 kHz sine of amplitude A sits exactly on FFT bin 25 (1000 / 40 Hz). With the periodic
    400-point Hamming window (0.54 - 0.46 cos) its complex half (A/2) spreads to exactly three bins:
    |X25| = A/2 * 0.54 * 400 and |X24| = |X26| = A/2 * 0.23 * 400. The 1 kHz tone lies between
    the centres of filters 27 (~972 Hz) and 28 (~1025 Hz); filter 28 gets the most, and a middle
    frame's level is 10 log10 of the filter-weighted power."""
    A = 0.5
    feats = fbank(_tone(1000.0, 1.0, A))
    assert feats.shape == (1 + SR // 160, 80)
    frame = feats[50]
    assert int(frame.argmax()) == 28
    top_mel = 2595 * math.log10(1 + 8000 / 700)
    hz = [700 * (10 ** (k * top_mel / 81 / 2595) - 1) for k in range(82)]

    def weight(i: int, f: float) -> float:  # SpeechBrain's symmetric triangle of filter i at f Hz
        return max(0.0, 1 - abs(f - hz[i + 1]) / (hz[i + 1] - hz[i]))

    p25, p_side = (A / 2 * 0.54 * 400) ** 2, (A / 2 * 0.23 * 400) ** 2
    for i in (27, 28):
        power = weight(i, 1000) * p25 + (weight(i, 960) + weight(i, 1040)) * p_side
        assert float(frame[i]) == pytest.approx(10 * math.log10(power), abs=1e-3)


def test_level_floor_is_80_db_under_the_maximum():
    """Silent frames are clamped at 1e-10 (-100 dB), then floored at the utterance's max - 80 dB."""
    wave = torch.cat([_tone(1000.0, 0.5), torch.zeros(SR)])
    feats = fbank(wave)
    floor = float(feats.max()) - 80.0
    assert float(feats.min()) == pytest.approx(floor, abs=1e-4)
    assert bool(torch.all(feats[-40:] == feats.min()))  # frames whose window is all zeros


def test_sentence_mean_norm():
    feats = torch.randn(120, 80) * 5 + 3
    normed = sentence_mean_norm(feats)
    assert torch.allclose(normed.mean(dim=0), torch.zeros(80), atol=1e-5)
    assert torch.allclose(normed.std(dim=0), feats.std(dim=0))  # std left alone (std_norm=False)


# --------------------------------------------------------------------------- embedding real audio


def test_embeds_a_real_voice_deterministically(encoder, voice, weights_file, random_state):
    first = encoder.embed_audio(voice)
    second = encoder.embed_audio(voice)
    assert first.shape == (192,) and first.dtype == np.float32
    assert np.isfinite(first).all() and np.abs(first).sum() > 0
    assert np.array_equal(first, second)
    assert np.array_equal(first, ECAPA(weights=weights_file).embed_audio(voice))
    assert encoder.weights_sha256 == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert encoder.published is False  # random weights are not SpeechBrain's file
    assert encoder.card.dim == 192 and "voxceleb1" in encoder.card.overlaps


def test_gain_does_not_change_the_embedding(encoder, voice):
    """A gain is a constant dB offset, which the sentence mean normalisation removes (the floor
    moves with the maximum): the embedding is the same up to float rounding through the net."""
    base = encoder.embed_audio(voice)
    quieter = encoder.embed_audio(voice * np.float32(0.25))
    assert np.allclose(base, quieter, rtol=1e-3, atol=1e-3 * np.abs(base).max())


def test_safetensors_weights_load_the_same(tmp_path, encoder, voice, random_state):
    from safetensors.torch import save_file

    path = tmp_path / "ecapa.safetensors"
    save_file({k: v.contiguous() for k, v in random_state.items()}, path)
    assert np.array_equal(ECAPA(weights=path).embed_audio(voice), encoder.embed_audio(voice))


def test_too_short_is_rejected(encoder):
    with pytest.raises(ItemRejected, match=r"too short for ecapa: 0\.49 s"):
        encoder.embed_audio(np.zeros(int(0.49 * SR), np.float32))
    noise = np.random.default_rng(0).normal(0, 0.1, SR // 2).astype(np.float32)
    assert encoder.embed_audio(noise).shape == (192,)  # 0.5 s: kept
    with pytest.raises(ItemRejected, match=r"silent: no non-zero sample in 1\.00 s"):
        encoder.embed_audio(np.zeros(SR, np.float32))
    with pytest.raises(ItemRejected, match="non-finite"):
        encoder.embed_audio(np.full(SR, np.nan, np.float32))


# --------------------------------------------------------------------------- bad weights: one line


def _one_line_error(path, match: str) -> str:
    with pytest.raises(EncoderError) as info:
        ECAPA(weights=path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text
    assert match in text, text
    return text


def test_wrong_shape_names_the_key(tmp_path, random_state):
    bad = dict(random_state)
    bad["blocks.2.res2net_block.blocks.3.conv.conv.weight"] = torch.zeros(128, 128, 5)
    path = tmp_path / "wrong_shape.ckpt"
    torch.save(bad, path)
    _one_line_error(
        path,
        "blocks.2.res2net_block.blocks.3.conv.conv.weight has shape (128, 128, 5), expected (128, 128, 3)",
    )


def test_wrong_key_names_the_key(tmp_path, random_state):
    # the same tensors under a prefix (the way a whole-model checkpoint would name them)
    path = tmp_path / "prefixed.ckpt"
    torch.save({f"embedding_model.{k}": v for k, v in list(random_state.items())[:3]}, path)
    _one_line_error(path, "missing key blocks.0.conv.conv.weight")
    extra = dict(random_state) | {"classifier.weight": torch.zeros(7205, 192)}
    path = tmp_path / "extra.ckpt"
    torch.save(extra, path)
    _one_line_error(path, "unexpected key classifier.weight")


def test_not_weights_files(tmp_path, real_wavs):
    _one_line_error(real_wavs[0], "not a readable torch checkpoint")  # a wav
    _one_line_error(tmp_path / "absent.ckpt", "file not found")
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    _one_line_error(empty, "empty file")
    not_dict = tmp_path / "list.ckpt"
    torch.save([torch.zeros(3)], not_dict)
    _one_line_error(not_dict, "not a state dict")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    _one_line_error(garbage, "not a weights file")


class _Payload:  # any class: weights_only refuses to rebuild it
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "pickle.ckpt"
    torch.save({"blocks.0.conv.conv.weight": _Payload()}, path)
    with pytest.raises(EncoderError, match="loads without pickle") as info:
        ECAPA(weights=path)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- no weights, download


def test_no_weights_and_no_download_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(EncoderError, match="needs its weights: --encoder-weights FILE") as info:
        ECAPA()
    assert "\n" not in str(info.value) and "--allow-download" in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_checked_download(tmp_path, monkeypatch, weights_file, voice, encoder):
    """--allow-download fetches the pinned URL into the download cache and keeps it only with the
    pinned sha256 (a file:// URL and the test's weights stand in for Hugging Face's file here)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(ecapa, "WEIGHTS_URL", weights_file.as_uri())
    monkeypatch.setattr(ecapa, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(EncoderError, match="expected " + "0" * 64) as info:
        ECAPA(allow_download=True)
    assert "\n" not in str(info.value)
    cache = tmp_path / "cache" / "avmatch" / "encoders"
    assert not any(cache.iterdir())  # nothing kept
    monkeypatch.setattr(ecapa, "WEIGHTS_SHA256", hashlib.sha256(weights_file.read_bytes()).hexdigest())
    downloaded = ECAPA(allow_download=True)
    assert downloaded.weights_path == cache / ecapa.CACHE_NAME and downloaded.published
    assert np.array_equal(downloaded.embed_audio(voice), encoder.embed_audio(voice))


def test_pinned_download_url():
    assert ecapa.WEIGHTS_URL == (
        "https://huggingface.co/speechbrain/spkrec-ecapa-voxceleb/resolve/"
        "0f99f2d0ebe89ac095bcc5903c4dd8f72b367286/embedding_model.ckpt"
    )
    assert ecapa.WEIGHTS_SHA256 == "0575cb64845e6b9a10db9bcb74d5ac32b326b8dc90352671d345e2ee3d0126a2"
