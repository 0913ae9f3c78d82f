"""Streaming embed and score runs: the :class:`Batcher` (items to embeddings a batch at a time),
the ``OUT.partial`` resume :class:`Journal` (its file format: a header line, then JSON records, the
embeddings in them base64 little-endian float32) and the progress bar. What each record holds is
the business of the run writing it (avtrain.serve.embed, avtrain.serve.score)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from avtrain.serve.errors import InferenceError
from avtrain.serve.model import FaceVoiceModel, Item

__all__ = [
    "JOURNAL_SUFFIX",
    "JOURNAL_VERSION",
    "Batcher",
    "Journal",
    "decode_embeddings",
    "encode_embeddings",
    "journal_settings",
    "note_journal",
    "progress_bar",
]

JOURNAL_SUFFIX = ".partial"  # OUT.partial: what a stopped embed/score run had finished
JOURNAL_VERSION = 1


class Batcher:
    """Items of one modality, in order, to embeddings a batch at a time.

    A batch is exactly ``batch_size`` usable arrays (the last may be shorter): the batches
    :meth:`FaceVoiceModel.embed_inputs` makes of all the arrays at once, so the embeddings are
    the floats that embedding everything together gives (a forward pass is not batch-invariant
    to the last bit), while at most one batch of arrays is held. Rejects ride along in order:
    each call of ``on_batch(batch, h)`` covers every item added since the previous call, as
    (tag, item) pairs, with h the (n_usable, embed_dim) float32 embeddings."""

    def __init__(self, model: FaceVoiceModel, modality: str, batch_size: int, on_batch):
        self.model, self.modality, self.batch_size, self.on_batch = model, modality, batch_size, on_batch
        self.pending: list[tuple[object, Item]] = []
        self.n_usable = 0

    def add(self, tag, item: Item) -> None:
        self.pending.append((tag, item))
        if item.array is not None:
            self.n_usable += 1
            if self.n_usable == self.batch_size:
                self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        arrays = [it.array for _, it in self.pending if it.array is not None]
        h = (
            self.model.embed_inputs(arrays, self.modality, self.batch_size)
            if arrays
            else np.zeros((0, self.model.embed_dim), np.float32)
        )
        batch, self.pending, self.n_usable = self.pending, [], 0
        self.on_batch(batch, h)


def encode_embeddings(h: np.ndarray) -> str:
    """How a journal record holds embeddings: base64 of their little-endian float32 bytes."""
    import base64

    return base64.b64encode(np.ascontiguousarray(h, dtype="<f4").tobytes()).decode("ascii")


def decode_embeddings(text: str, dim: int) -> np.ndarray:
    """(n, dim) float32 embeddings of a journal record's base64 text (encode_embeddings')."""
    import base64

    return np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4").reshape(-1, dim)


class Journal:
    """OUT.partial: a run's finished batches, appended as they come, so that a stopped run
    resumes where it stopped; removed once OUT is written.

    JSON lines: a header (``{"journal", "version", "settings"}``), then records. A journal is
    resumed only under exactly the same settings (inputs' digest, model weights, batch size,
    device, ...); another one is started over. Appends are flushed, not fsynced: a torn last
    line is dropped. The file is locked (``flock``) while a run holds it, so two runs never
    write one journal."""

    def __init__(self, path: Path, kind: str, settings: dict):
        self.path = Path(path)
        self.header = json.loads(
            json.dumps({"journal": kind, "version": JOURNAL_VERSION, "settings": settings})
        )
        self.resumed = False  # it held records of an earlier run with these settings
        self.restarted = False  # it held another run's records: they were dropped
        self._f = None

    def open(self) -> Journal:
        import fcntl

        from avdata.io import make_output_dir

        make_output_dir(self.path.parent)  # a dangling symlink or a file: one line
        f = open(self.path, "a+b")  # noqa: SIM115 (held open, closed by close())
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise InferenceError(
                f"{self.path}: another run is writing this output now; wait for it or choose another --out"
            ) from None
        self._f = f
        f.seek(0)
        end = self._good_end(f)
        if end is None:  # absent, empty, foreign or another run's: start over
            self.restarted = f.seek(0, os.SEEK_END) > 0
            f.truncate(0)
            self.write(self.header)
        else:
            f.truncate(end)  # a torn or unreadable tail (the run was killed mid-write) goes
            self.resumed = end > len(self._line(self.header))
        return self

    @staticmethod
    def _line(record: dict) -> bytes:
        return (json.dumps(record, separators=(",", ":")) + "\n").encode()

    def _good_end(self, f) -> int | None:
        """Byte length of the header and the whole, parseable records after it; None if the
        header is not this run's."""
        end = 0
        for n, line in enumerate(f):
            try:
                obj = json.loads(line) if line.endswith(b"\n") else None
            except ValueError:
                obj = None
            if n == 0 and obj != self.header:
                return None
            if not isinstance(obj, dict):
                break
            end += len(line)
        return end or None

    def records(self):
        """The records after the header, in order, read back from the file."""
        with open(self.path, "rb") as f:
            f.readline()
            for line in f:
                yield json.loads(line)

    def write(self, record: dict) -> None:
        from avdata.io import disk_full_errors

        with disk_full_errors(self.path):
            self._f.write(self._line(record))
            self._f.flush()

    def replay_error(self, exc: Exception) -> InferenceError:
        return InferenceError(
            f"{self.path}: unreadable resume journal ({type(exc).__name__}); delete it to start over"
        )

    def close(self, remove: bool = False) -> None:
        if self._f is not None:
            if remove:
                self.path.unlink(missing_ok=True)
            self._f.close()  # releases the lock
            self._f = None


def journal_settings(model: FaceVoiceModel, batch_size: int) -> dict:
    """What must not change for a journal to be resumed: the weights, the preprocessing, the
    device and the batches (which change the embeddings' last bits)."""
    return {
        "model_sha256": model.fingerprint(),
        "extract": dataclasses.asdict(model.extract),
        "device": str(model.device),
        "batch_size": int(batch_size),
    }


def note_journal(journal: Journal, echo) -> None:
    """Say (through echo, if given) that a run resumes a journal, or drops another run's."""
    if echo and journal.resumed:
        echo(f"resuming from {journal.path} (the finished part of a stopped run with the same settings)")
    elif echo and journal.restarted:
        echo(f"{journal.path} was left by a run with other inputs or settings: starting over")


def progress_bar(seq, enabled: bool, desc: str, unit: str = "file", **kw):
    """seq, with a tqdm progress bar on stderr when enabled (--progress)."""
    from tqdm import tqdm

    return tqdm(seq, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, **kw)
