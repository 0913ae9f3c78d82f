"""The recording condition of a synthetic video, shared by that video's voice and its faces.

Real videos leak: a voice clip and the face frames cut from one YouTube video share its
microphone, room, camera and light, so a model can match them by the recording instead of
the person (issue #23; docs/evaluation.md, "Positives from the same video"). The synthetic
corpus reproduces that on purpose, so that ``make-tuples --positive-source other-video``
has an effect to remove: every source video (YTID) of an identity draws one condition
``c`` in [-1, 1] (stream ``default_rng([seed, _K_RECORDING, identity])``, one draw per video, so
the file layout and every other draw are unchanged), and

* every voice recorded in it (its wav clips and its mp4's audio track) carries a **room
  tone**: noise in a sixth-of-an-octave band centred on ``250 * 2**(1.5 * (c + 1))`` Hz
  (250 Hz to 2 kHz, inside the 0-2.4 kHz the spectrogram keeps), 10 dB below the speech;
* every face photographed in it (its jpgs and its mp4's frames) carries a **colour cast**: red
  times ``1 + 0.25 c``, blue times ``1 - 0.25 c`` (warm to cool white balance), background
  included.

A higher room tone goes with a warmer picture: a rule a model can learn from training
identities and apply to a pair from one video, and that says nothing about a pair from two.
The strengths are those of a poor recording (a fan or hum 10 dB under the voice, tungsten
against daylight white balance): at 20 dB and a 0.12 cast the demo's AML run hardly used the cue
(docs/evaluation.md, "Positives from the same video").
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.signal import butter, sosfilt

TONE_LOW_HZ = 250.0
TONE_OCTAVES = 3.0  # c = -1 .. 1 spans 250 Hz .. 2 kHz
TONE_BAND_OCTAVES = 1 / 6
TONE_LEVEL_DB = -10.0  # re the speech's rms
CAST = 0.25  # red / blue gain per unit of c


def recording_conditions(seed: int, index: int, n_videos: int) -> list[float]:
    """The condition of each of an identity's source videos, in the order of its YTIDs."""
    from avdata.synth.identity import _K_RECORDING

    rng = np.random.default_rng([seed, _K_RECORDING, index])
    return [float(c) for c in rng.uniform(-1.0, 1.0, n_videos)]


def tone_hz(condition: float) -> float:
    return TONE_LOW_HZ * 2 ** (TONE_OCTAVES * (condition + 1) / 2)


@functools.cache
def _band_sos(centre_hz: float, sr: int) -> np.ndarray:
    half = 2 ** (TONE_BAND_OCTAVES / 2)
    return butter(2, [centre_hz / half, centre_hz * half], btype="bandpass", fs=sr, output="sos")


def room_tone(n: int, condition: float, speech_rms: float, rng: np.random.Generator, sr: int) -> np.ndarray:
    """``n`` samples of the video's room tone at TONE_LEVEL_DB re ``speech_rms``."""
    noise = sosfilt(_band_sos(round(tone_hz(condition), 3), sr), rng.normal(0, 1, n))
    return noise * speech_rms * 10 ** (TONE_LEVEL_DB / 20) / (np.std(noise) + 1e-12)


def add_room_tone(
    audio: np.ndarray, mouth: np.ndarray, condition: float, rng: np.random.Generator, sr: int
) -> np.ndarray:
    """A finished clip (from :func:`avdata.synth.voice.synth_voice`) with the video's room tone
    added, 10 dB below its voiced part, scaled down only if it would clip."""
    voiced = audio[mouth > 0.5] if np.any(mouth > 0.5) else audio
    speech_rms = float(np.sqrt(np.mean(voiced.astype(np.float64) ** 2)))
    out = audio + room_tone(len(audio), condition, speech_rms, rng, sr)
    peak = float(np.max(np.abs(out)))
    if peak > 0.99:
        out *= 0.99 / peak
    return out.astype(np.float32)


def colour_cast(img: np.ndarray, condition: float) -> np.ndarray:
    """An RGB float image (H, W, 3) in [0, 1] under the video's white balance (clipped to [0, 1])."""
    gains = np.array([1 + CAST * condition, 1.0, 1 - CAST * condition], dtype=img.dtype)
    return np.clip(img * gains, 0, 1)


def check_condition(condition: float | None) -> None:
    if condition is not None and not (math.isfinite(condition) and -1 <= condition <= 1):
        raise ValueError(f"recording condition must lie in [-1, 1], got {condition!r}")
