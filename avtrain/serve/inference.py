"""A trained AML model on raw media: embed, match, score and export (``avtrain embed|match|score|export``).

Every raw file goes through **the same preprocessing as ``avdata build-shards``**, by calling the
same code, never a copy of it:

* audio (wav, flac, m4a, or the audio track of an mp4): :class:`avdata.extract.Extractor`
  -> :func:`avdata.audio.audio_features` (the 224x125 dB spectrogram recipe). A voice is its
  first 125-frame window, the ``_w0`` sample of the shards;
* faces (jpg/png, or mp4 frames at the build's fps): the Extractor's
  :class:`avdata.faces.FaceAligner` (MTCNN on <= 640 px, square crop from the original, 224x224),
  then the JPEG round trip that the shard writer applies (:func:`avdata.shards._encode`, quality
  95, no chroma subsampling, decoded by :func:`avdata.reader.decode_jpg`): the model was trained
  on those decoded pixels, so raw-media embeddings equal shard embeddings (tests/test_inference.py);
* normalisation and the forward pass: :func:`avtrain.methods.aml.model.normalise_audio` /
  :func:`~avtrain.methods.aml.model.normalise_face` and ``AML.embed_audio`` / ``AML.embed_face``, as in
  ``avtrain evaluate``.

Scores are ``-L2`` between the 128-d embeddings (``avtrain evaluate``'s rule): higher = more
likely the same person. Bad inputs (missing, empty or corrupt files, silent or too-short audio,
images without a face, unsafe list paths) become rejects with a one-line reason; they never stop
a run.

A model is loaded from a run directory (``checkpoint.pt``, read with ``weights_only=True``) or
from an ``avtrain export`` directory (``model.safetensors`` + ``config.json``: no pickle at all).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from avdata.errors import AvmatchError, InputError, UnsafeInputError
from avdata.extract import ExtractConfig, Extractor
from avdata.untrusted import leads_outside
from avtrain.evaluation.evaluate import SCORE_KIND  # the one scoring rule (-L2)

__all__ = [
    "EXPORT_CONFIG",
    "EXPORT_WEIGHTS",
    "SCORE_KIND",
    "FaceVoiceModel",
    "InferenceError",
    "embed_files",
    "embed_to_file",
    "export_model",
    "load_model",
    "match",
    "read_pair_list",
    "safe_join",
    "score_pairs",
]

EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"
EXPORT_FORMAT = "avmatch.model"
AUDIO_EXTS = (".wav", ".flac", ".m4a")  # avdata.ingest's, plus videos for their audio track
FACE_EXTS = (".jpg", ".jpeg", ".png")
VIDEO_EXTS = (".mp4",)
MISSING = "nan"  # the score written for a pair that could not be scored


class InferenceError(AvmatchError):
    """A problem with a model, a list or the settings of embed/match/score/export (one line)."""


# --------------------------------------------------------------------------- loading


def _device(name: str | torch.device) -> torch.device:
    from avtrain.run.checkpoint import pick_device

    return pick_device(str(name))  # a device this machine lacks: one-line DeviceError


def _load_from_run(run: Path, device: torch.device, which: str = "last"):
    from avtrain.run.checkpoint import load_run

    model, state, cfg = load_run(run, device, which)  # checksummed, weights_only; errors are one line
    return (
        model,
        cfg,
        {
            "kind": "run",
            "path": str(run),
            "epoch": int(state.get("epoch", 0)),
            "step": int(state.get("step", 0)),
        },
    )


EXPORT_MAX_WEIGHTS_BYTES = 1 << 30  # an AML model's tensors are ~3.3 MiB
_EXPORT_KEYS = (
    "format",
    "format_version",
    "train_config",
    "extract",
    "spectrogram",
    "scoring",
    "aliases",
    "epoch",
    "step",
    "source_run",
    "weights_sha256",
    "labels",  # the LabelSpace of a method that classifies identities (its classifier's size)
)


def _check_export_config(meta, cfg_path: Path):
    """An export's config.json, checked like a fit config before anything in it is used: a JSON
    object of the keys export writes, format avmatch.model version 1, a sha256 hex digest, aliases
    a {name: name} object, epoch/step non-negative integers, ``train_config`` a valid
    :class:`~avtrain.run.config.TrainConfig` and ``extract`` a valid :class:`ExtractConfig` (known keys,
    types, ranges). Returns (TrainConfig, ExtractConfig); anything else is one line naming the file."""
    from avtrain.run.checkpoint import labels_problem
    from avtrain.run.config import TrainConfig

    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise InferenceError(f"{cfg_path}: not an avtrain export (format is not {EXPORT_FORMAT!r})")
    problem = None
    unknown = sorted(set(meta) - set(_EXPORT_KEYS))
    missing = [k for k in ("format_version", "train_config", "extract", "weights_sha256") if k not in meta]
    aliases = meta.get("aliases", {})
    if unknown:
        problem = f"unknown key(s) {', '.join(map(repr, unknown))}"
    elif missing:
        problem = f"lacks {', '.join(missing)}"
    elif meta["format_version"] != 1 or isinstance(meta["format_version"], bool):
        problem = f"format_version {meta['format_version']!r} is not 1 (made by another avmatch version?)"
    elif not (
        isinstance(meta["weights_sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", meta["weights_sha256"])
    ):
        problem = "weights_sha256 is not a sha256 hex digest"
    elif not (isinstance(aliases, dict) and all(isinstance(v, str) for v in aliases.values())):
        problem = "aliases is not an object of tensor name -> tensor name"
    elif "labels" in meta and labels_problem(meta["labels"]):
        problem = labels_problem(meta["labels"])
    else:
        for key in ("epoch", "step"):
            v = meta.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                problem = f"{key} {v!r} is not a non-negative integer"
    if problem:
        raise InferenceError(f"{cfg_path}: {problem}")
    try:
        cfg = TrainConfig.from_dict(meta["train_config"])
    except AvmatchError as exc:  # ConfigError: one line naming the key
        raise InferenceError(f"{cfg_path}: train_config: {exc}") from None
    try:
        return cfg, ExtractConfig.from_dict(meta["extract"])
    except AvmatchError as exc:  # ExtractConfigError: one line naming the key (extract.KEY)
        raise InferenceError(f"{cfg_path}: {exc}") from None


def _load_from_export(directory: Path, device: torch.device):
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    from avdata.io import sha256_bytes
    from avdata.untrusted import read_inside
    from avtrain.methods import LabelSpace, build_method

    cfg_path, weights = directory / EXPORT_CONFIG, directory / EXPORT_WEIGHTS
    raw = read_inside(directory, EXPORT_CONFIG)  # a regular file inside the directory, capped
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InferenceError(f"{cfg_path}: not a readable model config ({type(exc).__name__})") from None
    cfg, extract = _check_export_config(meta, cfg_path)
    data = read_inside(directory, EXPORT_WEIGHTS, max_bytes=EXPORT_MAX_WEIGHTS_BYTES)
    if sha256_bytes(data) != meta["weights_sha256"]:
        raise UnsafeInputError(
            f"{weights}: sha256 differs from {cfg_path}'s weights_sha256; refusing to load"
        )
    try:
        tensors = load_safetensors(data)
        for alias, target in meta.get("aliases", {}).items():  # tensors shared in the model (one generator)
            tensors[alias] = tensors[target]
        labels = meta.get("labels")  # checked by _check_export_config
        model = build_method(cfg, LabelSpace.from_dict(labels) if labels is not None else None)
        model.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise InferenceError(
            f"{directory}: cannot load the exported model ({type(exc).__name__}: {first})"
        ) from None
    model.to(device).eval()
    return (
        model,
        cfg,
        extract,
        {"kind": "export", "path": str(directory), "epoch": meta.get("epoch"), "step": meta.get("step")},
    )


def load_model(
    run_or_file: str | Path,
    device: str | torch.device = "cpu",
    extract: ExtractConfig | None = None,
    checkpoint: str = "last",
) -> FaceVoiceModel:
    """A trained model ready for raw media.

    ``run_or_file``: a run directory (``checkpoint.pt``), an ``avtrain export`` directory
    (``model.safetensors`` + ``config.json``), or either file. ``device``: auto, cpu, cuda,
    cuda:N. ``extract``: the preprocessing settings; default: those recorded in an export,
    else avdata's defaults (what ``avdata build-shards`` uses unless told otherwise).
    ``checkpoint``: of a run directory, ``last``, ``best`` (kept by ``fit --val-shards``) or a path,
    as ``avtrain evaluate --checkpoint``.
    """
    path = Path(run_or_file)
    which, named_export = checkpoint, False
    if path.is_file():  # a checkpoint file (best.pt, epoch-0003.pt, ...) or an export's file
        which = str(path) if path.suffix == ".pt" else "last"
        named_export = path.name in (EXPORT_WEIGHTS, EXPORT_CONFIG)
        path = path.parent
    if not path.is_dir():
        raise InferenceError(f"{run_or_file}: no such run or model directory")
    dev = _device(device)
    from avtrain.run.checkpoint import LAST as CHECKPOINT

    # --checkpoint best / a .pt path names a run's checkpoint; only the default may mean an export
    # (anything named model.safetensors is the export's: a FIFO or a link out is refused there)
    export = which == "last" and os.path.lexists(path / EXPORT_WEIGHTS)
    if export and not named_export and (path / CHECKPOINT).is_file():
        raise InferenceError(
            f"{path}: holds both a run's {CHECKPOINT} and an export's {EXPORT_WEIGHTS} (exported into the "
            f"run directory?); name the one to use ({path / CHECKPOINT} or {path / EXPORT_WEIGHTS}), or "
            f"move the export out"
        )
    if export:
        model, cfg, saved_extract, source = _load_from_export(path, dev)
    elif which != "last" or (path / CHECKPOINT).is_file():
        (model, cfg, source), saved_extract = _load_from_run(path, dev, which), ExtractConfig()
    else:
        raise InferenceError(
            f"{path}: neither {CHECKPOINT} (avtrain fit) nor {EXPORT_WEIGHTS} (avtrain export)"
        )
    return FaceVoiceModel(model, cfg, dev, extract or saved_extract, source)


def export_model(
    run: str | Path, out: str | Path, extract: ExtractConfig | None = None, checkpoint: str = "last"
) -> dict:
    """Write OUT/model.safetensors (the model's tensors only) and OUT/config.json; return the config."""
    from safetensors.torch import save as save_safetensors

    from avdata.io import atomic_write_bytes, check_output_dir, make_output_dir, sha256_file, write_json
    from avtrain.run.checkpoint import BEST, LAST
    from avtrain.run.config import TrainConfig

    out = check_output_dir(out)  # a dangling symlink: one line, before the model is loaded
    run_dir = Path(run).parent if Path(run).is_file() else Path(run)
    held = [n for n in (LAST, BEST, "config.yaml") if os.path.lexists(out / n)]
    if held or out.resolve() == run_dir.resolve():
        raise InferenceError(
            f"--out {out} is a run directory (it holds {', '.join(held) or 'the run'}): an export there would "
            f"shadow the run for every later --run {out}; export into a directory of its own"
        )
    model = load_model(run, "cpu", extract, checkpoint)
    if model.source["kind"] != "run":
        raise InferenceError(f"{run}: already an export; copy the directory instead")
    tensors, aliases, seen = {}, {}, {}
    for name, tensor in model.model.state_dict().items():
        ptr = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ptr in seen and tensor.numel():  # safetensors stores no shared tensors: keep one, name the rest
            aliases[name] = seen[ptr]
            continue
        seen[ptr] = name
        tensors[name] = tensor.detach().cpu().contiguous()
    make_output_dir(out)
    atomic_write_bytes(out / EXPORT_WEIGHTS, save_safetensors(tensors))
    from avdata.audio import SPEC_CONFIG

    meta = {
        "format": EXPORT_FORMAT,
        "format_version": 1,
        "train_config": TrainConfig.to_dict(model.cfg),
        **({"labels": model.model.labels.to_dict()} if model.model.labels is not None else {}),
        "extract": dataclasses.asdict(model.extract),
        "spectrogram": SPEC_CONFIG,
        "scoring": {"kind": SCORE_KIND, "rule": "score = -Euclidean distance between 128-d embeddings"},
        "aliases": aliases,
        "epoch": model.source["epoch"],
        "step": model.source["step"],
        "source_run": str(run),
        "weights_sha256": sha256_file(out / EXPORT_WEIGHTS),
    }
    write_json(out / EXPORT_CONFIG, meta)
    return meta


# --------------------------------------------------------------------------- the model


@dataclass
class Item:
    """One input after preprocessing: a voice spectrogram or an aligned face (or a reject)."""

    key: str
    modality: str  # "voice" | "face"
    array: np.ndarray | None = None
    reason: str = ""
    path: str = ""


class FaceVoiceModel:
    """A trained AML model with build-shards' preprocessing: raw voice/face in, 128-d h out.

    ``embed_voice(path | waveform, sr=None)`` and ``embed_face(path | PIL image)`` return a
    float32 (128,) vector; ``score(voice_h, face_h)`` is -L2. Bad inputs raise
    :class:`avdata.errors.InputError` (one line naming the file).
    """

    def __init__(self, model, cfg, device: torch.device, extract: ExtractConfig, source: dict):
        self.model, self.cfg, self.device, self.source = model, cfg, device, source
        self.extract = dataclasses.replace(extract, windows=1)  # a voice is its first window (_w0)
        self._extractor = Extractor(self.extract, device=str(device) if device.type == "cuda" else "cpu")
        self._fingerprint: str | None = None
        self.embed_dim = int(model.embed_dim)  # the method's embedding size (AML: 128)

    def fingerprint(self) -> str:
        """sha256 of the model's tensors (names, dtypes, shapes and bytes), computed once: a
        resume journal (OUT.partial) is only used with the weights that wrote it."""
        if self._fingerprint is None:
            import hashlib

            digest = hashlib.sha256()
            for name, tensor in self.model.state_dict().items():
                tensor = tensor.detach().cpu().contiguous()
                digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    # preprocessing ----------------------------------------------------------------

    def voice_input(self, voice, sr: int | None = None, source: str = "<waveform>") -> np.ndarray:
        """(224, 125) float32 dB spectrogram of a file or a waveform (with its sample rate: a
        whole number of Hz in 4-768 kHz, as a file's header; a long waveform is streamed)."""
        if isinstance(voice, (str, Path)):
            return self._one(self._extract_path(str(voice), "audio"))
        from avdata.audio import waveform_windows

        if sr is None:
            raise ValueError("embed_voice(waveform) needs its sample rate: sr=")
        return waveform_windows(voice, sr, 1, source)[0]  # a file's bounds: sample rate, streaming

    def face_input(self, face, source: str = "<image>") -> np.ndarray:
        """(224, 224, 3) uint8 aligned face of an image file or a PIL image, as stored in shards."""
        if isinstance(face, (str, Path)):
            return self._one(self._extract_path(str(face), "face"))
        crop = self._extractor.aligner.align(face, source=source)
        return _shard_jpeg_round_trip(crop.face, self.extract.jpeg_quality)

    @staticmethod
    def _one(items: list[Item]) -> np.ndarray:
        if items[0].array is None:
            raise InputError(items[0].path, items[0].reason)
        return items[0].array

    def _extract_path(self, path: str, modality: str) -> list[Item]:
        """Items of one file through avdata's Extractor; modality 'audio' or 'face'."""
        kind = (
            "video"
            if Path(path).suffix.lower() in VIDEO_EXTS
            else ("face" if modality == "face" else "audio")
        )
        row = {
            "path": path,
            "rel_path": Path(path).name,
            "name": "",
            "vox_id": "x",
            "source_id": "",
            "modality": kind,
        }
        result = self._extractor.extract(row, modality)
        out_mod = "voice" if modality == "audio" else "face"
        items = []
        for sample in result.samples:
            if modality == "audio":
                items.append(Item(path, out_mod, sample.array, path=path))
            else:
                key = f"{path}#f{sample.meta['frame']}" if kind == "video" else path
                items.append(
                    Item(
                        key,
                        out_mod,
                        _shard_jpeg_round_trip(sample.array, self.extract.jpeg_quality),
                        path=path,
                    )
                )
        for rej in result.rejects:
            items.append(Item(path, out_mod, None, rej["reason"], path=path))
        return items

    # embedding ----------------------------------------------------------------------

    def embed_inputs(self, arrays: list[np.ndarray], modality: str, batch_size: int = 64) -> np.ndarray:
        """(N, D) float32 embeddings of preprocessed arrays (spectrograms or aligned faces)."""
        from avtrain.methods.encoders import normalise_audio, normalise_face

        out = np.zeros((len(arrays), self.embed_dim), dtype=np.float32)
        seam_modality = "audio" if modality == "voice" else "face"  # the seam speaks avdata's names
        norm = normalise_audio if modality == "voice" else normalise_face
        for s in range(0, len(arrays), batch_size):
            x = norm(np.stack(arrays[s : s + batch_size]))
            with torch.inference_mode():
                out[s : s + x.shape[0]] = (
                    self.model.embed(seam_modality, x.to(self.device)).float().cpu().numpy()
                )
        if not np.isfinite(out).all():
            raise InferenceError("the model produced NaN/inf embeddings")
        return out

    def embed_voice(self, voice, sr: int | None = None) -> np.ndarray:
        """128-d h of a voice: a file path, or a waveform array with ``sr``."""
        return self.embed_inputs([self.voice_input(voice, sr)], "voice")[0]

    def embed_face(self, face) -> np.ndarray:
        """128-d h of a face: an image file path, or a PIL image."""
        return self.embed_inputs([self.face_input(face)], "face")[0]

    @staticmethod
    def score(voice_h: np.ndarray, face_h: np.ndarray) -> float:
        """-L2 distance (higher = more likely the same person), as avtrain evaluate scores."""
        diff = np.asarray(voice_h, dtype=np.float64) - np.asarray(face_h, dtype=np.float64)
        return -float(np.sqrt((diff * diff).sum()))


def _shard_jpeg_round_trip(face: np.ndarray, quality: int) -> np.ndarray:
    """The pixels a shard stores for this aligned face: the shard writer's own encoder, then
    the shard reader's own decoder (the model was trained on exactly these)."""
    from avdata.extract import Sample
    from avdata.reader import decode_jpg
    from avdata.shards import _encode

    members = dict(_encode(Sample("x", "face", face, {}), 0, quality))
    return decode_jpg(members["jpg"])


# --------------------------------------------------------------------------- streaming

JOURNAL_SUFFIX = ".partial"  # OUT.partial: what a stopped embed/score run had finished
JOURNAL_VERSION = 1


class _Batcher:
    """Items of one modality, in order, to embeddings a batch at a time.

    A batch is exactly ``batch_size`` usable arrays (the last may be shorter): the batches
    :meth:`FaceVoiceModel.embed_inputs` makes of all the arrays at once, so the embeddings are
    the floats that embedding everything together gives (a forward pass is not batch-invariant
    to the last bit), while at most one batch of arrays is held. Rejects ride along in order:
    each call of ``on_batch(batch, h)`` covers every item added since the previous call, as
    (tag, item) pairs, with h the (n_usable, 128) float32 embeddings."""

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


def _b64(h: np.ndarray) -> str:
    import base64

    return base64.b64encode(np.ascontiguousarray(h, dtype="<f4").tobytes()).decode("ascii")


def _unb64(text: str, dim: int) -> np.ndarray:
    import base64

    return np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4").reshape(-1, dim)


class _Journal:
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

    def open(self) -> _Journal:
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


def _settings(model: FaceVoiceModel, batch_size: int) -> dict:
    """What must not change for a journal to be resumed: the weights, the preprocessing, the
    device and the batches (which change the embeddings' last bits)."""
    return {
        "model_sha256": model.fingerprint(),
        "extract": dataclasses.asdict(model.extract),
        "device": str(model.device),
        "batch_size": int(batch_size),
    }


# --------------------------------------------------------------------------- embed


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
    journal: _Journal | None = None,
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
                h = _unb64(rec["h"], model.embed_dim)
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
                        "h": _b64(h),
                        "r": [[j, k, it.path, it.reason] for (j, k), it in batch if it.array is None],
                    }
                )

        return record

    batchers = {mod: _Batcher(model, mod, batch_size, on_batch(mod)) for mod in ("voice", "face")}
    start = min(resume["voice"][0], resume["face"][0])
    for j in _progress(range(start, len(jobs)), progress, "embed", initial=start, total=len(jobs)):
        path, extract_as = jobs[j]
        mod = "voice" if extract_as == "audio" else "face"
        first_job, first_item = resume[mod]
        if j < first_job:
            continue
        for k, it in enumerate(model._extract_path(path, extract_as)):
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
    128-d results, not every file's arrays."""
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
    settings = _settings(model, batch_size) | {
        "jobs_sha256": sha256_text(json.dumps(jobs)),
        "jobs": len(jobs),
    }
    journal = _Journal(out.with_name(out.name + JOURNAL_SUFFIX), "avtrain embed", settings).open()
    try:
        _note_journal(journal, echo)
        res = _embed_stream(model, jobs, batch_size, progress, journal)
        write_embeddings(res, out)
    except BaseException:
        journal.close()
        raise
    journal.close(remove=True)
    return res


