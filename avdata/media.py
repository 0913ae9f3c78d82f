"""Decoding of audio and video without a system ffmpeg or ffprobe.

Why this module exists: the project must run on machines where nothing but the Python
environment is installed. `imageio_ffmpeg` ships a static ffmpeg binary (``AVMATCH_FFMPEG``
names another one, e.g. for tests); we always decode *to a pipe* (raw PCM or raw RGB frames
on stdout), so no temporary files are written and no ffprobe is needed.

How stream facts are learned without ffprobe: ffmpeg describes the streams it reads and
writes on stderr (at its default log level), e.g.

    Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'file:clip.mp4':
      Stream #0:0[0x1](und): Video: h264 (...), yuv420p(progressive), 8000x8000 [SAR 1:1 ...]
    Output #0, rawvideo, to 'pipe:':
      Stream #0:0: Video: rawvideo (RGB[24] / 0x18424752), rgb24(...), 512x512 [SAR 1:1 ...]

The *output* section gives the size of what lands on stdout: it already reflects rotation
metadata (ffmpeg auto-rotates) and our scale filter. The same trick gives the sample rate when
decoding audio at its native rate. The *input* section is read while ffmpeg runs, so a frame
size above the cap is refused before a frame is decoded. So every decode is a single ffmpeg pass.

Bounded memory. stdout is read in pieces while a thread collects stderr: audio as blocks
(:class:`AudioStream` lets a caller walk a long file block by block, twice if it needs two
passes), video one frame at a time. Video frames are sampled at the requested fps and scaled
down by ffmpeg so that their longest side is at most :data:`MAX_FRAME_SIDE` (1024 px: the face
aligner detects on a 640 px copy and crops 224x224, so nothing it uses is lost). Inputs whose
frames exceed :data:`MAX_INPUT_SIDE` (4096 px a side) or whose audio claims a sample rate outside
[:data:`MIN_SAMPLE_RATE`, :data:`MAX_SAMPLE_RATE`] are refused from their header.

Errors. A bad file (missing, empty, truncated, corrupt, wrong kind of file, no audio or no
video stream, absurd header) raises :class:`avdata.errors.InputError` with a one-line reason,
usually the most telling line of ffmpeg's stderr. A decoder that dies (killed by a signal, out
of memory, output cut short without an error message) is not the file's fault: it is retried
once, then :class:`avdata.errors.DecoderCrashError` is raised, which a build never records as a
bad file.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import imageio_ffmpeg
import numpy as np
import soundfile

from avdata.errors import DecoderCrashError, InputError, check_readable_file

__all__ = [
    "MAX_FRAME_SIDE",
    "MAX_INPUT_SIDE",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "AudioStream",
    "check_sample_rate",
    "decode_audio",
    "decode_video_frames",
    "ffmpeg_exe",
    "iter_video_frames",
    "load_wav",
    "open_audio",
]

MIN_SAMPLE_RATE = 4000  # Hz; below this a header is absurd (speech needs >= 8 kHz)
MAX_SAMPLE_RATE = 768000  # Hz; the highest rate any real audio interface records
MAX_FRAME_SIDE = 1024  # px; frames are scaled down by ffmpeg to this longest side
MAX_INPUT_SIDE = 4096  # px; a video stream wider or taller than this is refused
AUDIO_BLOCK = 1 << 16  # samples per block when audio is streamed

# ffmpeg writes these for media whose container ends early or whose packets are damaged; it
# still exits 0 and hands back what it could decode, which would silently give us a clip
# shorter than the file claims. We treat them as errors.
_CORRUPTION_MARKERS = ("partial file", "corrupt input packet", "packet corrupt")

# "[mov,mp4,m4a @ 0x55d...] " prefixes on ffmpeg log lines carry no information for a user.
_LOG_PREFIX = re.compile(r"^(\[[^\]]*@ 0x[0-9a-f]+\]\s*)+")
_OUTPUT_VIDEO_SIZE = re.compile(r"Stream #\d+:\d+.*?: Video: .*?, (\d{1,5})x(\d{1,5})[\s,\[]")
_OUTPUT_AUDIO_RATE = re.compile(r"Stream #\d+:\d+.*?: Audio: .*?, (\d+) Hz")
_STDERR_KEEP = 256 * 1024  # bytes of ffmpeg's stderr kept (a hostile file can make it chatty)
# Exit statuses of a process killed by a signal when run through a shell (128 + signal).
_SHELL_SIGNAL_STATUSES = {
    128 + s: s
    for s in (
        signal.SIGKILL,
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGABRT,
        signal.SIGILL,
        signal.SIGFPE,
        signal.SIGTERM,
        signal.SIGINT,
    )
}
_FFMPEG_ENOMEM = 256 - 12  # ffmpeg exits with AVERROR(ENOMEM) & 0xff when out of memory


def ffmpeg_exe() -> str:
    """The ffmpeg binary: ``$AVMATCH_FFMPEG`` if set (tests put a wrapper there), else the one
    bundled with imageio-ffmpeg (no system ffmpeg needed)."""
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


def _input_section(stderr: str) -> str:
    index = stderr.find("Output #0")
    return stderr if index < 0 else stderr[:index]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class _FFmpeg:
    """One ffmpeg process decoding to stdout. stdout is read in pieces by the caller; a thread
    collects stderr (so neither pipe can fill up and stall ffmpeg) and can refuse the input
    from its stream description (`check_input`) before decoding starts."""

    def __init__(self, args: list[str], path: Path, stream_kind: str, check_input=None):
        self.path, self.stream_kind, self._check_input = path, stream_kind, check_input
        self.refused: str | None = None  # an InputError reason found while ffmpeg ran
        self._stderr = bytearray()
        self._output_seen = threading.Event()
        exe = ffmpeg_exe()
        try:
            self.proc = subprocess.Popen(
                [exe, "-hide_banner", "-nostdin", "-nostats", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as error:  # the decoder, not the file: a missing or broken binary
            raise DecoderCrashError(path, f"cannot run ffmpeg {exe} ({error.strerror or error})") from None
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        in_output = False
        for raw in iter(self.proc.stderr.readline, b""):
            if len(self._stderr) < _STDERR_KEEP:
                self._stderr += raw[: _STDERR_KEEP - len(self._stderr)]
            line = raw.decode("utf-8", "replace")
            if line.startswith("Output #0"):
                in_output = True
            elif not in_output and self._check_input is not None and self.refused is None:
                reason = self._check_input(line)
                if reason is not None:  # refuse before ffmpeg decodes anything
                    self.refused = reason
                    self.proc.kill()
            elif in_output and re.search(r"Stream #\d+:\d+.*?: (Audio|Video): ", line):
                self._output_seen.set()
        self._output_seen.set()

    @property
    def stderr(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    def output_section(self) -> str:
        """ffmpeg's description of what it writes; call after the first stdout bytes (or EOF)."""
        self._output_seen.wait()
        return _output_section(self.stderr)

    def read(self, size: int) -> bytes:
        """Up to `size` bytes of stdout; fewer only at the end of the stream."""
        return self.proc.stdout.read(size)

    def close(self) -> None:
        """Stop ffmpeg early (the caller has what it needs)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self._finish()

    def _finish(self) -> int:
        self.proc.stdout.close()
        returncode = self.proc.wait()
        self._reader.join()
        self.proc.stderr.close()
        return returncode

    def finish(self, truncated: bool = False) -> str:
        """Wait for ffmpeg and judge how it ended: a bad file raises InputError, a decoder that
        died raises DecoderCrashError. `truncated`: the caller got a partial output unit (a cut
        frame), which a clean exit never leaves. Returns stderr."""
        self.proc.stdout.read()  # drain, so ffmpeg can exit
        returncode = self._finish()
        stderr = self.stderr
        if self.refused is not None:
            raise InputError(self.path, self.refused)
        reason = _ffmpeg_reason(stderr, self.stream_kind)
        if returncode < 0:
            raise DecoderCrashError(self.path, f"ffmpeg killed by {_signal_name(-returncode)}")
        if returncode in _SHELL_SIGNAL_STATUSES:
            name = _signal_name(_SHELL_SIGNAL_STATUSES[returncode])
            raise DecoderCrashError(self.path, f"ffmpeg exited with status {returncode} (killed by {name})")
        if returncode == _FFMPEG_ENOMEM or "cannot allocate memory" in stderr.lower():
            raise DecoderCrashError(self.path, f"ffmpeg ran out of memory (exit status {returncode})")
        if returncode != 0:
            if reason == "ffmpeg failed without a message":
                raise DecoderCrashError(
                    self.path, f"ffmpeg exited with status {returncode} without a message"
                )
            raise InputError(self.path, reason)
        if any(marker in stderr.lower() for marker in _CORRUPTION_MARKERS):
            raise InputError(self.path, reason)
        if truncated:
            raise DecoderCrashError(self.path, "ffmpeg output cut short without a decode error")
        return stderr


def _retry_once(decode):
    """Run `decode()`; a decoder crash is retried once (a transient kill, e.g. by the OOM
    killer, should not cost a good file), a second one propagates."""
    try:
        return decode()
    except DecoderCrashError:
        return decode()


# --- audio ------------------------------------------------------------------------------------


def check_sample_rate(source: str | Path, sr, where: str = " in the header") -> int:
    """``sr`` as an int if it is a whole number of Hz in [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE], else
    InputError naming ``source`` (a rate of 1 Hz would make the 22,050 Hz resampling of a few
    samples take gigabytes; 0 would divide by zero). ``where`` says where the rate was read."""
    try:
        rate = int(sr)
        whole = rate == sr
    except (TypeError, ValueError, OverflowError):  # None, NaN, inf, a string
        whole = False
    if not whole:
        raise InputError(source, f"audio sample rate {sr!r}{where} is not a whole number of Hz")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InputError(
            source,
            f"absurd audio sample rate {rate} Hz{where} (accepted: {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)",
        )
    return rate


# Same file -> same samples and pixels on every x86-64 CPU. ffmpeg picks SIMD kernels per CPU,
# and its float audio decoders (AAC) give other last bits with FMA/AVX2 than without, which the
# 16-bit output then rounds the other way: audio is decoded with the plain C kernels (AAC
# decoding is cheap). Video decoders are bit-exact by their standards; the conversion to RGB is
# not, unless swscale is asked for its bit-exact paths (docs/reproducibility.md).
AUDIO_DECODE_ARGS = ["-cpuflags", "0"]
BITEXACT_SWS_FLAGS = "bicubic+accurate_rnd+bitexact+full_chroma_int"


def _audio_args(path: Path, sr: int | None) -> list[str]:
    output_args = {"format": "s16le", "acodec": "pcm_s16le", "ac": 1, "map": "0:a:0"}
    if sr is not None:
        output_args["ar"] = int(sr)
    return AUDIO_DECODE_ARGS + ffmpeg.input(_ffmpeg_url(path)).output("pipe:", **output_args).get_args()


def _check_audio_input(line: str) -> str | None:
    match = re.search(r"Stream #\d+:\d+.*?: Audio: .*?, (\d+) Hz", line)
    if match and not MIN_SAMPLE_RATE <= int(match.group(1)) <= MAX_SAMPLE_RATE:
        return (
            f"absurd audio sample rate {match.group(1)} Hz in the header "
            f"(accepted: {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)"
        )
    return None


def _pcm_to_float(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def _ffmpeg_audio_pass(
    path: Path, sr: int | None, keep_samples: int | None
) -> tuple[np.ndarray | None, int, int]:
    """One ffmpeg decode of the first audio stream to mono s16le at `sr` (None: native rate).

    Returns (samples or None, sample rate, number of samples). The samples are kept only while
    there are at most `keep_samples` of them (None: no limit); past that the pass goes on
    counting without holding them."""
    check_readable_file(path)
    run = _FFmpeg(_audio_args(path, sr), path, "audio", check_input=_check_audio_input)
    kept: list[bytes] | None = []
    n_bytes = 0
    try:
        while True:
            piece = run.read(AUDIO_BLOCK * 2)
            if not piece:
                break
            n_bytes += len(piece)
            if kept is not None:
                kept.append(piece)
                if keep_samples is not None and n_bytes // 2 > keep_samples:
                    kept = None
    except BaseException:
        run.close()
        raise
    stderr = run.finish()
    if sr is None:
        match = _OUTPUT_AUDIO_RATE.search(_output_section(stderr))
        if match is None:
            raise InputError(path, "could not read the audio sample rate from ffmpeg")
        sr = check_sample_rate(path, int(match.group(1)))
    n_samples = n_bytes // 2
    if n_samples == 0:
        raise InputError(path, "no audio samples decoded")
    wave = None
    if kept is not None:
        data = b"".join(kept)
        wave = _pcm_to_float(data[: len(data) - len(data) % 2])
    return wave, sr, n_samples


def decode_audio(path: str | Path, sr: int = 16000) -> np.ndarray:
    """Decode the first audio stream of any media file (wav, mp4, ...) with ffmpeg.

    Returns float32 mono samples in [-1, 1) at `sr` Hz (ffmpeg resamples and downmixes;
    its stereo->mono downmix averages the channels).
    """
    path = Path(path)
    wave, _, _ = _retry_once(lambda: _ffmpeg_audio_pass(path, sr, None))
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
                        f"truncated wav (header declares {chunk_size} bytes of audio, file holds {available})"
                    )
                return None
            position += 8 + chunk_size + (chunk_size & 1)
    return "truncated or corrupt wav (no data chunk)"


def _mono(data: np.ndarray) -> np.ndarray:
    """(frames, channels) float32 -> mono: the one channel, or the mean of all (as librosa)."""
    wave = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(wave, dtype=np.float32)


@dataclass(frozen=True)
class AudioStream:
    """A decodable audio file of known length, read block by block at its native rate.

    Each call of :meth:`blocks` decodes the file again from the start (libsndfile for what it
    reads, else ffmpeg), so a two-pass computation holds one block at a time, never the clip.
    The concatenated blocks are exactly what :func:`load_wav` returns."""

    path: Path
    sr: int
    n_samples: int
    channels: int
    via_ffmpeg: bool

    def blocks(self, block_size: int = AUDIO_BLOCK) -> Iterator[np.ndarray]:
        if not self.via_ffmpeg:
            frames = max(1, block_size // max(1, self.channels))
            try:
                for data in soundfile.blocks(
                    str(self.path), blocksize=frames, dtype="float32", always_2d=True
                ):
                    yield _mono(data)
            except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
                raise InputError(self.path, f"unreadable audio ({error})") from None
            return
        yield from _ffmpeg_blocks(self.path, self.n_samples)


def _ffmpeg_blocks(path: Path, expected: int) -> Iterator[np.ndarray]:
    """The native-rate mono samples of `path` decoded by ffmpeg, block by block."""
    run = _FFmpeg(_audio_args(path, None), path, "audio", check_input=_check_audio_input)
    odd, total = b"", 0
    try:
        while True:
            piece = run.read(AUDIO_BLOCK * 2)
            if not piece:
                break
            piece = odd + piece
            odd = piece[len(piece) - len(piece) % 2 :]
            block = _pcm_to_float(piece[: len(piece) - len(odd)])
            total += block.shape[0]
            yield block
    except BaseException:
        run.close()
        raise
    run.finish()
    if total != expected:  # the same file decoded twice must give the same samples
        raise DecoderCrashError(path, f"ffmpeg gave {total} samples, {expected} on an earlier pass")


def open_audio(path: str | Path, max_in_memory: int | None = None) -> tuple[np.ndarray | None, AudioStream]:
    """Check an audio (or video) file's header and decode it if it is short.

    Returns (samples, stream): float32 mono samples in [-1, 1] at `stream.sr` when the clip has
    at most `max_in_memory` samples (None: any length), else None and a stream to read it block
    by block (:class:`AudioStream`). Absurd sample rates and truncated wavs are refused here.
    """
    path = Path(path)
    check_readable_file(path)
    reason = _wav_truncation(path)
    if reason is not None:
        raise InputError(path, reason)
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
        info = None
    if info is not None:
        sr = check_sample_rate(path, int(info.samplerate))
        stream = AudioStream(path, sr, int(info.frames), int(info.channels), via_ffmpeg=False)
        if max_in_memory is not None and info.frames * max(1, info.channels) > max_in_memory:
            if info.frames == 0:
                raise InputError(path, "no audio samples")
            return None, stream
        try:
            data, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
            info = None  # libsndfile knows the header but not the codec: let ffmpeg decode it
        else:
            if data.shape[0] == 0:
                raise InputError(path, "no audio samples")
            return _mono(data), stream
    # Anything libsndfile does not read (mp4/m4a/aac, mp3 on old libsndfile, ...): ffmpeg at
    # the native rate, holding the samples only while they fit in `max_in_memory`.
    wave, sr, n_samples = _retry_once(lambda: _ffmpeg_audio_pass(path, None, max_in_memory))
    return wave, AudioStream(path, sr, n_samples, 1, via_ffmpeg=True)


def load_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Load audio at its native sample rate: (float32 mono samples in [-1, 1], sample rate).

    Fast path: soundfile (libsndfile) for what it reads (wav, flac, ogg, ...); multi-channel
    audio is averaged to mono, as librosa does. Anything else (mp4/m4a/aac, mp3 on old
    libsndfile, ...) falls back to one ffmpeg decode at the native rate. Despite the name it
    takes any media file with an audio stream. Sample rates outside
    [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE] are refused.
    """
    wave, stream = open_audio(path)
    return wave, stream.sr


