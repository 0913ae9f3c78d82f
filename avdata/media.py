"""Decoding of audio and video without a system ffmpeg or ffprobe.

Why this module exists: the project must run on machines where nothing but the Python
environment is installed. `imageio_ffmpeg` ships a static ffmpeg binary; we drive it through
ffmpeg-python and always decode *to a pipe* (raw PCM or raw RGB frames on stdout), so no
temporary files are written and no ffprobe is needed.

How stream facts are learned without ffprobe: ffmpeg describes the streams it writes on
stderr (at its default log level), e.g.

    Output #0, rawvideo, to 'pipe:':
      Stream #0:0: Video: rawvideo (RGB[24] / 0x18424752), rgb24(...), 512x512 [SAR 1:1 ...]

We parse the *output* section of that text (after ``Output #0``), not the input section,
because the output size is what actually lands on stdout: it already reflects rotation
metadata (ffmpeg auto-rotates) and any filter. The same trick gives the sample rate when
decoding audio at its native rate. So every decode is a single ffmpeg pass.

Every failure (missing, empty, truncated, corrupt, wrong kind of file, no audio or no video
stream) raises :class:`avdata.errors.InputError` with a one-line reason, usually the most
telling line of ffmpeg's stderr.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import ffmpeg
import imageio_ffmpeg
import numpy as np
import soundfile

from avdata.errors import InputError, check_readable_file

__all__ = ["decode_audio", "decode_video_frames", "load_wav", "ffmpeg_exe"]

# ffmpeg writes these for media whose container ends early or whose packets are damaged; it
# still exits 0 and hands back what it could decode, which would silently give us a clip
# shorter than the file claims. We treat them as errors.
_CORRUPTION_MARKERS = ("partial file", "corrupt input packet", "packet corrupt")

# "[mov,mp4,m4a @ 0x55d...] " prefixes on ffmpeg log lines carry no information for a user.
_LOG_PREFIX = re.compile(r"^(\[[^\]]*@ 0x[0-9a-f]+\]\s*)+")
_OUTPUT_VIDEO_SIZE = re.compile(r"Stream #\d+:\d+.*?: Video: .*?, (\d{1,5})x(\d{1,5})[\s,\[]")
_OUTPUT_AUDIO_RATE = re.compile(r"Stream #\d+:\d+.*?: Audio: .*?, (\d+) Hz")


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (no system ffmpeg needed);
    the AVMATCH_FFMPEG environment variable names another one (tests use wrapper scripts)."""
    return os.environ.get("AVMATCH_FFMPEG") or imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg_url(path: Path) -> str:
    """`file:` URL for ffmpeg, so names with ':' or a leading '-' are never read as a
    protocol or an option."""
    return f"file:{path}"


def _clean(line: str) -> str:
    return _LOG_PREFIX.sub("", line.strip()).strip()


def _ffmpeg_reason(stderr: str, stream_kind: str) -> str:
    """The one stderr line that best explains why a decode failed."""
    lines = [_clean(line) for line in stderr.splitlines()]
    lines = [line for line in lines if line]
    for line in lines:
        if "matches no streams" in line:
            return f"no {stream_kind} stream"
    for line in lines:
        if "moov atom not found" in line:
            return "truncated or not an mp4 (moov atom not found)"
    for marker in _CORRUPTION_MARKERS:  # most telling first
        for line in lines:
            if marker in line.lower():
                return f"truncated or corrupt ({line.rstrip('.')})"
    if not lines:
        return "ffmpeg failed without a message"
    last = lines[-1].rstrip(".")
    if last.startswith("Error opening input file"):
        return f"not a readable media file ({last.split(':', 1)[-1].strip()})"
    return last


def _output_section(stderr: str) -> str:
    index = stderr.find("Output #0")
    return stderr[index:] if index >= 0 else ""


def _run(stream, path: Path, stream_kind: str) -> tuple[bytes, str]:
    """Run one ffmpeg decode to stdout; return (stdout bytes, stderr text) or raise InputError."""
    try:
        out, err = stream.run(
            cmd=[ffmpeg_exe(), "-hide_banner", "-nostdin"], capture_stdout=True, capture_stderr=True
        )
    except ffmpeg.Error as error:
        stderr = (error.stderr or b"").decode("utf-8", "replace")
        raise InputError(path, _ffmpeg_reason(stderr, stream_kind)) from None
    stderr = err.decode("utf-8", "replace")
    lowered = stderr.lower()
    if any(marker in lowered for marker in _CORRUPTION_MARKERS):
        raise InputError(path, _ffmpeg_reason(stderr, stream_kind))
    return out, stderr