def _note_journal(journal: _Journal, echo) -> None:
    if echo and journal.resumed:
        echo(f"resuming from {journal.path} (the finished part of a stopped run with the same settings)")
    elif echo and journal.restarted:
        echo(f"{journal.path} was left by a run with other inputs or settings: starting over")


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


# --------------------------------------------------------------------------- match


def match(
    model: FaceVoiceModel, query: str, query_modality: str, gallery: list[str], batch_size: int = 64
) -> dict:
    """Rank a gallery of the other modality for one query by -L2 (best first).

    Returns {"query", "query_modality", "gallery_modality", "score", "ranking": [{"rank",
    "path", "score"}], "rejects": [{"path", "reason"}]}. A query that cannot be used is an
    InputError; bad gallery files are rejects. Ties keep the gallery's order.
    """
    if query_modality not in ("voice", "face"):
        raise ValueError(query_modality)
    if not gallery:
        raise InferenceError("match needs at least one gallery file")
    g_mod = "face" if query_modality == "voice" else "voice"
    to_extract = {"voice": "audio", "face": "face"}
    q_items = model._extract_path(query, to_extract[query_modality])[:1]
    q = model._one(q_items)
    g_items = [model._extract_path(p, to_extract[g_mod])[0] for p in gallery]  # a video: its first frame
    good = [it for it in g_items if it.array is not None]
    hq = model.embed_inputs([q], query_modality, batch_size)
    hg = model.embed_inputs([it.array for it in good], g_mod, batch_size)
    from avtrain.evaluation import metrics as M

    scores = (
        M.gather_scores(
            hq.astype(np.float64),
            hg.astype(np.float64),
            np.zeros(1, np.intp),
            np.arange(len(good), dtype=np.intp)[None, :],
            kind=SCORE_KIND,
        )[0]
        if good
        else []
    )
    order = sorted(range(len(good)), key=lambda i: (-scores[i], i))
    return {
        "query": query,
        "query_modality": query_modality,
        "gallery_modality": g_mod,
        "score": SCORE_KIND,
        "ranking": [
            {"rank": r + 1, "path": good[i].path, "score": float(scores[i])} for r, i in enumerate(order)
        ],
        "rejects": [{"path": it.path, "reason": it.reason} for it in g_items if it.array is None],
    }


