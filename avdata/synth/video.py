"""Talking-head videos: the painted face moving with a fresh utterance in the identity's voice."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from avdata.errors import InputError
from avdata.io import atomic_write_bytes
from avdata.synth.face import _background, _FacePainter, _paint_person
from avdata.synth.identity import IdentityAttributes
from avdata.synth.voice import SAMPLE_RATE, synth_voice


def _write_video(
    path: Path,
    at: IdentityAttributes,
    rng: np.random.Generator,
    clothing,
    recording: tuple[float, np.random.Generator] | None = None,
) -> None:
    """A 2-3 s talking head: the face drifts, zooms and nods a little, the mouth follows the voice.
    ``recording``: the video's condition and the stream of its room tone (its audio track's room
    tone and its frames' colour cast, :mod:`avdata.synth.recording`)."""
    import ffmpeg  # ffmpeg-python; imported here so that audio/face-only use does not need it
    import imageio_ffmpeg

    fps = int(rng.choice([15, 20, 25]))
    width = int(rng.choice([128, 160, 192, 224, 256]))
    height = int(np.clip(width + 16 * rng.integers(-3, 4), 128, 256))
    n_frames = int(round(rng.uniform(2.0, 3.0) * fps))
    audio, mouth = synth_voice(at, rng, n_frames / fps)
    if recording is not None:
        from avdata.synth.recording import add_room_tone

        audio = add_room_tone(audio, mouth, recording[0], recording[1], SAMPLE_RATE)
    background = _background(rng, width, height)
    A, B = at.face_width, at.face_height
    base_scale = max(40.0 / A, rng.uniform(0.5, 0.7) * min(width, height) / (2 * B))
    cx0, cy0 = rng.uniform(0.42, 0.58) * width, rng.uniform(0.42, 0.52) * height
    light_dir, light_gain = float(rng.uniform(-1, 1)), float(rng.uniform(0.9, 1.08))
    yaw0, nod0 = float(rng.uniform(-0.6, 0.6)), float(rng.uniform(-0.5, 0.5))
    phases = rng.uniform(0, 2 * math.pi, 5)
    frames = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    hop = SAMPLE_RATE // fps
    for k in range(n_frames):
        t = k / fps
        wobble = [math.sin(2 * math.pi * f * t + ph) for f, ph in zip((0.4, 0.5, 0.3, 0.7, 0.6), phases)]
        img = background.copy()
        painter = _FacePainter(
            img,
            cx0 + 0.04 * width * wobble[0],
            cy0 + 0.03 * height * wobble[1],
            base_scale * (1 + 0.05 * wobble[2]),
            math.radians(4 * wobble[3]),
        )
        opening = float(mouth[k * hop : (k + 1) * hop].mean()) if k * hop < len(mouth) else 0.0
        _paint_person(
            painter,
            at,
            clothing,
            light_dir,
            light_gain,
            yaw=yaw0 + 0.2 * wobble[4],
            nod=nod0 + 0.2 * wobble[1],
            mouth_open=opening,
            texture_seed=int(phases[0] * 1e6),
        )
        if recording is not None:
            from avdata.synth.recording import colour_cast

            img = colour_cast(img, recording[0])
        frames[k] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    frames = frames.astype(np.int16) + rng.integers(-3, 4, frames.shape, dtype=np.int16)  # sensor noise
    frames = np.clip(frames, 0, 255).astype(np.uint8)

    with tempfile.TemporaryDirectory(prefix="avdata-synth-") as tmp:
        wav, encoded = Path(tmp) / "audio.wav", Path(tmp) / "video.mp4"
        sf.write(wav, audio, SAMPLE_RATE, subtype="PCM_16")
        video_in = ffmpeg.input(
            "pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=fps
        )
        audio_in = ffmpeg.input(str(wav))
        # bit-exact flags, one thread and fixed quantiser/bitrate make the bytes reproducible
        stream = ffmpeg.output(
            video_in,
            audio_in,
            str(encoded),
            vcodec="mpeg4",
            pix_fmt="yuv420p",
            acodec="aac",
            ac=1,
            ar=SAMPLE_RATE,
            threads=1,
            map_metadata=-1,
            fflags="+bitexact",
            format="mp4",
            **{"q:v": 4, "b:a": "48k", "flags:v": "+bitexact", "flags:a": "+bitexact"},
        )
        try:
            stream.overwrite_output().run(
                cmd=imageio_ffmpeg.get_ffmpeg_exe(), input=frames.tobytes(), quiet=True
            )
        except ffmpeg.Error as err:
            lines = (err.stderr or b"").decode(errors="replace").strip().splitlines()
            raise InputError(path, f"ffmpeg failed: {lines[-1] if lines else err}") from None
        # encoded beside the temp wav, then moved in whole: a killed run never leaves half an mp4
        atomic_write_bytes(path, encoded.read_bytes())
