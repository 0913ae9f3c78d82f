"""``avtrain embed``: files and trees to embeddings (:func:`embed_files`), written to and read
back from the embed output format, .npz or .parquet (:func:`write_embeddings`,
:func:`read_embeddings`), resumably through ``OUT.partial`` (:func:`embed_to_file`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avtrain.serve.errors import InferenceError
from avtrain.serve.journal import (
    JOURNAL_SUFFIX,
    Batcher,
    Journal,
    decode_embeddings,
    encode_embeddings,
    journal_settings,
    note_journal,
    progress_bar,
)
from avtrain.serve.model import AUDIO_EXTS, FACE_EXTS, VIDEO_EXTS, FaceVoiceModel

__all__ = [
    "EmbedResult",
    "check_output_name",
    "embed_files",
    "embed_to_file",
    "read_embeddings",
    "write_embeddings",
]


def _expand(paths: Iterable[str | Path], exts: tuple[str, ...]) -> list[str]:
    """Files as given, directories walked recursively (sorted) for files with these extensions."""
    out = []
    for p in paths:
        p = Path(p)
        try:
            is_dir = p.is_dir()
        except OSError:  # a name the OS refuses (ENAMETOOLONG): tried below, rejected with its reason
            is_dir = False
        if is_dir:
            out.extend(str(f) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in exts)
        else:
            out.append(str(p))  # named explicitly: always tried, rejected with a reason if bad
    return out


@dataclass
class EmbedResult:
    voice_keys: list[str] = field(default_factory=list)
    voice: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    face_keys: list[str] = field(default_factory=list)
    face: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    rejects: list[dict] = field(default_factory=list)  # {"path", "modality", "reason"}


def _embed_jobs(audio, faces, videos) -> list[tuple[str, str]]:
    jobs = [(p, "audio") for p in _expand(audio, AUDIO_EXTS)]
    jobs += [(p, "face") for p in _expand(faces, FACE_EXTS)]
    for v in _expand(videos, VIDEO_EXTS):
        jobs += [(v, "audio"), (v, "face")]
    if not jobs:
        raise InferenceError("nothing to embed: give --audio, --faces or --videos files or folders")
    return jobs


def _embed_stream(
    model: FaceVoiceModel,
    jobs: list[tuple[str, str]],
    batch_size: int,
    progress: bool,
    journal: Journal | None = None,
) -> EmbedResult:
    """Embed the items of (path, 'audio'|'face') jobs a batch at a time, holding one batch of
    arrays per modality; each finished batch goes to the journal. Keys, embeddings and rejects
    come out in the order embedding all items at once gives (rejects in job order)."""
    keys: dict[str, list[str]] = {"voice": [], "face": []}
    blocks: dict[str, list[np.ndarray]] = {"voice": [], "face": []}
    rejects: list[tuple[int, int, dict]] = []  # (job, item, reject)
    resume = {"voice": (0, 0), "face": (0, 0)}  # first (job, item) not in a finished batch

    def take(mod: str, batch: list, h: np.ndarray) -> None:
        keys[mod].extend(it.key for _, it in batch if it.array is not None)
        blocks[mod].append(h)
        for (j, k), it in batch:
            if it.array is None:
                rejects.append((j, k, {"path": it.path, "modality": mod, "reason": it.reason}))

    if journal is not None and journal.resumed:
        try:
            for rec in journal.records():
                mod = rec["m"]
                h = decode_embeddings(rec["h"], model.embed_dim)
                good = rec["keys"]
                if mod not in keys or len(good) != h.shape[0] or not all(isinstance(k, str) for k in good):
                    raise ValueError("batch record")
                keys[mod].extend(good)
                blocks[mod].append(h)
                rejects.extend(
                    (int(j), int(k), {"path": p, "modality": mod, "reason": r}) for j, k, p, r in rec["r"]
                )
                resume[mod] = (int(rec["next"][0]), int(rec["next"][1]))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise journal.replay_error(exc) from None

    def on_batch(mod: str):
        def record(batch: list, h: np.ndarray) -> None:
            take(mod, batch, h)
            if journal is not None:
                j, k = batch[-1][0]
                journal.write(
                    {
                        "m": mod,
                        "next": [j, k + 1],
                        "keys": [it.key for _, it in batch if it.array is not None],
                        "h": encode_embeddings(h),
                        "r": [[j, k, it.path, it.reason] for (j, k), it in batch if it.array is None],
                    }
                )

        return record

    batchers = {mod: Batcher(model, mod, batch_size, on_batch(mod)) for mod in ("voice", "face")}
    start = min(resume["voice"][0], resume["face"][0])
    for j in progress_bar(range(start, len(jobs)), progress, "embed", initial=start, total=len(jobs)):
        path, extract_as = jobs[j]
        mod = "voice" if extract_as == "audio" else "face"
        first_job, first_item = resume[mod]
        if j < first_job:
            continue
        for k, it in enumerate(model.extract_items(path, extract_as)):
            if j > first_job or k >= first_item:
                batchers[mod].add((j, k), it)
    for b in batchers.values():
        b.flush()
    res = EmbedResult()
    for mod in ("voice", "face"):
        setattr(res, f"{mod}_keys", keys[mod])
        setattr(
            res,
            mod,
            np.concatenate(blocks[mod]) if blocks[mod] else np.zeros((0, model.embed_dim), np.float32),
        )
    res.rejects = [r for _, _, r in sorted(rejects, key=lambda t: (t[0], t[1]))]
    return res


def embed_files(
    model: FaceVoiceModel, audio=(), faces=(), videos=(), batch_size: int = 64, progress: bool = False
) -> EmbedResult:
    """Embed files or trees. Keys are the paths (video frames: PATH#fN; a video's voice: PATH).
    Files are embedded a batch at a time: memory holds one batch of preprocessed arrays and the
    embeddings, not every file's arrays."""
    return _embed_stream(model, _embed_jobs(audio, faces, videos), batch_size, progress)


def embed_to_file(
    model: FaceVoiceModel,
    out: str | Path,
    audio=(),
    faces=(),
    videos=(),
    batch_size: int = 64,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
) -> EmbedResult:
    """embed_files, written to OUT (.npz or .parquet, atomically at the end), resumable: every
    finished batch is appended to OUT.partial, and a run stopped half-way and started again
    with the same inputs and settings goes on from there (the same output as one run)."""
    from avdata.io import sha256_text

    check_output_name(out)
    out = Path(out)
    jobs = _embed_jobs(audio, faces, videos)
    settings = journal_settings(model, batch_size) | {
        "jobs_sha256": sha256_text(json.dumps(jobs)),
        "jobs": len(jobs),
    }
    journal = Journal(out.with_name(out.name + JOURNAL_SUFFIX), "avtrain embed", settings).open()
    try:
        note_journal(journal, echo)
        res = _embed_stream(model, jobs, batch_size, progress, journal)
        write_embeddings(res, out)
    except BaseException:
        journal.close()
        raise
    journal.close(remove=True)
    return res


def check_output_name(out: str | Path) -> None:
    """Fail before any work on an output name embed cannot write."""
    out = Path(out)
    if out.suffix not in (".npz", ".parquet"):
        raise InferenceError(f"{out}: the output name must end in .npz or .parquet")
    if out.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InferenceError(
                f"{out}: writing .parquet needs pyarrow (pip install pyarrow); or use .npz"
            ) from None


def write_embeddings(res: EmbedResult, out: str | Path) -> Path:
    """OUT.npz (plain arrays, allow_pickle=False) or OUT.parquet (one row per key and per reject),
    streamed into a temporary file renamed over OUT (avdata.io.atomic_output)."""
    from avdata.io import atomic_output

    check_output_name(out)
    out = Path(out)
    with atomic_output(out) as f:
        if out.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            keys = res.voice_keys + res.face_keys + [r["path"] for r in res.rejects]
            mods = (
                ["voice"] * len(res.voice_keys)
                + ["face"] * len(res.face_keys)
                + [r["modality"] for r in res.rejects]
            )
            n_ok, n_rejected = len(res.voice_keys) + len(res.face_keys), len(res.rejects)
            dim = max(res.voice.shape[1], res.face.shape[1])
            values = np.concatenate(  # one float32 array: no Python float per value
                [res.voice, res.face, np.zeros((n_rejected, dim))], dtype=np.float32
            ).reshape(-1)
            emb = pa.FixedSizeListArray.from_arrays(
                pa.array(values), dim, mask=pa.array(np.arange(n_ok + n_rejected) >= n_ok)
            )
            reasons = [None] * n_ok + [r["reason"] for r in res.rejects]
            table = pa.table(
                {
                    "key": pa.array(keys, pa.string()),
                    "modality": pa.array(mods, pa.string()),
                    "embedding": emb,
                    "reject_reason": pa.array(reasons, pa.string()),
                }
            )
            pq.write_table(table, f)
        else:
            np.savez(
                f,
                voice_keys=np.array(res.voice_keys, dtype=str),
                voice=res.voice.astype(np.float32),
                face_keys=np.array(res.face_keys, dtype=str),
                face=res.face.astype(np.float32),
                reject_paths=np.array([r["path"] for r in res.rejects], dtype=str),
                reject_modalities=np.array([r["modality"] for r in res.rejects], dtype=str),
                reject_reasons=np.array([r["reason"] for r in res.rejects], dtype=str),
            )
    return out


def read_embeddings(path: str | Path) -> EmbedResult:
    """An embed output file back (npz or parquet)."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(path).to_pylist()
        res = EmbedResult()
        for mod in ("voice", "face"):
            rows = [r for r in t if r["modality"] == mod and r["embedding"] is not None]
            setattr(res, f"{mod}_keys", [r["key"] for r in rows])
            dim = next((len(r["embedding"]) for r in t if r["embedding"] is not None), 0)
            setattr(res, mod, np.array([r["embedding"] for r in rows], dtype=np.float32).reshape(-1, dim))
        res.rejects = [
            {"path": r["key"], "modality": r["modality"], "reason": r["reject_reason"]}
            for r in t
            if r["embedding"] is None
        ]
        return res
    with np.load(path, allow_pickle=False) as z:
        return EmbedResult(
            z["voice_keys"].tolist(),
            z["voice"],
            z["face_keys"].tolist(),
            z["face"],
            [
                {"path": p, "modality": m, "reason": r}
                for p, m, r in zip(
                    z["reject_paths"].tolist(), z["reject_modalities"].tolist(), z["reject_reasons"].tolist()
                )
            ],
        )
