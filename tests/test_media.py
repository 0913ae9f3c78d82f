"""avdata.media on real wav/mp4 files and on broken inputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile

from avdata.errors import InputError
from avdata.media import decode_audio, decode_video_frames, load_wav


def test_decode_audio_real_wavs_has_header_length(real_wavs):
    for wav in real_wavs:
        expected = soundfile.info(str(wav)).frames  # 16 kHz files, decoded at 16 kHz
        wave = decode_audio(wav, sr=16000)
        assert wave.dtype == np.float32 and wave.ndim == 1
        assert abs(wave.shape[0] - expected) <= 1
        assert 0.0 < np.abs(wave).max() <= 1.0


def test_decode_audio_resamples(real_wavs):
    wav = real_wavs[0]
    duration = soundfile.info(str(wav)).duration
    wave = decode_audio(wav, sr=22050)
    assert abs(wave.shape[0] - duration * 22050) <= 0.01 * 22050


def test_decode_audio_matches_soundfile_on_wav(real_wavs):
    """Same samples as libsndfile: the ffmpeg path does not alter 16 kHz mono PCM."""
    wav = real_wavs[0]
    reference, _ = soundfile.read(str(wav), dtype="float32")
    np.testing.assert_allclose(decode_audio(wav, sr=16000), reference, atol=1e-6)


def test_decode_audio_of_mp4_is_mono_8_seconds(real_mp4s):
    for video in real_mp4s:
        wave = decode_audio(video, sr=16000)
        assert wave.dtype == np.float32 and wave.ndim == 1
        assert abs(wave.shape[0] - 8.0 * 16000) <= 0.05 * 16000
        assert np.abs(wave).max() > 0.01


def test_load_wav_uses_native_rate_for_wav_and_mp4(real_wavs, real_mp4s):
    wave, sr = load_wav(real_wavs[0])
    assert sr == 16000 and wave.dtype == np.float32
    assert wave.shape[0] == soundfile.info(str(real_wavs[0])).frames
    wave, sr = load_wav(real_mp4s[0])  # not readable by libsndfile: ffmpeg fallback
    assert sr == 16000 and wave.ndim == 1
    assert abs(wave.shape[0] - 8.0 * sr) <= 0.05 * sr


def test_decode_video_frames_one_per_second(real_mp4s):
    for video in real_mp4s:
        frames = decode_video_frames(video, fps=1.0)
        assert 7 <= len(frames) <= 9
        for frame in frames:
            assert frame.shape == (512, 512, 3) and frame.dtype == np.uint8
        assert frames[0].std() > 10  # a real picture, not a blank buffer
        assert not np.array_equal(frames[0], frames[-1])


def test_decode_video_frames_max_frames(real_mp4s):
    frames = decode_video_frames(real_mp4s[0], fps=25.0, max_frames=3)
    assert len(frames) == 3
    assert all(frame.shape == (512, 512, 3) for frame in frames)


# --- bad inputs -------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture
def bad_files(tmp_path, real_wavs, real_mp4s) -> dict[str, Path]:
    mp4_bytes = real_mp4s[0].read_bytes()
    wav_bytes = real_wavs[0].read_bytes()
    return {
        "zero-byte": _write(tmp_path / "empty.mp4", b""),
        "truncated mp4": _write(tmp_path / "half.mp4", mp4_bytes[: len(mp4_bytes) // 2]),
        "truncated wav": _write(tmp_path / "half.wav", wav_bytes[: len(wav_bytes) // 2]),
        "random bytes": _write(tmp_path / "noise.mp4", os.urandom(20000)),
        "text file": _write(tmp_path / "notes.wav", b"this is not audio\n" * 50),
        "missing": tmp_path / "does_not_exist.wav",
    }


@pytest.mark.parametrize("decode", [decode_audio, load_wav, decode_video_frames])
def test_bad_inputs_raise_one_line_input_error(bad_files, decode):
    for kind, path in bad_files.items():
        with pytest.raises(InputError) as caught:
            decode(path)
        message = str(caught.value)
        assert str(path) in message, kind
        assert "\n" not in message, kind
        assert caught.value.reason, kind


def test_reasons_say_what_is_wrong(bad_files):
    def reason(path, decode=decode_audio):
        with pytest.raises(InputError) as caught:
            decode(path)
        return caught.value.reason

    assert reason(bad_files["zero-byte"]) == "empty file"
    assert reason(bad_files["missing"]) == "file not found"
    assert "truncated" in reason(bad_files["truncated mp4"])
    assert "truncated" in reason(bad_files["truncated wav"])  # ffmpeg path
    assert "truncated" in reason(bad_files["truncated wav"], load_wav)  # soundfile path


def test_wav_named_mp4_has_no_video_stream(tmp_path, real_wavs):
    """ffmpeg sniffs the content, not the extension: the audio decodes, the video does not."""
    disguised = _write(tmp_path / "voice.mp4", real_wavs[0].read_bytes())
    with pytest.raises(InputError) as caught:
        decode_video_frames(disguised)
    assert caught.value.reason == "no video stream"
    assert str(disguised) in str(caught.value)
    np.testing.assert_array_equal(decode_audio(disguised), decode_audio(real_wavs[0]))


def test_video_only_file_has_no_audio_stream(tmp_path, real_mp4s):
    import ffmpeg

    from avdata.media import ffmpeg_exe

    silent_video = tmp_path / "video_only.mp4"
    ffmpeg.input(str(real_mp4s[0])).output(str(silent_video), map="0:v:0", vcodec="copy", t=1).run(
        cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True
    )
    assert len(decode_video_frames(silent_video)) >= 1
    with pytest.raises(InputError) as caught:
        decode_audio(silent_video)
    assert caught.value.reason == "no audio stream"
