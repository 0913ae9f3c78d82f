"""The AML reference spectrogram: a 224x125 dB magnitude spectrogram per audio window.

Recipe (docs/aml-spec.md, "Inputs"), reproduced exactly and recorded in :data:`SPEC_CONFIG`:

1. mono audio resampled to 22,050 Hz with soxr "HQ" (what ``librosa.load(sr=22050)`` does
   with its default ``res_type='soxr_hq'``), length fixed to ``ceil(n * 22050 / sr)`` samples
   as ``librosa.resample`` does;
2. subtract the mean;
3. pre-emphasis ``y[t] - 0.97 * y[t-1]``, keeping ``y[0]`` unchanged;
4. magnitude STFT: n_fft 2048, hop 512, periodic Hann window, centred with zero padding of
   n_fft // 2 on both sides (librosa's ``center=True, pad_mode='constant'``);
5. dB relative to the maximum of the *whole clip's* spectrogram, floored 80 dB below it
   (``librosa.amplitude_to_db(S, ref=np.max, top_db=80)``, amin 1e-5);
6. keep frequency bins 0..223 and frames 0..124 -> float32 array of shape (224, 125),
   values in [-80, 0]. The reference model then applies ``(x - 0.5) / 0.5``; that
   normalisation belongs to the trainer, not here.

It is written with numpy and soxr rather than by calling librosa because it runs once per clip
over a whole corpus: one strided framing, one real FFT and a log (a few ms per 7 s clip on one
core). tests/test_audio.py checks it against an independent librosa computation on real
VoxCeleb clips (max abs difference <= 1e-3 dB).

Short clips. A clip with fewer than 125 STFT frames (fewer than 124 * 512 = 63,488 samples at
22,050 Hz, about 2.88 s) would leave the 224x125 array short; the reference code crashes
there. Rule: **after resampling (step 1) and before anything else, the waveform is tiled
periodically** (``np.pad(y, (0, 63488 - len(y)), mode='wrap')``) to exactly 63,488 samples,
which gives exactly 125 centred frames; steps 2-6 then run on the tiled waveform. Tiling keeps
the spectral content of speech (no stretch of silence or zeros that would shift the dB
reference) and is deterministic.

Rejected inputs (:class:`InputError`): clips shorter than 0.5 s (tiling less than that would
mostly repeat one syllable), and silent clips (peak amplitude after removing the mean below
1e-4, so a constant DC offset counts as silence), for which "dB relative to the clip maximum"
is meaningless.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import scipy.fft
import soxr

from avdata.errors import InputError
from avdata.media import load_wav

__all__ = [
    "SPEC_SHAPE",
    "SPEC_CONFIG",
    "spectrogram",
    "spectrogram_windows",
    "audio_features",
    "hann_window",
]

SAMPLE_RATE = 22050
N_FFT = 2048
HOP = 512
PREEMPHASIS = 0.97
TOP_DB = 80.0
AMIN = 1e-5
FREQ_BINS = 224
FRAMES = 125
MIN_SAMPLES_FOR_ONE_WINDOW = (FRAMES - 1) * HOP  # 63,488 samples at 22,050 Hz give 125 frames
MIN_DURATION_S = 0.5
SILENCE_PEAK = 1e-4

SPEC_SHAPE = (FREQ_BINS, FRAMES)

SPEC_CONFIG = {
    "sample_rate": SAMPLE_RATE,
    "resampler": "soxr HQ (librosa.load res_type='soxr_hq'), length ceil(n*22050/sr)",
    "mono": "mean of channels",
    "subtract_mean": True,
    "preemphasis": PREEMPHASIS,
    "preemphasis_form": "y[t] - 0.97*y[t-1], y[0] kept",
    "n_fft": N_FFT,
    "hop_length": HOP,
    "window": "hann (periodic, scipy get_window('hann', 2048, fftbins=True))",
    "center": True,
    "pad_mode": "constant",
    "magnitude": "abs",
    "db": "20*log10(max(amin, S)) - 20*log10(max(amin, max(S over whole clip)))",
    "amin": AMIN,
    "top_db": TOP_DB,
    "freq_bins": FREQ_BINS,
    "frames": FRAMES,
    "windows": "consecutive non-overlapping 125-frame windows of one STFT of the whole clip",
    "short_clip_pad": (
        f"wrap (tile) the resampled waveform to {MIN_SAMPLES_FOR_ONE_WINDOW} samples "
        "before mean subtraction"
    ),
    "min_duration_s": MIN_DURATION_S,
    "silence_peak": SILENCE_PEAK,
    "dtype": "float32",
}


def hann_window(length: int = N_FFT) -> np.ndarray:
    """Periodic Hann window, identical to scipy ``get_window('hann', length, fftbins=True)``."""
    n = np.arange(length, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)


_WINDOW = hann_window(N_FFT)


def _validate(wave: np.ndarray, sr: int, source: str | Path) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:  # (channels, samples) or (samples, channels): average the short axis
        wave = wave.mean(axis=int(np.argmin(wave.shape)), dtype=np.float32)
    if wave.ndim != 1:
        raise InputError(source, f"audio must be 1-D or 2-D, got shape {wave.shape}")
    duration = wave.shape[0] / sr
    if duration < MIN_DURATION_S:
        raise InputError(source, f"too short ({duration:.2f} s < {MIN_DURATION_S} s)")
    if not np.all(np.isfinite(wave)):
        raise InputError(source, "audio contains NaN or infinite samples")
    peak = float(np.max(np.abs(wave - wave.mean())))  # a DC offset alone is silence too
    if peak < SILENCE_PEAK:
        raise InputError(source, f"silent audio (peak {peak:.1e} < {SILENCE_PEAK:.0e})")
    return wave


def _resample(wave: np.ndarray, sr: int) -> np.ndarray:
    """soxr HQ to 22,050 Hz with librosa.resample's length rule ceil(n * ratio)."""
    if sr == SAMPLE_RATE:
        return wave
    resampled = soxr.resample(wave, sr, SAMPLE_RATE, quality="HQ")
    n_samples = int(math.ceil(wave.shape[0] * SAMPLE_RATE / sr))
    if resampled.shape[0] > n_samples:
        resampled = resampled[:n_samples]
    elif resampled.shape[0] < n_samples:
        resampled = np.pad(resampled, (0, n_samples - resampled.shape[0]))
    return np.asarray(resampled, dtype=np.float32)


