"""The corpus on disk: VoxCeleb1 layouts, per-identity file plans, :func:`synth_corpus`."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from avdata.corpora.voxceleb1 import make_pins_sets, matching_split, write_pins_sets
from avdata.errors import InputError
from avdata.io import atomic_write_bytes, atomic_write_text
from avdata.synth.face import render_face
from avdata.synth.identity import (
    _K_FACE,
    _K_LAYOUT,
    _K_RECORDING,
    _K_VIDEO,
    _K_WAV,
    IdentityAttributes,
    SynthError,
    _check_count,
    corpus_attributes,
)
from avdata.synth.layouts import LAYOUT_PATHS, LAYOUTS, relayout
from avdata.synth.recording import add_room_tone, recording_conditions
from avdata.synth.video import _write_video
from avdata.synth.voice import SAMPLE_RATE, synth_voice

META_HEADER = "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"
_YTID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

_MARKER = "avdata.synth"  # attributes.json "generator": lets a re-run replace an older synthetic corpus


def _ytid(rng: np.random.Generator) -> str:
    return "".join(_YTID_ALPHABET[i] for i in rng.integers(len(_YTID_ALPHABET), size=11))


@dataclass
class _IdentityPlan:
    """Where one identity's files go: YouTube-like video ids, and which file lands in which."""

    ytids: list[str]
    clothing: list[tuple[float, float, float]]  # per YTID: the same shirt throughout one video
    wav_paths: list[tuple[int, str]]  # (ytid index, "00001.wav")
    face_paths: list[tuple[int, str]]  # (ytid index, "0000375.jpg")
    mp4_paths: list[tuple[int, str]]  # (ytid index, "00001.mp4")


def _plan(at: IdentityAttributes, seed: int, clips: int, faces: int, videos: int) -> _IdentityPlan:
    rng = np.random.default_rng([seed, _K_LAYOUT, at.index])
    n_ytids = int(rng.integers(2, 4))
    ytids: list[str] = []
    while len(ytids) < n_ytids:
        y = _ytid(rng)
        if y not in ytids:
            ytids.append(y)
    clothing = [tuple(float(c) for c in rng.uniform(0.05, 0.9, 3)) for _ in ytids]

    def numbered(count: int, fmt: str, first, step) -> list[tuple[int, str]]:
        # spread the files over the videos (every video gets one before any gets two),
        # numbering within each video as VoxCeleb does
        order = [k % n_ytids for k in range(count)]
        nxt = [int(first()) for _ in ytids]
        out = []
        for y in order:
            out.append((y, fmt.format(nxt[y])))
            nxt[y] += int(step())
        return out

    wavs = numbered(clips, "{:05d}.wav", lambda: 1, lambda: 1)
    face_files = numbered(faces, "{:07d}.jpg", lambda: rng.integers(0, 3000), lambda: rng.integers(25, 900))
    mp4s = numbered(videos, "{:05d}.mp4", lambda: 1, lambda: 1)
    return _IdentityPlan(ytids, clothing, wavs, face_files, mp4s)


def _wav_bytes(audio: np.ndarray) -> bytes:
    """16-bit PCM WAV file bytes (written in memory, so the file itself can be written atomically)."""
    buf = io.BytesIO()
    sf.write(buf, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def _write_identity(
    out: Path,
    at: IdentityAttributes,
    seed: int,
    clips: int,
    faces: int,
    videos: int,
    conditions: bool = True,
) -> tuple[int, int, int]:
    plan = _plan(at, seed, clips, faces, videos)
    # each video's recording condition, shared by its voices and its faces (avdata.synth.recording)
    cond = recording_conditions(seed, at.index, len(plan.ytids)) if conditions else [None] * len(plan.ytids)
    for k, (y, fname) in enumerate(plan.wav_paths):
        rng = np.random.default_rng([seed, _K_WAV, at.index, k])
        audio, mouth = synth_voice(at, rng, float(rng.uniform(4.0, 7.9)))
        if cond[y] is not None:
            tone_rng = np.random.default_rng([seed, _K_RECORDING, at.index, _K_WAV, k])
            audio = add_room_tone(audio, mouth, cond[y], tone_rng, SAMPLE_RATE)
        path = out / "wav" / at.vox_id / plan.ytids[y] / fname
        atomic_write_bytes(path, _wav_bytes(audio))
    for k, (y, fname) in enumerate(plan.face_paths):
        rng = np.random.default_rng([seed, _K_FACE, at.index, k])
        img = render_face(at, rng, clothing=plan.clothing[y], recording=cond[y])
        path = out / "faces" / at.name / plan.ytids[y] / fname
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=92)  # PIL writes no EXIF or timestamps by default
        atomic_write_bytes(path, buf.getvalue())
    for k, (y, fname) in enumerate(plan.mp4_paths):
        rng = np.random.default_rng([seed, _K_VIDEO, at.index, k])
        recording = (
            (cond[y], np.random.default_rng([seed, _K_RECORDING, at.index, _K_VIDEO, k]))
            if cond[y] is not None
            else None
        )
        _write_video(out / "mp4" / at.vox_id / plan.ytids[y] / fname, at, rng, plan.clothing[y], recording)
    return len(plan.wav_paths), len(plan.face_paths), len(plan.mp4_paths)


