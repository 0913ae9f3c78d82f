"""Voices of a synthetic identity: glottal source, spectral tilt, formants, prosody, room noise."""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.signal import butter, lfilter, sosfilt

from avdata.synth.identity import IdentityAttributes

SAMPLE_RATE = 16000

# Adult male formants F1-F3 (Hz; Peterson & Barney style) for a few vowels; F4/F5 fixed.
_VOWELS = np.array(
    [
        [730, 1090, 2440],  # a
        [530, 1840, 2480],  # e
        [270, 2290, 3010],  # i
        [570, 840, 2410],  # o
        [300, 870, 2240],  # u
        [660, 1720, 2410],  # ae
        [640, 1190, 2390],  # uh
        [390, 1990, 2550],  # ih
    ],
    dtype=float,
)
_BANDWIDTHS = np.array([70, 100, 150, 220, 300], dtype=float)


def _resonator_sos(freqs, bandwidths, sr=SAMPLE_RATE) -> np.ndarray:
    """Cascade of 2nd-order formant resonators (Klatt), each with unit gain at DC."""
    sos = []
    for f, bw in zip(freqs, bandwidths):
        f = min(f, 0.45 * sr)
        r = math.exp(-math.pi * bw / sr)
        c = 2 * r * math.cos(2 * math.pi * f / sr)
        gain = 1 - c + r * r
        sos.append([gain, 0, 0, 1, -c, r * r])
    return np.array(sos)