def _magnitude(wave: np.ndarray, sr: int, source: str | Path) -> np.ndarray:
    """Steps 1-4 of the recipe on a whole clip: magnitudes (n_frames, 1025), n_frames >= 125.

    Frames are rows here (the transpose of librosa's layout) so that the FFT runs over
    contiguous memory; the FFT is float64, like librosa's (float32 would move the quietest
    bins by ~0.01 dB).
    """
    y = _resample(_validate(wave, sr, source), sr)
    if y.shape[0] < MIN_SAMPLES_FOR_ONE_WINDOW:
        y = np.pad(y, (0, MIN_SAMPLES_FOR_ONE_WINDOW - y.shape[0]), mode="wrap")
    y = y - y.mean()
    emphasised = np.zeros(y.shape[0] + N_FFT, dtype=np.float64)  # with the centring pad
    body = emphasised[N_FFT // 2 : -(N_FFT // 2)]
    body[0] = y[0]
    body[1:] = y[1:] - np.float32(PREEMPHASIS) * y[:-1]  # float32 arithmetic, as librosa's
    frames = np.lib.stride_tricks.sliding_window_view(emphasised, N_FFT)[::HOP]
    return np.abs(scipy.fft.rfft(frames * _WINDOW, axis=-1, overwrite_x=True))


def spectrogram_windows(
    wave: np.ndarray, sr: int, max_windows: int = 1, source: str | Path = "<array>"
) -> np.ndarray:
    """Up to `max_windows` consecutive 224x125 windows (frames 0-124, 125-249, ...) of a clip.

    All windows come from one STFT of the whole clip and share its dB reference (the clip
    maximum over all frames and all 1025 bins). Returns float32 (n, 224, 125) with
    1 <= n <= max_windows; a clip shorter than 125 frames is tiled first (module docstring).
    `source` names the clip in errors.
    """
    if max_windows < 1:
        raise ValueError(f"max_windows must be >= 1, got {max_windows}")
    magnitude = _magnitude(wave, sr, source)
    n_windows = min(max_windows, magnitude.shape[0] // FRAMES)
    ref_db = 20.0 * np.log10(max(AMIN, float(magnitude.max())))
    kept = magnitude[: n_windows * FRAMES, :FREQ_BINS]
    # librosa floors at (max of the dB array) - top_db; that max is exactly 0 dB.
    db = 20.0 * np.log10(np.maximum(AMIN, kept)) - ref_db
    np.maximum(db, -TOP_DB, out=db)
    windows = db.reshape(n_windows, FRAMES, FREQ_BINS).transpose(0, 2, 1)
    return np.ascontiguousarray(windows, dtype=np.float32)


def spectrogram(wave: np.ndarray, sr: int, source: str | Path = "<array>") -> np.ndarray:
    """The reference 224x125 float32 spectrogram of a clip (its first 125 frames)."""
    return spectrogram_windows(wave, sr, max_windows=1, source=source)[0]


def audio_features(path: str | Path, max_windows: int = 1) -> np.ndarray:
    """Load any audio or video file (wav fast path, else ffmpeg) -> (n, 224, 125) windows."""
    wave, sr = load_wav(path)
    return spectrogram_windows(wave, sr, max_windows=max_windows, source=path)