def _prepare_out(out: Path) -> None:
    """Create OUT, or clear a previous synthetic corpus there so a re-run equals a fresh run."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        marker = out / "attributes.json"
        try:
            ours = json.loads(marker.read_text()).get("generator") == _MARKER
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise InputError(
                out, "directory is not empty and holds no synthetic corpus; choose a new or empty one"
            )
        for name in (*LAYOUT_PATHS, "attributes.json"):  # whatever layout the earlier run wrote
            if (out / name).is_dir():
                shutil.rmtree(out / name, ignore_errors=True)
            else:
                (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def synth_corpus(
    out: str | Path,
    identities: int = 60,
    clips_per_identity: int = 4,
    faces_per_identity: int = 4,
    videos: bool = False,
    videos_per_identity: int = 1,
    seed: int = 0,
    progress: bool = False,
    workers: int = 1,
    video_conditions: bool = True,
    layout: str = "voxceleb1",
) -> dict:
    """Write a synthetic VoxCeleb1-layout corpus to `out` and return a summary.

    Same arguments -> byte-identical files. `out` must be new, empty, or an earlier synthetic
    corpus (which is replaced). `workers` > 1 renders identities in parallel processes; the
    files are the same either way. `video_conditions`: each source video's recording condition
    (room tone and colour cast, :mod:`avdata.synth.recording`) marks its voices and faces; without
    it the files are those of the corpus before issue #23. `layout`: the corpus recipe whose layout
    the files are written in (:mod:`avdata.synth.layouts`; the media are the same).
    """
    _check_count("identities", identities, minimum=3, maximum=8999)
    _check_count("clips_per_identity", clips_per_identity, minimum=1, maximum=1000)
    _check_count("faces_per_identity", faces_per_identity, minimum=1, maximum=1000)
    _check_count("videos_per_identity", videos_per_identity, minimum=1, maximum=100)
    _check_count("workers", workers, minimum=1, maximum=256)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SynthError(f"seed must be a non-negative integer, got {seed!r}")
    if layout not in LAYOUTS:
        raise SynthError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    out = Path(out)
    _prepare_out(out)
    people = corpus_attributes(identities, seed)
    n_videos = videos_per_identity if videos else 0

    jobs = [
        (out, at, seed, clips_per_identity, faces_per_identity, n_videos, video_conditions) for at in people
    ]
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="synth identities", unit="id", disable=not progress)
    counts = []
    if workers == 1:
        for job in jobs:
            counts.append(_write_identity(*job))
            bar.update()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # "spawn": the caller may already hold torch/BLAS thread pools, which do not survive fork()
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for c in pool.map(_write_identity_job, jobs):
                counts.append(c)
                bar.update()
    bar.close()

    lines = [META_HEADER] + [
        f"{at.vox_id}\t{at.name}\t{at.gender}\t{at.nationality}\t{at.set}" for at in people
    ]
    atomic_write_text(out / "vox1_meta.csv", "\n".join(lines) + "\n")
    truth = {
        "generator": _MARKER,
        "seed": seed,
        "note": "hidden ground truth for tests and analysis; not an input to training",
        "identities": [asdict(at) for at in people],
    }
    if video_conditions:  # per identity: each source video's recording condition in [-1, 1]
        truth["recording_conditions"] = {
            at.vox_id: dict(
                zip(
                    (plan := _plan(at, seed, clips_per_identity, faces_per_identity, n_videos)).ytids,
                    recording_conditions(seed, at.index, len(plan.ytids)),
                )
            )
            for at in people
        }
    atomic_write_text(out / "attributes.json", json.dumps(truth, indent=1) + "\n")
    # A Learnable-PINs style identity split (sets 1/2/4) so the pins protocol runs on the corpus too.
    write_pins_sets(make_pins_sets([at.name for at in people], seed), out / "identity_splits.txt")

    relayout(out, layout, people)

    splits = {"val": 0, "test": 0, "train": 0}
    for at in people:
        splits[matching_split(at.name)] += 1
    summary = {
        "out": str(out),
        "identities": len(people),
        "wavs": sum(c[0] for c in counts),
        "faces": sum(c[1] for c in counts),
        "videos": sum(c[2] for c in counts),
        "seed": seed,
        "matching_splits": splits,
    }
    return summary | ({"layout": layout} if layout != "voxceleb1" else {})


def _write_identity_job(job):
    return _write_identity(*job)
