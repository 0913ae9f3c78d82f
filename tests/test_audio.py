"""avdata.audio: the reference 224x125 spectrogram, checked against librosa on real clips."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile

from avdata.audio import (
    SPEC_CONFIG,
    SPEC_SHAPE,
    audio_features,
    hann_window,
    spectrogram,
    spectrogram_windows,
)
from avdata.errors import InputError
from avdata.media import load_wav


def librosa_reference(path) -> np.ndarray:
    """The AML recipe written directly with librosa, independently of avdata.audio."""
    y, _ = librosa.load(path, sr=22050)
    y = y - y.mean()
    y = np.append(y[0], y[1:] - 0.97 * y[:-1])
    S = np.abs(librosa.stft(y, n_fft=2048, hop_length=512))
    return librosa.amplitude_to_db(S, ref=np.max, top_db=80)[:224, :125]


def test_matches_librosa_on_every_real_wav(real_wavs):
    assert len(real_wavs) == 10
    for wav in real_wavs:
        wave, sr = load_wav(wav)
        ours = spectrogram(wave, sr)
        expected = librosa_reference(wav)
        assert expected.shape == ours.shape == (224, 125)
        assert np.abs(ours - expected).max() <= 1e-3, wav.name


def test_shape_dtype_and_range(real_wavs):
    wave, sr = load_wav(real_wavs[0])
    spec = spectrogram(wave, sr)
    assert SPEC_SHAPE == (224, 125)
    assert spec.shape == SPEC_SHAPE and spec.dtype == np.float32
    assert spec.max() <= 0.0 and spec.min() >= -80.0
    assert spec.std() > 1.0


def test_window_is_librosa_hann():
    np.testing.assert_allclose(
        hann_window(2048), librosa.filters.get_window("hann", 2048, fftbins=True), atol=1e-12
    )


def test_config_records_the_recipe():
    assert SPEC_CONFIG["sample_rate"] == 22050
    assert (SPEC_CONFIG["n_fft"], SPEC_CONFIG["hop_length"]) == (2048, 512)
    assert SPEC_CONFIG["preemphasis"] == 0.97 and SPEC_CONFIG["top_db"] == 80.0
    assert (SPEC_CONFIG["freq_bins"], SPEC_CONFIG["frames"]) == SPEC_SHAPE
    assert "wrap" in SPEC_CONFIG["short_clip_pad"]


def test_windows_are_consecutive_slices_of_one_stft(real_wavs):
    longest = max(real_wavs, key=lambda p: soundfile.info(str(p)).frames)  # 10.3 s
    wave, sr = load_wav(longest)
    n_frames = 1 + int(np.ceil(len(wave) * 22050 / sr)) // 512
    windows = spectrogram_windows(wave, sr, max_windows=10)
    assert windows.shape == (n_frames // 125, 224, 125) == (3, 224, 125)
    assert windows.dtype == np.float32
    np.testing.assert_array_equal(windows[0], spectrogram(wave, sr))
    assert spectrogram_windows(wave, sr, max_windows=2).shape[0] == 2

    # Window k is frames 125k..125k+124 of the whole clip's dB spectrogram (clip-max reference).
    y, _ = librosa.load(longest, sr=22050)
    y = y - y.mean()
    y = np.append(y[0], y[1:] - 0.97 * y[:-1])
    full = librosa.amplitude_to_db(np.abs(librosa.stft(y, n_fft=2048, hop_length=512)), ref=np.max, top_db=80)
    for k in range(3):
        assert np.abs(windows[k] - full[:224, 125 * k : 125 * (k + 1)]).max() <= 1e-3


def test_short_clip_is_wrap_padded_deterministically(real_wavs):
    wave, sr = load_wav(real_wavs[0])
    short = wave[: int(1.2 * sr)]  # 1.2 s: about 52 frames before padding
    first = spectrogram(short, sr)
    assert first.shape == (224, 125)
    np.testing.assert_array_equal(first, spectrogram(short.copy(), sr))
    assert spectrogram_windows(short, sr, max_windows=5).shape == (1, 224, 125)
    # Tiling repeats the content: the padded part is not a flat floor of -80 dB.
    assert first[:, 100:].std() > 1.0 and (first[:, 100:] > -80).mean() > 0.5


def test_short_clip_equals_recipe_on_tiled_wave(real_wavs):
    """The documented rule: tile the 22,050 Hz waveform to 63,488 samples, then the recipe."""
    y, _ = librosa.load(real_wavs[1], sr=22050)
    y = y[: int(1.5 * 22050)]
    tiled = np.pad(y, (0, 63488 - len(y)), mode="wrap")
    t = tiled - tiled.mean()
    t = np.append(t[0], t[1:] - 0.97 * t[:-1])
    expected = librosa.amplitude_to_db(
        np.abs(librosa.stft(t, n_fft=2048, hop_length=512)), ref=np.max, top_db=80
    )
    assert expected.shape[1] == 125
    ours = spectrogram(y, 22050)
    assert np.abs(ours - expected[:224]).max() <= 1e-3


@pytest.mark.parametrize("level", [0.0, 0.25])  # digital silence; a constant DC offset
def test_silent_clip_rejected(tmp_path, level):
    path = tmp_path / "silence.wav"
    soundfile.write(str(path), np.full(3 * 16000, level, dtype=np.float32), 16000)
    with pytest.raises(InputError) as caught:
        audio_features(path)
    assert str(path) in str(caught.value) and "silent" in caught.value.reason


def test_too_short_clip_rejected(tmp_path, real_wavs):
    wave, sr = load_wav(real_wavs[0])
    path = tmp_path / "blip.wav"
    soundfile.write(str(path), wave[: int(0.3 * sr)], sr)
    with pytest.raises(InputError) as caught:
        audio_features(path)
    assert str(path) in str(caught.value)
    assert caught.value.reason == "too short (0.30 s < 0.5 s)"


def test_array_errors_name_the_given_source():
    with pytest.raises(InputError, match="clip-7: silent audio"):
        spectrogram(np.zeros(16000 * 2, dtype=np.float32), 16000, source="clip-7")


def test_audio_features_from_wav_equals_array_path(real_wavs):
    wave, sr = load_wav(real_wavs[2])
    np.testing.assert_array_equal(audio_features(real_wavs[2])[0], spectrogram(wave, sr))


def test_audio_features_from_real_mp4s(real_mp4s):
    """AAC 16 kHz stereo audio tracks, downmixed to mono: 8 s gives 2 full windows."""
    for video in real_mp4s:
        windows = audio_features(video, max_windows=4)
        assert windows.shape == (2, 224, 125) and windows.dtype == np.float32
        assert np.isfinite(windows).all()
        assert windows.max() <= 0.0 and windows.min() >= -80.0 and windows.std() > 1.0