@functools.cache
def _bandpass_sos(lo: float, hi: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Band-pass for fricative and burst noise (cached: only a handful of bands are used)."""
    return butter(2, [lo, hi], btype="bandpass", fs=sr, output="sos")


def _raised_cosine_envelope(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    attack, release = min(attack, n // 2), min(release, n // 2)
    if attack:
        env[:attack] = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, attack))
    if release:
        env[n - release :] = 0.5 + 0.5 * np.cos(np.linspace(0, math.pi, release))
    return env


def synth_voice(
    at: IdentityAttributes, rng: np.random.Generator, duration: float, sr: int = SAMPLE_RATE
) -> tuple[np.ndarray, np.ndarray]:
    """One utterance of babble in the identity's voice.

    Returns (audio float32 in [-1, 1], per-sample mouth opening in [0, 1]).
    """
    n = int(round(duration * sr))
    f0_base = at.f0_hz * math.exp(rng.normal(0, 0.03))  # per-clip pitch offset
    rate = at.syllables_per_s * math.exp(rng.normal(0, 0.06))  # per-clip rate offset
    fscale = at.formant_scale * math.exp(rng.normal(0, 0.015))

    # --- prosody: phrases of syllables separated by pauses
    syllables = []  # (start, vowel_start, end, vowel, accent, onset); times in seconds
    t = rng.uniform(0.12, 0.4)
    phrase_bounds = []
    while t < duration - 0.35:
        p_start = t
        for _ in range(int(rng.integers(3, 10))):
            dur = rng.uniform(0.7, 1.3) / rate
            if t + dur > duration - 0.1:
                break
            onset = int(rng.choice(4, p=[0.35, 0.35, 0.2, 0.1]))  # none, fricative, plosive, long vowel
            cons = {0: 0.0, 1: rng.uniform(0.05, 0.09), 2: rng.uniform(0.03, 0.05), 3: 0.0}[onset]
            if onset == 3:
                dur *= 1.5
            syllables.append(
                (
                    t,
                    t + cons,
                    min(t + dur, duration - 0.05),
                    int(rng.integers(len(_VOWELS))),
                    rng.normal(0, 0.05),
                    onset,
                )
            )
            t += dur
        phrase_bounds.append((p_start, t))
        t += rng.uniform(0.15, 0.55)

    # --- F0 track: declination over each phrase, per-syllable accents, jitter and age tremor
    times = np.arange(n) / sr
    ctrl_t, ctrl_f = [0.0], [f0_base]
    for start, v_start, end, _, accent, _ in syllables:
        ctrl_t.append((v_start + end) / 2)
        p_start, p_end = next(b for b in phrase_bounds if b[0] <= start <= b[1])
        decl = 1.08 - 0.16 * (ctrl_t[-1] - p_start) / max(p_end - p_start, 1e-3)
        ctrl_f.append(f0_base * decl * (1 + accent))
    ctrl_t.append(duration)
    ctrl_f.append(f0_base * 0.92)
    f0 = np.interp(times, ctrl_t, ctrl_f)
    slow = rng.normal(0, 1, int(duration * 100) + 2)
    f0 *= 1 + at.jitter * np.interp(times, np.arange(len(slow)) / 100, slow)
    f0 *= 1 + at.jitter * np.sin(2 * math.pi * 5.5 * times + rng.uniform(0, 2 * math.pi))

    # --- glottal source: Rosenberg pulse, differentiated (lip radiation), breath, spectral tilt
    phase = np.cumsum(f0 / sr)
    frac = phase - np.floor(phase)
    open_q = 0.5
    close_q = 0.16
    pulse = np.where(
        frac < open_q,
        0.5 - 0.5 * np.cos(math.pi * frac / open_q),
        np.where(frac < open_q + close_q, np.cos(0.5 * math.pi * (frac - open_q) / close_q), 0.0),
    )
    source = np.diff(pulse, prepend=0.0)
    source /= np.std(source) + 1e-9
    aspiration = rng.normal(0, 1, n) * (0.6 + 0.4 * (frac < open_q))  # pitch-synchronous breath
    source = source + at.breath * 2.5 * aspiration
    # Tilt after the breath noise, so that brightness shapes the whole spectrum and breathiness
    # shows as noise between the harmonics rather than as extra treble. Two one-pole low-passes:
    # 12 dB/octave above the corner, a large, easily heard timbre difference between identities.
    source = lfilter([(1 - at.tilt) ** 2], np.convolve([1, -at.tilt], [1, -at.tilt]), source)
    source /= np.std(source) + 1e-9

    # --- vocal tract: per-syllable vowel filters, consonant onsets, envelopes
    out = np.zeros(n)
    mouth = np.zeros(n)
    bandwidths = _BANDWIDTHS * (1 + 3 * at.breath)
    for start, v_start, end, vowel, _, onset in syllables:
        s0, v0, s1 = int(start * sr), int(v_start * sr), int(end * sr)
        if onset == 1:  # fricative: band-limited noise just before the vowel
            lo, hi = [(3800, 7000), (2200, 4600), (1200, 6500)][int(rng.integers(3))]
            noise = rng.normal(0, 1, v0 - s0) * _raised_cosine_envelope(v0 - s0, 80, 80)
            out[s0:v0] += sosfilt(_bandpass_sos(lo, hi), noise) * rng.uniform(0.25, 0.6)
        elif onset == 2:  # plosive: a silent closure, then a short burst
            b0 = v0 - int(0.012 * sr)
            burst = rng.normal(0, 1, v0 - b0) * np.linspace(1, 0.2, v0 - b0)
            out[b0:v0] += sosfilt(_bandpass_sos(1500, 4500), burst) * 0.5
        seg = min(s1 + int(0.03 * sr), n) - v0
        if seg <= 0:
            continue
        formants = np.concatenate([_VOWELS[vowel], [3300, 4200]]) * fscale
        formants[:3] *= np.exp(rng.normal(0, 0.03, 3))  # coarticulation wobble
        env = _raised_cosine_envelope(s1 - v0, int(0.025 * sr), int(0.05 * sr))
        env = np.concatenate([env, np.zeros(seg - len(env))])
        excitation = source[v0 : v0 + seg] * env
        voiced = sosfilt(_resonator_sos(formants, bandwidths), excitation)
        # breathy voices leak turbulent noise above ~1.5 kHz, independent of the source tilt
        hiss = sosfilt(_bandpass_sos(1500, 6500), rng.normal(0, 1, seg)) * env
        voiced += hiss * (2.0 * at.breath * np.sqrt(np.mean(voiced**2)) / (np.std(hiss) + 1e-9))
        out[v0 : v0 + seg] += voiced
        mouth[v0 : v0 + seg] = np.maximum(mouth[v0 : v0 + seg], env * (0.6 + 0.4 * _VOWELS[vowel][0] / 730))

    # --- room: background noise at a random SNR, sometimes mains hum; random loudness
    speech_rms = np.sqrt(np.mean(out[mouth > 0.5] ** 2)) if np.any(mouth > 0.5) else 1.0
    colour = rng.uniform(0.0, 0.95)
    background = lfilter([1 - colour], [1, -colour], rng.normal(0, 1, n))
    background *= speech_rms * 10 ** (-rng.uniform(25, 50) / 20) / (np.std(background) + 1e-12)
    if rng.random() < 0.2:
        background += speech_rms * 0.01 * np.sin(2 * math.pi * rng.choice([50, 60]) * times)
    audio = out + background
    audio *= rng.uniform(0.3, 0.9) / (np.max(np.abs(audio)) + 1e-9)
    return audio.astype(np.float32), np.clip(mouth, 0, 1).astype(np.float32)
