"""Hostile and faulty inputs at the decoders (issue #11): a dying ffmpeg is not a bad file,
absurd headers are refused from the header, and memory stays bounded for long or huge media.

The crash tests substitute the ffmpeg binary through ``AVMATCH_FFMPEG`` with a shell wrapper
around the real one, so the decode is real and only the way it ends is forced."""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile

from avdata.errors import DecoderCrashError, InputError
from avdata.media import decode_audio, decode_video_frames, load_wav

REPO = Path(__file__).resolve().parents[1]


def _wrapper(tmp_path: Path, name: str, body: str) -> tuple[Path, Path]:
    """An executable ffmpeg stand-in; every call appends a line to the returned log file."""
    log = tmp_path / f"{name}.calls"
    script = tmp_path / name
    script.write_text(f'#!/bin/sh\necho call >> "{log}"\nREAL="{imageio_ffmpeg.get_ffmpeg_exe()}"\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, log


@pytest.fixture
def kills_itself(tmp_path, monkeypatch):
    """ffmpeg runs to the end, then the process we started dies by SIGKILL."""
    script, log = _wrapper(tmp_path, "ffmpeg-kills-itself", '"$REAL" "$@"\nkill -9 $$')
    monkeypatch.setenv("AVMATCH_FFMPEG", str(script))
    return log


@pytest.fixture
def child_killed(tmp_path, monkeypatch):
    """ffmpeg (at real-time speed, -re) gets SIGKILL half a second into the decode; the shell
    around it exits with 137, as a signal that reaches only ffmpeg looks from outside."""
    script, log = _wrapper(
        tmp_path, "ffmpeg-child-killed", '"$REAL" -re "$@" &\npid=$!\nsleep 0.5\nkill -9 $pid\nwait $pid'
    )
    monkeypatch.setenv("AVMATCH_FFMPEG", str(script))
    return log


DECODERS = {
    "decode_audio": decode_audio,
    "load_wav(mp4)": load_wav,  # libsndfile cannot read mp4: the ffmpeg path
    "decode_video_frames": decode_video_frames,
}


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_ffmpeg_killed_by_a_signal_is_a_decoder_crash(kills_itself, real_mp4s, decoder):
    with pytest.raises(DecoderCrashError) as caught:
        DECODERS[decoder](real_mp4s[0])
    assert not isinstance(caught.value, InputError)
    assert "SIGKILL" in caught.value.reason and str(real_mp4s[0]) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert len(kills_itself.read_text().splitlines()) == 2  # retried once, then given up


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_ffmpeg_child_killed_mid_decode_is_a_decoder_crash(child_killed, real_mp4s, decoder):
    with pytest.raises(DecoderCrashError) as caught:
        DECODERS[decoder](real_mp4s[0])
    assert "137" in caught.value.reason and "SIGKILL" in caught.value.reason


def test_a_bad_file_through_the_wrapper_is_still_an_input_error(tmp_path, monkeypatch, real_mp4s):
    """The wrapper itself does not make failures look like crashes: a truncated file through
    a pass-through wrapper is a bad file, as with the real binary."""
    script, _ = _wrapper(tmp_path, "ffmpeg-pass-through", 'exec "$REAL" "$@"')
    monkeypatch.setenv("AVMATCH_FFMPEG", str(script))
    half = tmp_path / "half.mp4"
    data = real_mp4s[0].read_bytes()
    half.write_bytes(data[: len(data) // 2])
    for decode in (decode_audio, decode_video_frames):
        with pytest.raises(InputError):
            decode(half)


def test_extractor_lets_a_decoder_crash_through(kills_itself, real_mp4s):
    """A crash is not turned into a reject (which would mark the good file bad for good)."""
    from avdata.extract import ExtractConfig, Extractor

    row = {
        "path": str(real_mp4s[0]),
        "name": "Someone",
        "vox_id": "id10001",
        "rel_path": "id10001/x/1.mp4",
        "source_id": "x",
        "modality": "video",
    }
    with pytest.raises(DecoderCrashError):
        Extractor(ExtractConfig()).extract(row, "audio")


# --- absurd headers ---------------------------------------------------------------------------


def _wav_with_rate(path: Path, sample_rate: int, n_samples: int = 4000) -> Path:
    """A PCM16 mono RIFF/WAVE whose header claims `sample_rate` (8 KB of noise)."""
    data = np.random.default_rng(0).integers(-3000, 3000, n_samples, dtype=np.int16).tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    body = (
        b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    )
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def test_one_hertz_wav_is_refused_from_its_header(tmp_path):
    """8 KB whose header claims 1 Hz: 4000 s of audio, 88 M samples after resampling (7.3 GB
    on the old code, and accepted). Refused before any decoding, on both paths."""
    wav = _wav_with_rate(tmp_path / "one_hz.wav", 1)
    for decode in (load_wav, lambda p: decode_audio(p, sr=16000)):
        with pytest.raises(InputError) as caught:
            decode(wav)
        assert "sample rate 1 Hz" in caught.value.reason, caught.value.reason
    assert load_wav(_wav_with_rate(tmp_path / "ok.wav", 8000))[1] == 8000


def _make_video(path: Path, size: str, seconds: int = 2) -> Path:
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc=s={size}:r=2",
            "-t",
            str(seconds),
            "-c:v",
            "mpeg4",
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
    )
    return path


def test_huge_frame_size_is_refused_before_decoding(tmp_path):
    video = _make_video(tmp_path / "wide.mp4", "4800x64")
    with pytest.raises(InputError) as caught:
        decode_video_frames(video)
    assert "4800x64 exceeds the cap" in caught.value.reason


def test_large_frames_are_scaled_down_to_the_cap(tmp_path):
    video = _make_video(tmp_path / "large.mp4", "2000x1200")
    frames = decode_video_frames(video, fps=1.0)
    assert frames and all(f.shape == (614, 1024, 3) for f in frames)  # longest side 1024 (MAX_FRAME_SIDE)
    small = decode_video_frames(_make_video(tmp_path / "small.mp4", "333x251"), fps=1.0)
    assert all(f.shape == (251, 333, 3) for f in small)  # within the cap: untouched


# --- bounded memory for long audio --------------------------------------------------------------


def _long_wav(path: Path, seconds: float, sr: int = 16000, channels: int = 1) -> Path:
    rng = np.random.default_rng(1)
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(0.7 * t)) + 0.02 * rng.standard_normal(t.shape[0])
    soundfile.write(str(path), np.repeat(wave[:, None], channels, axis=1), sr, subtype="PCM_16")
    return path


def test_streamed_spectrogram_is_byte_identical(tmp_path, real_wavs, real_mp4s):
    """The bounded-memory path (two block-by-block decodes) gives exactly the bytes of the
    whole-clip path, on real clips and on long ones at several rates and channel counts."""
    from avdata.audio import audio_features

    clips = [
        *real_wavs[:4],
        real_mp4s[0],
        _long_wav(tmp_path / "long16k.wav", 70),
        _long_wav(tmp_path / "stereo44k.wav", 25, sr=44100, channels=2),
    ]
    for clip in clips:
        whole = audio_features(clip, max_windows=3, max_in_memory=10**9)
        streamed = audio_features(clip, max_windows=3, max_in_memory=0)
        assert whole.tobytes() == streamed.tobytes(), clip


def test_waveform_arrays_get_the_file_bounds(tmp_path):
    """#20 item 6: a waveform given as an array gets a file's bounds: a sample rate outside
    4-768 kHz or not a whole number of Hz is one InputError (sr=0 divided by zero, sr=1 took
    4 GB), and a long waveform is streamed, giving exactly the whole-array bytes."""
    import tracemalloc

    from avdata.audio import spectrogram_windows, waveform_windows

    noise = np.random.default_rng(0).standard_normal(2000)
    for sr, reason in [
        (0, "absurd audio sample rate 0 Hz"),
        (1, "absurd audio sample rate 1 Hz (accepted: 4000-768000 Hz)"),
        (10**7, "absurd audio sample rate 10000000 Hz"),
        (16000.5, "audio sample rate 16000.5 is not a whole number of Hz"),
        (float("nan"), "audio sample rate nan is not a whole number of Hz"),
    ]:
        with pytest.raises(InputError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            waveform_windows(noise, sr, source="<waveform>")
    for name, seconds, sr, channels in (("long16k", 70, 16000, 1), ("stereo44k", 25, 44100, 2)):
        wave, _ = soundfile.read(
            str(_long_wav(tmp_path / f"{name}.wav", seconds, sr, channels)), always_2d=True
        )
        wave = wave.T if channels > 1 else wave[:, 0]  # (channels, samples) and 1-D
        whole = spectrogram_windows(wave, sr, max_windows=3)
        assert waveform_windows(wave, sr, max_windows=3, max_in_memory=0).tobytes() == whole.tobytes(), name
    wave = np.tile(wave[0].astype(np.float32), 10)  # 250 s at 44.1 kHz
    tracemalloc.start()
    waveform_windows(wave, 44100)  # numpy's allocations: ~24 MB streamed, ~420 MB as a whole array
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 60e6, peak


# Peak RSS read from /proc/self/status (VmHWM, this process's own address space): a child's
# getrusage ru_maxrss also counts the parent's RSS at fork time, and pytest's is large.
PEAK_RSS = r"""
import json, sys
from avdata.audio import audio_features
windows = audio_features(sys.argv[1], max_windows=2)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"shape": list(windows.shape), "rss_mb": int(hwm.split()[1]) / 1024}))
"""


def _peak_rss_mb(clip: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(clip)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=600,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "minutes", [pytest.param(4, id="4min"), pytest.param(60, id="60min", marks=pytest.mark.slow)]
)
def test_long_wav_peak_memory_is_bounded(tmp_path, real_wavs, minutes):
    """Peak RSS of one child computing the spectrograms of a long wav stays within 100 MB of
    the same child on a 4-10 s clip (the old code took ~400 MB more at 4 minutes, 6.9 GB at 60)."""
    baseline = _peak_rss_mb(real_wavs[0])
    long = _peak_rss_mb(_long_wav(tmp_path / "long.wav", minutes * 60))
    assert long["shape"] == [2, 224, 125]
    assert long["rss_mb"] - baseline["rss_mb"] < 100, (baseline, long)
