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
from avdata.media import AudioStream, check_sample_rate, open_audio

__all__ = [
    "SPEC_SHAPE",
    "SPEC_CONFIG",
    "spectrogram",
    "spectrogram_windows",
    "spectrogram_windows_streamed",
    "audio_features",
    "waveform_windows",
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
        f"wrap (tile) the resampled waveform to {MIN_SAMPLES_FOR_ONE_WINDOW} samples before mean subtraction"
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


# Kernels that give the same bits on every x86-64 CPU. numpy runs np.log10 and the absolute
# value of complex arrays through SIMD kernels chosen per CPU (on AVX-512 machines, SVML's
# log10), which differ from the AVX2 and plain kernels in the last bits of float64, and a
# last-bit difference occasionally rounds to another float32 dB value. Below, only
# +, -, *, / and sqrt (correctly rounded in every IEEE kernel) and frexp (exact) are used.
_LN2 = 0.6931471805599453
_INV_LN10 = 0.4342944819032518
_SQRT_HALF = 0.7071067811865476
# 2 * s**(2k+1) / (2k+1), k = 11..0: ln(m) = 2 atanh(s) for s = (m - 1) / (m + 1), |s| <= 0.172,
# where s**24 / 25 < 3e-20: the series is exact to float64 rounding.
_ATANH_TERMS = [2.0 / (2 * k + 1) for k in range(11, -1, -1)]


def stable_magnitude(spectrum: np.ndarray) -> np.ndarray:
    """|z| of a complex array as sqrt(re^2 + im^2), the same bits on every CPU (magnitudes
    here are far from float64 overflow, which hypot's scaling guards against)."""
    re, im = spectrum.real, spectrum.imag
    return np.sqrt(re * re + im * im)


def stable_log10(x: np.ndarray) -> np.ndarray:
    """log10 of positive float64 values, within 2e-16 relative of numpy's and the same bits
    on every CPU (see above): x = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m by the atanh series."""
    x = np.asarray(x, dtype=np.float64)
    m, e = np.frexp(x)  # m in [0.5, 1)
    low = m < _SQRT_HALF
    m = np.where(low, m * 2.0, m)
    e = (e - low).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    series = np.full_like(s, _ATANH_TERMS[0])
    for c in _ATANH_TERMS[1:]:
        series = series * s2 + c
    return (series * s + e * _LN2) * _INV_LN10


def _mono(wave: np.ndarray, source: str | Path) -> np.ndarray:
    """A 1-D float32 waveform; a 2-D one, (channels, samples) or (samples, channels), averaged
    over its short axis."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=int(np.argmin(wave.shape)), dtype=np.float32)
    if wave.ndim != 1:
        raise InputError(source, f"audio must be 1-D or 2-D, got shape {wave.shape}")
    return wave


def _validate(wave: np.ndarray, sr: int, source: str | Path) -> np.ndarray:
    wave = _mono(wave, source)
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
    return stable_magnitude(scipy.fft.rfft(frames * _WINDOW, axis=-1, overwrite_x=True))


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
    return _to_db_windows(magnitude[: n_windows * FRAMES, :FREQ_BINS], float(magnitude.max()), n_windows)


def _to_db_windows(kept: np.ndarray, peak_magnitude: float, n_windows: int) -> np.ndarray:
    """Step 5-6: the kept magnitudes (n_windows * 125 frames, 224 bins) in dB relative to the
    clip's peak magnitude -> float32 (n_windows, 224, 125)."""
    ref_db = 20.0 * float(stable_log10(np.float64(max(AMIN, peak_magnitude))))
    # librosa floors at (max of the dB array) - top_db; that max is exactly 0 dB.
    db = 20.0 * stable_log10(np.maximum(AMIN, kept)) - ref_db
    np.maximum(db, -TOP_DB, out=db)
    windows = db.reshape(n_windows, FRAMES, FREQ_BINS).transpose(0, 2, 1)
    return np.ascontiguousarray(windows, dtype=np.float32)


def spectrogram(wave: np.ndarray, sr: int, source: str | Path = "<array>") -> np.ndarray:
    """The reference 224x125 float32 spectrogram of a clip (its first 125 frames)."""
    return spectrogram_windows(wave, sr, max_windows=1, source=source)[0]


# A clip is decoded whole only up to this many input values (samples x channels, about 60 s at
# 16 kHz mono; ~130 MB at peak); longer ones are streamed (below) with the same result.
IN_MEMORY_MAX_VALUES = 60 * 16000
STREAM_BLOCK = 1 << 16  # input samples per block when streaming


def audio_features(
    path: str | Path, max_windows: int = 1, max_in_memory: int = IN_MEMORY_MAX_VALUES
) -> np.ndarray:
    """Load any audio or video file (wav fast path, else ffmpeg) -> (n, 224, 125) windows.

    Clips with more than `max_in_memory` values are never held whole: they are decoded twice
    block by block (:func:`spectrogram_windows_streamed`), giving the same bytes in bounded
    memory."""
    wave, stream = open_audio(path, max_in_memory=max_in_memory)
    if wave is not None:
        return spectrogram_windows(wave, stream.sr, max_windows=max_windows, source=path)
    return spectrogram_windows_streamed(stream, max_windows=max_windows)


class ArrayStream:
    """An in-memory mono waveform read block by block, with :class:`avdata.media.AudioStream`'s
    interface, for :func:`spectrogram_windows_streamed`."""

    def __init__(self, wave: np.ndarray, sr: int, source: str | Path):
        self.path, self.sr, self._wave = source, sr, wave
        self.n_samples = int(wave.shape[0])

    def blocks(self, block_size: int = STREAM_BLOCK):
        for start in range(0, self.n_samples, block_size):
            yield self._wave[start : start + block_size]


def waveform_windows(
    wave,
    sr,
    max_windows: int = 1,
    source: str | Path = "<waveform>",
    max_in_memory: int = IN_MEMORY_MAX_VALUES,
) -> np.ndarray:
    """spectrogram_windows of a waveform given as an array, with the bounds a file gets
    (:func:`audio_features`): a sample rate outside the accepted range, or not a whole number
    of Hz, is an InputError, and a waveform of more than `max_in_memory` values goes through
    the streamed computation (the same bytes in bounded memory)."""
    sr = check_sample_rate(source, sr, where="")
    if np.size(wave) <= max_in_memory:
        return spectrogram_windows(wave, sr, max_windows=max_windows, source=source)
    return spectrogram_windows_streamed(ArrayStream(_mono(wave, source), sr, source), max_windows)


# --- the same recipe on a stream, in bounded memory ---------------------------------------------
#
# Byte-identical to spectrogram_windows on the whole clip, because every step is either
# element-wise, or a maximum, or done the way numpy/soxr do it on a whole array:
# * means: numpy sums float32 with pairwise summation, splitting n > 128 values at
#   n2 = n//2 - (n//2) % 8; _PairwiseSum follows that tree down to leaves of <= 2**20 values,
#   sums each leaf with np.sum and adds the halves back up in the same order; the mean is then
#   float32(float64(sum) / n), as np.mean computes it;
# * soxr's streaming resampler gives the same samples as its one-shot call;
# * each STFT frame's FFT does not depend on how many frames are transformed together;
# * max |x - m| over the clip is max(hi - m, m - lo) (rounding is monotonic).


def _pairwise_leaves(n: int, leaf: int) -> list[int]:
    if n <= leaf:
        return [n]
    half = n // 2
    half -= half % 8
    return _pairwise_leaves(half, leaf) + _pairwise_leaves(n - half, leaf)


class _PairwiseSum:
    """np.sum of a float32 array of known length n, fed in arbitrary pieces, bit for bit."""

    LEAF = 1 << 20

    def __init__(self, n: int):
        self.n = n
        self._sizes = _pairwise_leaves(n, self.LEAF)
        self._sums: list[np.float32] = []
        self._pending: list[np.ndarray] = []
        self._pending_n = 0

    def add(self, values: np.ndarray) -> None:
        self._pending.append(values)
        self._pending_n += values.shape[0]
        while len(self._sums) < len(self._sizes) and self._pending_n >= self._sizes[len(self._sums)]:
            size = self._sizes[len(self._sums)]
            joined = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._sums.append(np.sum(joined[:size]))
            rest = joined[size:]
            self._pending, self._pending_n = ([rest] if rest.shape[0] else []), rest.shape[0]

    def total(self) -> np.float32:
        if len(self._sums) != len(self._sizes) or self._pending_n:
            raise RuntimeError(f"pairwise sum fed {self._pending_n} values off its length {self.n}")
        sums = iter(self._sums)

        def combine(n: int) -> np.float32:
            if n <= self.LEAF:
                return next(sums)
            half = n // 2
            half -= half % 8
            return combine(half) + combine(n - half)

        return combine(self.n)

    def mean(self) -> np.float32:
        return np.float32(np.float64(self.total()) / self.n)


def _resampled_blocks(stream: AudioStream, n_out: int, on_input=None):
    """The clip resampled to 22,050 Hz, block by block, exactly `n_out` samples in all (the
    length rule of _resample); `on_input` sees every input block first."""
    resampler = (
        None
        if stream.sr == SAMPLE_RATE
        else soxr.ResampleStream(stream.sr, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    )
    produced = 0
    blocks = stream.blocks(STREAM_BLOCK)
    done = False
    while not done:
        block = next(blocks, None)
        done = block is None
        if block is not None and on_input is not None:
            on_input(block)
        if resampler is None:
            out = block if block is not None else np.zeros(0, np.float32)
        else:
            out = resampler.resample_chunk(block if block is not None else np.zeros(0, np.float32), last=done)
        out = np.asarray(out, dtype=np.float32)[: n_out - produced]
        produced += out.shape[0]
        if out.shape[0]:
            yield out
    if produced < n_out:
        yield np.zeros(n_out - produced, dtype=np.float32)


def spectrogram_windows_streamed(stream: AudioStream, max_windows: int = 1) -> np.ndarray:
    """spectrogram_windows of a clip read from `stream`, holding a block at a time (two decodes).

    Pass 1 finds the clip's means (input and resampled), extremes and finiteness; pass 2 runs
    mean removal, pre-emphasis and the STFT over the stream, keeping only the frames of the
    windows returned and the running maximum magnitude (the dB reference)."""
    if max_windows < 1:
        raise ValueError(f"max_windows must be >= 1, got {max_windows}")
    source, sr, n_in = stream.path, stream.sr, stream.n_samples
    duration = n_in / sr
    if duration < MIN_DURATION_S:
        raise InputError(source, f"too short ({duration:.2f} s < {MIN_DURATION_S} s)")
    n_out = n_in if sr == SAMPLE_RATE else int(math.ceil(n_in * SAMPLE_RATE / sr))
    if n_out < MIN_SAMPLES_FOR_ONE_WINDOW:  # tiling needs the whole clip: it is short anyway
        wave = np.concatenate(list(stream.blocks(STREAM_BLOCK)))
        return spectrogram_windows(wave, sr, max_windows=max_windows, source=source)

    # Pass 1: means, extremes, finiteness.
    input_sum, output_sum = _PairwiseSum(n_in), _PairwiseSum(n_out)
    facts = {"n": 0, "finite": True, "lo": np.float32(np.inf), "hi": np.float32(-np.inf)}

    def see_input(block: np.ndarray) -> None:
        input_sum.add(block)
        facts["n"] += block.shape[0]
        if block.shape[0]:
            facts["finite"] = facts["finite"] and bool(np.all(np.isfinite(block)))
            facts["lo"] = min(facts["lo"], block.min())
            facts["hi"] = max(facts["hi"], block.max())

    for block in _resampled_blocks(stream, n_out, on_input=see_input):
        output_sum.add(block)
    if facts["n"] != n_in:
        raise InputError(source, f"decoded {facts['n']} samples, the header declares {n_in}")
    if not facts["finite"]:
        raise InputError(source, "audio contains NaN or infinite samples")
    input_mean = input_sum.mean()
    peak = float(max(facts["hi"] - input_mean, input_mean - facts["lo"]))
    if peak < SILENCE_PEAK:
        raise InputError(source, f"silent audio (peak {peak:.1e} < {SILENCE_PEAK:.0e})")
    mean = output_sum.mean()

    # Pass 2: mean removal, pre-emphasis and the STFT, frame batch by frame batch.
    n_frames = n_out // HOP + 1  # frames of the centred STFT of n_out samples
    n_windows = min(max_windows, n_frames // FRAMES)
    n_kept = n_windows * FRAMES
    kept = np.empty((n_kept, FREQ_BINS), dtype=np.float64)
    peak_magnitude = 0.0
    # `pending` holds emphasised samples from frame `next_frame`'s start on (float64, as the
    # whole-clip array); it starts with the centring pad.
    pending = [np.zeros(N_FFT // 2, dtype=np.float64)]
    pending_n, next_frame = N_FFT // 2, 0
    previous = None  # last mean-removed sample of the previous block, for pre-emphasis
    batch_frames = 512

    def run_frames(final: bool) -> None:
        nonlocal pending, pending_n, next_frame, peak_magnitude
        available = (pending_n - N_FFT) // HOP + 1 if pending_n >= N_FFT else 0
        if final:
            available = n_frames - next_frame
        while available > 0 and (available >= batch_frames or final):
            count = min(batch_frames, available)
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            frames = np.lib.stride_tricks.sliding_window_view(joined[: (count - 1) * HOP + N_FFT], N_FFT)[
                ::HOP
            ]
            magnitude = stable_magnitude(scipy.fft.rfft(frames * _WINDOW, axis=-1, overwrite_x=True))
            peak_magnitude = max(peak_magnitude, float(magnitude.max()))
            if next_frame < n_kept:
                take = min(count, n_kept - next_frame)
                kept[next_frame : next_frame + take] = magnitude[:take, :FREQ_BINS]
            next_frame += count
            rest = joined[count * HOP :]
            pending, pending_n = [rest], rest.shape[0]
            available -= count

    for block in _resampled_blocks(stream, n_out):
        y = block - mean
        emphasised = np.empty(y.shape[0], dtype=np.float64)
        if previous is None:
            emphasised[0] = y[0]
        else:
            emphasised[0] = y[0] - np.float32(PREEMPHASIS) * previous
        emphasised[1:] = y[1:] - np.float32(PREEMPHASIS) * y[:-1]
        previous = y[-1]
        pending.append(emphasised)
        pending_n += emphasised.shape[0]
        run_frames(final=False)
    pending.append(np.zeros(N_FFT // 2, dtype=np.float64))
    pending_n += N_FFT // 2
    run_frames(final=True)
    return _to_db_windows(kept, peak_magnitude, n_windows)
