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
* normalisation and the forward pass: :func:`avtrain.models.normalise_audio` /
  :func:`~avtrain.models.normalise_face` and ``AML.embed_audio`` / ``AML.embed_face``, as in
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
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from avdata.errors import AvmatchError, InputError, UnsafeInputError
from avdata.extract import ExtractConfig, Extractor
from avdata.untrusted import leads_outside
from avtrain.evaluate import SCORE_KIND  # the one scoring rule (-L2)

__all__ = [
    "EXPORT_CONFIG",
    "EXPORT_WEIGHTS",
    "SCORE_KIND",
    "FaceVoiceModel",
    "InferenceError",
    "embed_files",
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
    from avtrain.checkpoint import pick_device

    return pick_device(str(name))  # a device this machine lacks: one-line DeviceError


def _load_from_run(run: Path, device: torch.device, which: str = "last"):
    from avtrain.checkpoint import load_run

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


def _load_from_export(directory: Path, device: torch.device):
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    from avdata.io import sha256_file
    from avtrain.checkpoint import build_model
    from avtrain.config import TrainConfig

    cfg_path, weights = directory / EXPORT_CONFIG, directory / EXPORT_WEIGHTS
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InferenceError(f"{cfg_path}: not a readable model config ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise InferenceError(f"{cfg_path}: not an avtrain export (format is not {EXPORT_FORMAT!r})")
    if sha256_file(weights) != meta.get("weights_sha256"):
        raise UnsafeInputError(
            f"{weights}: sha256 differs from {cfg_path}'s weights_sha256; refusing to load"
        )
    try:
        cfg = TrainConfig.from_dict(meta["train_config"])
        extract = ExtractConfig(**meta["extract"])
        tensors = load_safetensors(weights.read_bytes())
        for alias, target in meta.get("aliases", {}).items():  # tensors shared in the model (one generator)
            tensors[alias] = tensors[target]
        model = build_model(cfg)
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
    which = checkpoint
    if path.is_file():  # a checkpoint file (best.pt, epoch-0003.pt, ...) or an export's file
        which = str(path) if path.suffix == ".pt" else "last"
        path = path.parent
    if not path.is_dir():
        raise InferenceError(f"{run_or_file}: no such run or model directory")
    dev = _device(device)
    from avtrain.checkpoint import LAST as CHECKPOINT

    if (path / EXPORT_WEIGHTS).is_file():
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

    from avdata.io import atomic_write_bytes, sha256_file, write_json
    from avtrain.config import TrainConfig

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
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / EXPORT_WEIGHTS, save_safetensors(tensors))
    from avdata.audio import SPEC_CONFIG

    meta = {
        "format": EXPORT_FORMAT,
        "format_version": 1,
        "train_config": TrainConfig.to_dict(model.cfg),
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
        """(N, 128) float32 embeddings of preprocessed arrays (spectrograms or aligned faces)."""
        from avtrain.models import normalise_audio, normalise_face

        out = np.zeros((len(arrays), 128), dtype=np.float32)
        embed = self.model.embed_audio if modality == "voice" else self.model.embed_face
        norm = normalise_audio if modality == "voice" else normalise_face
        for s in range(0, len(arrays), batch_size):
            x = norm(np.stack(arrays[s : s + batch_size]))
            with torch.inference_mode():
                out[s : s + x.shape[0]] = embed(x.to(self.device)).float().cpu().numpy()
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
    voice: np.ndarray = field(default_factory=lambda: np.zeros((0, 128), np.float32))
    face_keys: list[str] = field(default_factory=list)
    face: np.ndarray = field(default_factory=lambda: np.zeros((0, 128), np.float32))
    rejects: list[dict] = field(default_factory=list)  # {"path", "modality", "reason"}


def preprocess(
    model: FaceVoiceModel, jobs: list[tuple[str, str]], progress: bool = False, desc: str = "preprocess"
) -> list[Item]:
    """Items of (path, 'audio'|'face') jobs, in order, with a progress bar."""
    from tqdm import tqdm

    items: list[Item] = []
    for path, modality in tqdm(jobs, desc=desc, unit="file", disable=not progress, dynamic_ncols=True):
        items.extend(model._extract_path(path, modality))
    return items


def embed_items(model: FaceVoiceModel, items: list[Item], batch_size: int) -> EmbedResult:
    res = EmbedResult()
    for mod in ("voice", "face"):
        good = [it for it in items if it.modality == mod and it.array is not None]
        h = model.embed_inputs([it.array for it in good], mod, batch_size)
        setattr(res, f"{mod}_keys", [it.key for it in good])
        setattr(res, mod, h)
    res.rejects = [
        {"path": it.path, "modality": it.modality, "reason": it.reason} for it in items if it.array is None
    ]
    return res


def embed_files(
    model: FaceVoiceModel, audio=(), faces=(), videos=(), batch_size: int = 64, progress: bool = False
) -> EmbedResult:
    """Embed files or trees. Keys are the paths (video frames: PATH#fN; a video's voice: PATH)."""
    jobs = [(p, "audio") for p in _expand(audio, AUDIO_EXTS)]
    jobs += [(p, "face") for p in _expand(faces, FACE_EXTS)]
    for v in _expand(videos, VIDEO_EXTS):
        jobs += [(v, "audio"), (v, "face")]
    if not jobs:
        raise InferenceError("nothing to embed: give --audio, --faces or --videos files or folders")
    return embed_items(model, preprocess(model, jobs, progress, "embed"), batch_size)


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
    """OUT.npz (plain arrays, allow_pickle=False) or OUT.parquet (one row per key and per reject)."""
    from avdata.io import atomic_write_bytes

    check_output_name(out)
    out = Path(out)
    buf = io.BytesIO()
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        keys = res.voice_keys + res.face_keys + [r["path"] for r in res.rejects]
        mods = (
            ["voice"] * len(res.voice_keys)
            + ["face"] * len(res.face_keys)
            + [r["modality"] for r in res.rejects]
        )
        emb = [list(map(float, v)) for v in res.voice] + [list(map(float, v)) for v in res.face]
        emb += [None] * len(res.rejects)
        reasons = [None] * (len(res.voice_keys) + len(res.face_keys)) + [r["reason"] for r in res.rejects]
        table = pa.table(
            {
                "key": pa.array(keys, pa.string()),
                "modality": pa.array(mods, pa.string()),
                "embedding": pa.array(emb, pa.list_(pa.float32(), 128)),
                "reject_reason": pa.array(reasons, pa.string()),
            }
        )
        pq.write_table(table, buf)
    else:
        np.savez(
            buf,
            voice_keys=np.array(res.voice_keys, dtype=str),
            voice=res.voice.astype(np.float32),
            face_keys=np.array(res.face_keys, dtype=str),
            face=res.face.astype(np.float32),
            reject_paths=np.array([r["path"] for r in res.rejects], dtype=str),
            reject_modalities=np.array([r["modality"] for r in res.rejects], dtype=str),
            reject_reasons=np.array([r["reason"] for r in res.rejects], dtype=str),
        )
    atomic_write_bytes(out, buf.getvalue())
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
            setattr(res, mod, np.array([r["embedding"] for r in rows], dtype=np.float32).reshape(-1, 128))
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
    from avtrain import metrics as M

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


@dataclass
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
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a leading byte order mark is dropped
    except (OSError, UnicodeDecodeError) as exc:
        raise InferenceError(f"{path}: cannot read the pair list ({type(exc).__name__})") from None
    lines = text.splitlines()
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
    """
    from avdata.io import atomic_write_text, write_json, write_jsonl
    from avtrain import metrics as M

    fmt, pairs = read_pair_list(list_path, fmt)
    if values == "auto":
        values = "l2" if fmt == "fame" else "neg_l2"
    if values not in ("l2", "neg_l2"):
        raise InferenceError(f"--values must be auto, l2 or neg_l2, got {values!r}")
    out = Path(out)
    rejects_path = Path(rejects_path) if rejects_path else out.with_name(out.name + ".rejects.jsonl")
    vroot, froot = Path(voice_root or root), Path(face_root or root)

    # each distinct file once; an unsafe path is a reject of its pair, never opened
    files: dict[tuple[str, str], Path | UnsafeInputError] = {}
    for p in pairs:
        for mod, rel, base in (("voice", p.voice, vroot), ("face", p.face, froot)):
            if (mod, rel) not in files:
                try:
                    files[mod, rel] = safe_join(base, rel)
                except UnsafeInputError as exc:
                    files[mod, rel] = exc
    jobs = [
        (str(v), "audio" if m == "voice" else "face") for (m, _), v in files.items() if isinstance(v, Path)
    ]
    items = {
        (it.modality, it.path): it
        for it in (
            model._extract_path(path, mod)[0] for path, mod in _progress(jobs, progress, "score: preprocess")
        )
    }
    emb: dict[tuple[str, str], np.ndarray] = {}
    for mod in ("voice", "face"):
        good = [k for k, it in items.items() if k[0] == mod and it.array is not None]
        h = model.embed_inputs([items[k].array for k in good], mod, batch_size)
        emb.update({k: h[i].astype(np.float64) for i, k in enumerate(good)})

    def problem(mod: str, rel: str) -> str | None:
        f = files[mod, rel]
        if isinstance(f, UnsafeInputError):
            return f"unsafe path refused: {f}"
        it = items[mod, str(f)]
        return None if it.array is not None else it.reason

    lines, rejects, scores, labels, scored = [], [], [], [], []
    for i, p in enumerate(pairs):
        reasons = [(m, r, problem(m, r)) for m, r in (("voice", p.voice), ("face", p.face))]
        bad = [(m, r, why) for m, r, why in reasons if why]
        if bad:
            lines.append(f"{p.id} {MISSING}")
            rejects.append(
                {
                    "id": p.id,
                    "line": p.line,
                    "voice": p.voice,
                    "face": p.face,
                    "reasons": [{"modality": m, "path": r, "reason": why} for m, r, why in bad],
                }
            )
            continue
        hv, hf = emb["voice", str(files["voice", p.voice])], emb["face", str(files["face", p.face])]
        s = M.gather_scores(
            hv[None], hf[None], np.zeros(1, np.intp), np.zeros((1, 1), np.intp), kind=SCORE_KIND
        )[0, 0]
        scores.append(float(s))
        labels.append(p.label)
        scored.append(i)
        lines.append(f"{p.id} {((-s if values == 'l2' else s) + 0.0):.6f}")  # + 0.0: never '-0.000000'
    atomic_write_text(out, "\n".join(lines) + ("\n" if lines else ""))
    write_jsonl(rejects_path, rejects)
    summary = {
        "list": str(list_path),
        "format": fmt,
        "pairs": len(pairs),
        "scored": len(scored),
        "rejected": len(rejects),
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
    if fmt != "fame" and scored:
        y = np.array(labels, dtype=np.intp)
        s = np.array(scores, dtype=np.float64)  # always -L2 here, whatever the file holds
        if y.min() == y.max():
            summary["metrics"] = None
            summary["metrics_note"] = "the scored pairs are all of one label: no AUC/EER"
        else:
            from avtrain.evaluate import verification_metrics

            summary["metrics"] = verification_metrics(s, y, n_boot, seed) | {
                "bootstrap": {"n": int(n_boot), "seed": int(seed), "ci": 0.95, "method": "percentile"},
                "score": SCORE_KIND,
            }
        summary["metrics_file"] = str(out.with_name(out.name + ".metrics.json"))
        write_json(summary["metrics_file"], summary)
    if echo:
        echo(format_score_summary(summary))
    return summary


def _progress(seq, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(seq, desc=desc, unit="file", disable=not enabled, dynamic_ncols=True)


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