def format_ranking(result: dict) -> str:
    head = (
        f"{result['query_modality']} {result['query']}: {len(result['ranking'])} {result['gallery_modality']}(s) "
        f"ranked by score = -L2 (higher = more likely the same person)"
    )
    lines = [head]
    lines += [f"{r['rank']:>4}  {r['score']:>10.4f}  {r['path']}" for r in result["ranking"]]
    lines += [f"   -  {'rejected':>10}  {r['path']}: {r['reason']}" for r in result["rejects"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------- pair lists

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
PINS_HEADER = ["id", "voice-speaker-id", "face-speaker-id", "label", "voice-path", "face-path"]
FORMATS = ("auto", "fame", "labelled", "pins-csv")


def safe_join(root: str | Path, rel: str) -> Path:
    """ROOT/rel for an untrusted relative path: refuses absolute paths, '..', URLs / 'pipe:',
    backslashes and symlinks that lead outside ROOT with UnsafeInputError (a name from a list
    never leaves its root)."""
    if not rel:
        raise UnsafeInputError(f"{rel!r}: empty path")
    if "\x00" in rel:
        raise UnsafeInputError(f"{rel!r}: the path contains a NUL byte")
    if "\\" in rel:
        raise UnsafeInputError(f"{rel!r}: backslash in a list path")
    if _SCHEME.match(rel):
        raise UnsafeInputError(f"{rel!r}: a URL or scheme, not a relative path")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or rel.startswith("~"):
        raise UnsafeInputError(f"{rel!r}: absolute path; list paths must be relative to --root")
    if ".." in pure.parts:
        raise UnsafeInputError(f"{rel!r}: '..' would leave --root")
    path = Path(root) / pure
    try:
        outside = leads_outside(root, path)
    except (OSError, RuntimeError) as exc:  # a symlink loop, an unreadable component
        raise UnsafeInputError(f"{rel!r}: cannot resolve the path ({exc})") from None
    if outside:
        raise UnsafeInputError(f"{rel!r}: a symlink leads outside {root}")
    return path


@dataclass(slots=True)  # one per list line: no per-object __dict__
class Pair:
    id: str
    voice: str
    face: str
    label: int | None = None
    line: int = 0  # 1-based line of the list file


def read_pair_list(path: str | Path, fmt: str = "auto") -> tuple[str, list[Pair]]:
    """(format, pairs) of a pair list. Formats:

    * ``fame``: FAME challenge test lists, ``ID voice_path face_path`` per line;
    * ``labelled``: VoxCeleb-style verification lists, ``LABEL voice_path face_path`` (LABEL 0/1;
      the pair's ID is its 1-based line number);
    * ``pins-csv``: Learnable-PINs ``veriflist_*.txt``, CSV with the header
      ``id,voice-speaker-id,face-speaker-id,label,voice-path,face-path``.
    ``auto``: pins-csv if that header is the first line; else, from the first fields of all
    lines, labelled if they are all 0 or 1 and repeat, fame if some are not 0/1 and no 0/1
    repeats (IDs are unique); any other list is ambiguous and refused (:func:`_detect_format`).
    A UTF-8 byte order mark is ignored. Repeated pair IDs are refused.
    """
    if fmt not in FORMATS:
        raise InferenceError(f"unknown list format {fmt!r}; one of {FORMATS}")
    from avdata.untrusted import MAX_INDEX_BYTES, read_regular

    path = Path(path)
    raw = read_regular(path, MAX_INDEX_BYTES, "pair list not found")  # regular, capped: no FIFO wait
    try:
        text = raw.decode("utf-8-sig")  # -sig: a leading byte order mark is dropped
    except UnicodeDecodeError as exc:
        raise InferenceError(f"{path}: cannot read the pair list ({type(exc).__name__})") from None
    del raw
    lines = text.splitlines()
    del text
    if fmt == "auto":
        fmt = _detect_format(path, lines)
    pairs: list[Pair] = []
    if fmt == "pins-csv":
        import csv

        rows = list(csv.reader(lines))
        if not rows or [c.strip() for c in rows[0]] != PINS_HEADER:
            raise InferenceError(f"{path}: first line is not the header {','.join(PINS_HEADER)}")
        for n, row in enumerate(rows[1:], 2):
            if not row:
                continue
            if len(row) != 6 or row[3].strip() not in ("0", "1"):
                raise InferenceError(f"{path}:{n}: expected 6 CSV fields with label 0/1")
            pairs.append(Pair(row[0].strip(), row[4].strip(), row[5].strip(), int(row[3]), n))
        _check_unique_ids(path, pairs)
        return fmt, pairs
    for n, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        parts = ln.split()
        if len(parts) != 3:
            raise InferenceError(
                f"{path}:{n}: expected 3 fields ({'LABEL' if fmt == 'labelled' else 'ID'} "
                f"voice face), got {len(parts)}"
            )
        if fmt == "labelled":
            if parts[0] not in ("0", "1"):
                raise InferenceError(f"{path}:{n}: label {parts[0]!r} is not 0 or 1")
            pairs.append(Pair(str(n), parts[1], parts[2], int(parts[0]), n))
        else:
            pairs.append(Pair(parts[0], parts[1], parts[2], None, n))
    _check_unique_ids(path, pairs)
    return fmt, pairs


def _detect_format(path: Path, lines: list[str]) -> str:
    """The format of a list from all its lines (see read_pair_list); one-line InferenceError
    when it fits both labelled and fame, or neither."""
    first = next((ln for ln in lines if ln.strip()), "")
    if [c.strip() for c in first.split(",")] == PINS_HEADER:
        return "pins-csv"
    heads = [(n, ln.split()[0]) for n, ln in enumerate(lines, 1) if ln.strip()]
    if not heads:
        return "fame"  # no pairs either way
    not_label = next(((n, h) for n, h in heads if h not in ("0", "1")), None)
    seen: dict[str, int] = {}  # a repeated 0/1 first field: a label (FAME IDs are unique)
    repeat = next(((n, seen[h]) for n, h in heads if h in ("0", "1") and seen.setdefault(h, n) != n), None)
    if not_label is None and repeat is not None:
        return "labelled"
    if not_label is not None and repeat is None:
        return "fame"
    if not_label is None:  # one or two lines, first fields 0 and 1: labels or FAME IDs
        raise InferenceError(
            f"{path}: ambiguous list: its first fields are all 0/1 but never repeat, so it reads as "
            "labelled (LABEL voice face) or as FAME (ID voice face); give --format labelled or --format fame"
        )
    raise InferenceError(
        f"{path}: neither a labelled nor a FAME list: line {not_label[0]} starts with {not_label[1]!r}, "
        f"not a 0/1 label, and line {repeat[0]} repeats the first field of line {repeat[1]}, which a "
        "FAME ID may not; fix the list or give --format"
    )


def _check_unique_ids(path: Path, pairs: list[Pair]) -> None:
    """Refuse a list whose pair IDs repeat: its score file would be an invalid FAME submission
    (one score per ID), and which of the repeated pairs a score belongs to would be lost."""
    seen: dict[str, int] = {}
    for p in pairs:
        first = seen.setdefault(p.id, p.line)
        if first != p.line:
            raise InferenceError(
                f"{path}:{p.line}: pair ID {p.id!r} repeats line {first}; pair IDs must be unique "
                "(a FAME submission has one score per ID)"
            )


class _ScorePlan:
    """The distinct files of a pair list per modality, in order of first use: their list paths,
    the last pair using each (its embedding is dropped after it), and for each list path its
    file's index or, for a refused path, the reason (never opened). About 300 bytes a pair
    beside the pairs themselves (the list paths are the pairs' own strings)."""

    def __init__(self, pairs: list[Pair], roots: dict[str, Path]):
        from array import array

        self.roots = roots
        self.rels: dict[str, list[str]] = {"voice": [], "face": []}
        self.last: dict[str, array] = {"voice": array("q"), "face": array("q")}
        self.index: dict[str, dict[str, int | str]] = {"voice": {}, "face": {}}
        for mod in ("voice", "face"):
            by_path: dict[str, int] = {}  # two spellings of one file ('a//b', 'a/b') are one file
            index, rels, last = self.index[mod], self.rels[mod], self.last[mod]
            for i, p in enumerate(pairs):
                rel = p.voice if mod == "voice" else p.face
                idx = index.get(rel)
                if idx is None:
                    try:
                        path = str(safe_join(roots[mod], rel))
                    except UnsafeInputError as exc:
                        index[rel] = f"unsafe path refused: {exc}"
                        continue
                    idx = index[rel] = by_path.setdefault(path, len(rels))
                    if idx == len(rels):
                        rels.append(rel)
                        last.append(i)
                if isinstance(idx, int):
                    last[idx] = i

    def path(self, mod: str, idx: int) -> str:
        """The file's path, as safe_join gave it when the plan checked it."""
        return str(self.roots[mod] / PurePosixPath(self.rels[mod][idx]))


def _score_stream(
    model: FaceVoiceModel,
    pairs: list[Pair],
    plan: _ScorePlan,
    journal: _Journal,
    values: str,
    batch_size: int,
    progress: bool,
) -> None:
    """Score the pairs in list order into the journal ('p' records: [line, -L2 or None, reject
    or None] per pair), preprocessing each distinct file once, in order of first use, and
    embedding a batch at a time (the batches embedding every file at once would make). Memory
    holds one batch of arrays per modality and the embeddings of files a later pair still uses."""
    from avtrain.evaluation import metrics as M

    cache: dict[str, dict[int, np.ndarray | str]] = {"voice": {}, "face": {}}  # embedding or reason
    cursor = {"voice": 0, "face": 0}  # next file to preprocess
    done = 0
    if journal.resumed:
        try:
            done = sum(len(rec["p"]) for rec in journal.records() if "p" in rec)
            for rec in journal.records():
                if "m" not in rec:
                    continue
                mod, live = rec["m"], cache[rec["m"]]
                h = _unb64(rec["h"], model.embed_dim)
                if len(rec["g"]) != h.shape[0]:
                    raise ValueError("batch record")
                for idx, reason in rec["r"]:
                    if plan.last[mod][idx] >= done:
                        live[idx] = str(reason)
                for idx, row in zip(rec["g"], h):
                    if plan.last[mod][idx] >= done:
                        live[idx] = row.astype(np.float64)
                cursor[mod] = int(rec["next"])
            if done > len(pairs):
                raise ValueError("more pairs than the list")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise journal.replay_error(exc) from None

    def on_batch(mod: str):
        def record(batch: list, h: np.ndarray) -> None:
            good = [idx for idx, it in batch if it.array is not None]
            for idx, row in zip(good, h):
                cache[mod][idx] = row.astype(np.float64)
            rejected = [[idx, it.reason] for idx, it in batch if it.array is None]
            journal.write({"m": mod, "next": cursor[mod], "g": good, "h": _b64(h), "r": rejected})

        return record

    batchers = {mod: _Batcher(model, mod, batch_size, on_batch(mod)) for mod in ("voice", "face")}

    def outcome(mod: str, rel: str) -> np.ndarray | str:
        idx = plan.index[mod][rel]
        if isinstance(idx, str):
            return idx  # a refused path
        live = cache[mod]
        while idx not in live:  # preprocess on, filling the batch that will hold idx
            if cursor[mod] < len(plan.rels[mod]):
                j = cursor[mod]
                cursor[mod] += 1
                it = model._extract_path(plan.path(mod, j), "audio" if mod == "voice" else "face")[0]
                if it.array is None:
                    live[j] = it.reason
                batchers[mod].add(j, it)
            elif batchers[mod].pending:
                batchers[mod].flush()
            else:  # only a journal edited by hand can claim a file it never held
                raise journal.replay_error(KeyError(f"{mod} file {idx}"))
        return live[idx]

    block: list[list] = []
    for i in _progress(
        range(done, len(pairs)), progress, "score", unit="pair", initial=done, total=len(pairs)
    ):
        p = pairs[i]
        got = [(m, r, outcome(m, r)) for m, r in (("voice", p.voice), ("face", p.face))]
        bad = [(m, r, why) for m, r, why in got if isinstance(why, str)]
        if bad:
            reject = {
                "id": p.id,
                "line": p.line,
                "voice": p.voice,
                "face": p.face,
                "reasons": [{"modality": m, "path": r, "reason": why} for m, r, why in bad],
            }
            block.append([f"{p.id} {MISSING}", None, reject])
        else:
            hv, hf = got[0][2], got[1][2]
            s = M.gather_scores(
                hv[None], hf[None], np.zeros(1, np.intp), np.zeros((1, 1), np.intp), kind=SCORE_KIND
            )[0, 0]
            line = f"{p.id} {((-s if values == 'l2' else s) + 0.0):.6f}"  # + 0.0: never '-0.000000'
            block.append([line, float(s), None])
        for m, r in (("voice", p.voice), ("face", p.face)):
            idx = plan.index[m][r]
            if isinstance(idx, int) and plan.last[m][idx] == i:
                cache[m].pop(idx, None)
        if len(block) == batch_size or i == len(pairs) - 1:
            journal.write({"p": block})
            block = []


def score_pairs(
    model: FaceVoiceModel,
    list_path: str | Path,
    root: str | Path,
    out: str | Path,
    fmt: str = "auto",
    values: str = "auto",
    voice_root: str | Path | None = None,
    face_root: str | Path | None = None,
    rejects_path: str | Path | None = None,
    batch_size: int = 64,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
) -> dict:
    """Score every pair of a list; write OUT (``ID SCORE`` per pair, in list order), the rejects
    (OUT.rejects.jsonl unless given) and, for labelled lists, AUC/EER with bootstrap CIs
    (OUT.metrics.json, computed on the scored pairs as ``avtrain evaluate`` does).

    ``values``: ``l2`` writes the L2 distance (lower = same person; the FAME challenge's
    convention), ``neg_l2`` writes -L2 (higher = same person; avtrain's score); ``auto``: l2
    for FAME lists, neg_l2 otherwise. A pair that cannot be scored gets the literal ``nan``.

    Pairs are scored as their files are embedded, a batch at a time, into OUT.partial (memory
    stays flat in the number of pairs); OUT and the rejects are written from it at the end,
    atomically. A run stopped half-way and started again with the same list, roots, model and
    settings goes on from OUT.partial, giving the same files as one run.
    """
    from array import array

    from avdata.io import atomic_output, sha256_file, write_json

    fmt, pairs = read_pair_list(list_path, fmt)
    if values == "auto":
        values = "l2" if fmt == "fame" else "neg_l2"
    if values not in ("l2", "neg_l2"):
        raise InferenceError(f"--values must be auto, l2 or neg_l2, got {values!r}")
    out = Path(out)
    rejects_path = Path(rejects_path) if rejects_path else out.with_name(out.name + ".rejects.jsonl")
    roots = {"voice": Path(voice_root or root), "face": Path(face_root or root)}
    plan = _ScorePlan(pairs, roots)
    settings = _settings(model, batch_size) | {
        "list_sha256": sha256_file(list_path),
        "format": fmt,
        "values": values,
        "roots": {m: os.path.realpath(r) for m, r in roots.items()},
    }
    journal = _Journal(out.with_name(out.name + JOURNAL_SUFFIX), "avtrain score", settings).open()
    try:
        _note_journal(journal, echo)
        _score_stream(model, pairs, plan, journal, values, batch_size, progress)
        scores, labels, n, n_rejected = array("d"), array("b"), 0, 0
        with atomic_output(out) as f_out, atomic_output(rejects_path) as f_rej:
            try:
                for rec in journal.records():
                    for line, s, reject in rec.get("p", ()):
                        f_out.write(f"{line}\n".encode())
                        if reject is not None:
                            f_rej.write((json.dumps(reject, sort_keys=True) + "\n").encode())
                            n_rejected += 1
                        else:
                            scores.append(s)
                            labels.append(pairs[n].label or 0)
                        n += 1
                if n != len(pairs):
                    raise ValueError(f"{n} pairs for a list of {len(pairs)}")
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                raise journal.replay_error(exc) from None
        summary = {
            "list": str(list_path),
            "format": fmt,
            "pairs": len(pairs),
            "scored": len(scores),
            "rejected": n_rejected,
            "values": values,
            "values_rule": (
                "L2 distance between 128-d embeddings (lower = same person)"
                if values == "l2"
                else "-L2 distance between 128-d embeddings (higher = same person)"
            ),
            "missing_marker": MISSING,
            "scores": str(out),
            "rejects": str(rejects_path),
        }
        if fmt != "fame" and scores:
            _add_metrics(
                summary, np.array(scores, dtype=np.float64), np.array(labels, dtype=np.intp), n_boot, seed
            )
            summary["metrics_file"] = str(out.with_name(out.name + ".metrics.json"))
            write_json(summary["metrics_file"], summary)
    except BaseException:
        journal.close()
        raise
    journal.close(remove=True)
    if echo:
        echo(format_score_summary(summary))
    return summary


def _add_metrics(summary: dict, s: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> None:
    """AUC/EER with bootstrap CIs of the scored pairs (s: always -L2, whatever the file holds)."""
    if y.min() == y.max():
        summary["metrics"] = None
        summary["metrics_note"] = "the scored pairs are all of one label: no AUC/EER"
        return
    from avtrain.evaluation.evaluate import verification_metrics

    summary["metrics"] = verification_metrics(s, y, n_boot, seed) | {
        "bootstrap": {"n": int(n_boot), "seed": int(seed), "ci": 0.95, "method": "percentile"},
        "score": SCORE_KIND,
    }


def _progress(seq, enabled: bool, desc: str, unit: str = "file", **kw):
    from tqdm import tqdm

    return tqdm(seq, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, **kw)


def _pct(e: dict) -> str:
    ci = e.get("ci95")
    return f"{100 * e['value']:.2f}" + (f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else "")


def format_score_summary(s: dict) -> str:
    head = (
        f"{s['scores']}: {s['scored']}/{s['pairs']} pairs scored ({s['format']} list); "
        f"values = {s['values_rule']}; unscorable pairs = {s['missing_marker']}"
    )
    lines = [head]
    if s["rejected"]:
        lines.append(f"{s['rejected']} pair(s) rejected, reasons in {s['rejects']}")
    m = s.get("metrics")
    if m:
        lines.append(
            f"verification (n={m['n']}): AUC {_pct(m['auc'])}  EER {_pct(m['eer'])}  (%, 95% bootstrap CI)"
        )
    elif s.get("metrics_note"):
        lines.append(s["metrics_note"])
    return "\n".join(lines)