def _ffmpeg_decode_audio(path: Path, sr: int | None) -> tuple[np.ndarray, int]:
    """ffmpeg decode of the first audio stream to mono s16le at `sr` (None: the native rate)."""
    check_readable_file(path)
    output_args = {"format": "s16le", "acodec": "pcm_s16le", "ac": 1, "map": "0:a:0"}
    if sr is not None:
        output_args["ar"] = int(sr)
    stream = ffmpeg.input(_ffmpeg_url(path)).output("pipe:", **output_args)
    out, stderr = _run(stream, path, "audio")
    if sr is None:
        match = _OUTPUT_AUDIO_RATE.search(_output_section(stderr))
        if match is None:
            raise InputError(path, "could not read the audio sample rate from ffmpeg")
        sr = int(match.group(1))
    samples = np.frombuffer(out[: len(out) - len(out) % 2], dtype="<i2")
    if samples.size == 0:
        raise InputError(path, "no audio samples decoded")
    return samples.astype(np.float32) / 32768.0, sr


def decode_audio(path: str | Path, sr: int = 16000) -> np.ndarray:
    """Decode the first audio stream of any media file (wav, mp4, ...) with ffmpeg.

    Returns float32 mono samples in [-1, 1) at `sr` Hz (ffmpeg resamples and downmixes;
    its stereo->mono downmix averages the channels).
    """
    wave, _ = _ffmpeg_decode_audio(Path(path), sr)
    return wave


def _wav_truncation(path: Path) -> str | None:
    """For a RIFF/WAVE file, say whether its data chunk is shorter than its header declares.

    libsndfile quietly returns the samples that are present, so a half-copied wav would
    otherwise pass as a shorter clip. Returns a reason string, or None if the file is whole
    (or is not RIFF, in which case soundfile/ffmpeg do their own checks).
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return None
        position = 12
        while position + 8 <= size:
            handle.seek(position)
            chunk_id, chunk_size = struct.unpack("<4sI", handle.read(8))
            if chunk_id == b"data":
                available = size - position - 8
                # 0 and 0xFFFFFFFF are used by streaming writers for "unknown length".
                if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > available:
                    return (
                        f"truncated wav (header declares {chunk_size} bytes of audio, "
                        f"file holds {available})"
                    )
                return None
            position += 8 + chunk_size + (chunk_size & 1)
    return "truncated or corrupt wav (no data chunk)"


def load_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Load audio at its native sample rate: (float32 mono samples in [-1, 1], sample rate).

    Fast path: soundfile (libsndfile) for what it reads (wav, flac, ogg, ...); multi-channel
    audio is averaged to mono, as librosa does. Anything else (mp4/m4a/aac, mp3 on old
    libsndfile, ...) falls back to one ffmpeg decode at the native rate. Despite the name it
    takes any media file with an audio stream.
    """
    path = Path(path)
    check_readable_file(path)
    reason = _wav_truncation(path)
    if reason is not None:
        raise InputError(path, reason)
    try:
        data, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
        return _ffmpeg_decode_audio(path, None)
    if data.shape[0] == 0:
        raise InputError(path, "no audio samples")
    wave = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(wave, dtype=np.float32), int(sr)


def decode_video_frames(
    path: str | Path, fps: float = 1.0, max_frames: int | None = None
) -> list[np.ndarray]:
    """Decode the first video stream to RGB frames sampled at `fps` frames per second.

    Returns a list of uint8 arrays of shape (H, W, 3) (H, W as displayed: rotation metadata is
    applied by ffmpeg). The frame size is parsed from the output-stream description ffmpeg
    prints on stderr during this same decode (see the module docstring), so there is one pass
    and no ffprobe. `max_frames` stops decoding early (ffmpeg ``-frames:v``).
    """
    path = Path(path)
    check_readable_file(path)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    output_args = {"format": "rawvideo", "pix_fmt": "rgb24"}
    if max_frames is not None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        output_args["frames:v"] = int(max_frames)
    # Selecting the stream on the input side (`["v:0"]`) puts it in the filter graph; a
    # missing video stream then fails with "... matches no streams".
    video = ffmpeg.input(_ffmpeg_url(path))["v:0"].filter("fps", fps=fps)
    stream = video.output("pipe:", **output_args)
    out, stderr = _run(stream, path, "video")
    match = _OUTPUT_VIDEO_SIZE.search(_output_section(stderr))
    if match is None:
        raise InputError(path, "could not read the video frame size from ffmpeg")
    width, height = int(match.group(1)), int(match.group(2))
    frame_bytes = width * height * 3
    n_frames = len(out) // frame_bytes
    if n_frames == 0:
        raise InputError(path, "no video frames decoded")
    frames = np.frombuffer(out, dtype=np.uint8, count=n_frames * frame_bytes)
    frames = frames.reshape(n_frames, height, width, 3)
    return [frame.copy() for frame in frames]