# --- video ------------------------------------------------------------------------------------


def _check_video_input(line: str) -> str | None:
    """An InputError reason for an input video stream whose frames exceed the cap."""
    match = _OUTPUT_VIDEO_SIZE.search(line)
    if match is None:
        return None
    width, height = int(match.group(1)), int(match.group(2))
    if max(width, height) > MAX_INPUT_SIDE:
        return f"video frame size {width}x{height} exceeds the cap of {MAX_INPUT_SIDE} px a side"
    return None


def iter_video_frames(
    path: str | Path, fps: float = 1.0, max_frames: int | None = None
) -> Iterator[np.ndarray]:
    """Frames of the first video stream sampled at `fps`, read from ffmpeg's pipe one at a time
    (see :func:`decode_video_frames`). One decode; a crash is not retried here."""
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
    # missing video stream then fails with "... matches no streams". The scale step only
    # ever shrinks (the box is min(size, cap)), so frames within the cap are untouched.
    video = (
        ffmpeg.input(_ffmpeg_url(path))["v:0"]
        .filter("fps", fps=fps)
        .filter(
            "scale",
            w=f"min(iw,{MAX_FRAME_SIDE})",
            h=f"min(ih,{MAX_FRAME_SIDE})",
            force_original_aspect_ratio="decrease",
            flags=BITEXACT_SWS_FLAGS,
        )
    )
    output_args["sws_flags"] = BITEXACT_SWS_FLAGS  # the conversion to rgb24 after the graph
    run = _FFmpeg(
        video.output("pipe:", **output_args).get_args(), path, "video", check_input=_check_video_input
    )
    n_frames, truncated = 0, False
    try:
        first = run.read(1)
        if first:
            match = _OUTPUT_VIDEO_SIZE.search(run.output_section())
            if match is None:
                run.close()
                raise InputError(path, "could not read the video frame size from ffmpeg")
            width, height = int(match.group(1)), int(match.group(2))
            frame_bytes = width * height * 3
            data = first + run.read(frame_bytes - 1)
            while data:
                if len(data) < frame_bytes:
                    truncated = True
                    break
                n_frames += 1
                yield np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy()
                data = run.read(frame_bytes)
    except BaseException:
        run.close()
        raise
    run.finish(truncated=truncated)
    if n_frames == 0:
        raise InputError(path, "no video frames decoded")


def decode_video_frames(
    path: str | Path, fps: float = 1.0, max_frames: int | None = None
) -> list[np.ndarray]:
    """Decode the first video stream to RGB frames sampled at `fps` frames per second.

    Returns a list of uint8 arrays of shape (H, W, 3) (H, W as displayed: rotation metadata is
    applied by ffmpeg), scaled down so that max(H, W) <= MAX_FRAME_SIDE. The frame size is
    parsed from the output-stream description ffmpeg prints on stderr during this same decode
    (see the module docstring), so there is one pass and no ffprobe. `max_frames` stops
    decoding early (ffmpeg ``-frames:v``). A stream larger than MAX_INPUT_SIDE a side is refused
    before decoding; a decoder crash is retried once, then raises DecoderCrashError.
    """
    return _retry_once(lambda: list(iter_video_frames(path, fps, max_frames)))
