"""A trained method on raw media: :class:`FaceVoiceModel` and :func:`load_model`.

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
* normalisation and the forward pass: :func:`avtrain.methods.encoders.normalise_audio` /
  :func:`~avtrain.methods.encoders.normalise_face` and the method's ``embed(modality, x)`` (the
  seam, :class:`avtrain.methods.base.Method`), as in ``avtrain evaluate``;
* a modality of a frozen pretrained encoder (``model.voice_encoder`` / ``face_encoder``) is given
  to the encoder as ``avtrain features`` gives it: a voice file decoded whole at 16 kHz
  (:func:`avdata.media.decode_audio`) -> ``embed_audio``; a face's aligned crop as above ->
  ``embed_faces``, on one torch thread as there (the store's rows, bit for bit). The encoder's
  vector is the item; what it rejects is a reject. The encoder's
  weights are the installed ones (or ``model.*_encoder_weights``), checked against the sha256 the
  run recorded (:func:`avtrain.train.features.load_run_encoders`); an export holds no encoder weights.

The extraction settings (face margin, video fps, ...) are those the model's item shards were built
with, as the run recorded them (:mod:`avtrain.run.data_record`; an export carries them in its
config.json), so a build with ``--face-margin 0.3`` is embedded at 0.3. A model without that record
(its settings unknown, or trained before runs recorded them) is preprocessed with avdata's defaults,
and :func:`load_model` says so in one line on stderr.

A model is loaded from a run directory (``checkpoint.pt``, read with ``weights_only=True``) or
from an ``avtrain export`` directory (``model.safetensors`` + ``config.json``: no pickle at all;
read by :func:`avtrain.serve.export.load_export`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avdata.errors import InputError
from avdata.extract import ExtractConfig, Extractor
from avtrain.encoders.base import one_torch_thread
from avtrain.serve.errors import InferenceError
from avtrain.serve.export import EXPORT_CONFIG, EXPORT_WEIGHTS, load_export

__all__ = ["AUDIO_EXTS", "FACE_EXTS", "VIDEO_EXTS", "FaceVoiceModel", "Item", "load_model"]

AUDIO_EXTS = (".wav", ".flac", ".m4a")  # avdata.ingest's, plus videos for their audio track
FACE_EXTS = (".jpg", ".jpeg", ".png")
VIDEO_EXTS = (".mp4",)


@dataclass
class Item:
    """One input after preprocessing: a voice spectrogram or an aligned face (or a reject)."""

    key: str
    modality: str  # "voice" | "face"
    array: np.ndarray | None = None
    reason: str = ""
    path: str = ""


class FaceVoiceModel:
    """A trained method with build-shards' preprocessing: raw voice/face in, the method's
    embedding h out (``embed_dim`` floats; AML: 128-d).

    ``embed_voice(path | waveform, sr=None)`` and ``embed_face(path | PIL image)`` return a
    float32 (embed_dim,) vector; ``score(voice_h, face_h)`` is -L2. Bad inputs raise
    :class:`avdata.errors.InputError` (one line naming the file).
    """

    def __init__(
        self,
        model,
        cfg,
        device: torch.device,
        extract: ExtractConfig,
        source: dict,
        record: dict | None = None,
    ):
        self.model, self.cfg, self.device, self.source = model, cfg, device, source
        self.record = record  # what the run trained on (avtrain.run.data_record), None if not recorded
        self.extract = dataclasses.replace(extract, windows=1)  # a voice is its first window (_w0)
        self._extractor = Extractor(self.extract, device=str(device) if device.type == "cuda" else "cpu")
        self._fingerprint: str | None = None
        self.embed_dim = int(model.embed_dim)  # the method's embedding size (AML: 128)
        from avtrain.train.features import load_run_encoders

        self.encoders = load_run_encoders(cfg)  # seam modality -> frozen encoder (none by default)

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
            return self.first_array(self.extract_items(str(voice), "audio"))
        from avdata.audio import waveform_windows

        if sr is None:
            raise ValueError("embed_voice(waveform) needs its sample rate: sr=")
        if "audio" in self.encoders:  # the frozen encoder's vector of the whole waveform at 16 kHz
            from avtrain.encoders import SAMPLE_RATE

            wave = np.asarray(voice, dtype=np.float32)
            if sr != SAMPLE_RATE:
                import librosa

                wave = librosa.resample(wave, orig_sr=sr, target_sr=SAMPLE_RATE, res_type="soxr_hq")
            return self._frozen_voice(lambda: wave, source)
        return waveform_windows(voice, sr, 1, source)[0]  # a file's bounds: sample rate, streaming

    def face_input(self, face, source: str = "<image>") -> np.ndarray:
        """(224, 224, 3) uint8 aligned face of an image file or a PIL image, as stored in shards."""
        if isinstance(face, (str, Path)):
            return self.first_array(self.extract_items(str(face), "face"))
        crop = self._extractor.aligner.align(face, source=source)
        face = _shard_jpeg_round_trip(crop.face, self.extract.jpeg_quality)
        return self.first_array(self._frozen_faces([Item(source, "face", face, path=source)]))

    # a frozen encoder's input: what avtrain features gives it (avtrain.encoders.store)

    def _frozen_voice(self, decode, path: str) -> np.ndarray:
        """The frozen voice encoder's vector of ``decode()`` (a 16 kHz waveform); InputError naming
        ``path`` when it cannot be decoded or the encoder rejects it."""
        from avtrain.encoders import ItemRejected

        try:
            wave = decode()
            with one_torch_thread():
                return self.encoders["audio"].embed_audio(wave)
        except ItemRejected as exc:
            raise InputError(path, str(exc)) from None

    def _frozen_faces(self, items: list[Item]) -> list[Item]:
        """Aligned faces -> the frozen face encoder's vectors (a crop it rejects: a reject);
        unchanged without a frozen face encoder."""
        if "face" not in self.encoders:
            return items
        good = [it for it in items if it.array is not None]
        if good:
            with one_torch_thread():
                got = self.encoders["face"].embed_faces(np.stack([it.array for it in good]))
            for it, vec in zip(good, got):
                if isinstance(vec, np.ndarray):
                    it.array = vec
                else:
                    it.array, it.reason = None, str(vec)
        return items

    @staticmethod
    def first_array(items: list[Item]) -> np.ndarray:
        """The array of the first of a file's items; InputError (naming the file) if it is a reject."""
        if items[0].array is None:
            raise InputError(items[0].path, items[0].reason)
        return items[0].array

    def extract_items(self, path: str, modality: str) -> list[Item]:
        """Items of one file through avdata's Extractor; modality 'audio' or 'face'. A frozen
        encoder's modality: its vector of the file (voice: the whole file; face: each aligned crop)."""
        if modality == "audio" and "audio" in self.encoders:
            from avdata.media import decode_audio
            from avtrain.encoders import SAMPLE_RATE

            try:
                vec = self._frozen_voice(lambda: decode_audio(path, SAMPLE_RATE), path)
            except InputError as exc:
                return [Item(path, "voice", None, exc.reason, path=path)]
            return [Item(path, "voice", vec, path=path)]
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
        return self._frozen_faces(items) if modality == "face" else items

    # embedding ----------------------------------------------------------------------

    def embed_inputs(self, arrays: list[np.ndarray], modality: str, batch_size: int = 64) -> np.ndarray:
        """(N, D) float32 embeddings of preprocessed arrays (spectrograms or aligned faces; a
        frozen encoder's vectors)."""
        from avtrain.methods.encoders import to_branch_input

        out = np.zeros((len(arrays), self.embed_dim), dtype=np.float32)
        seam_modality = "audio" if modality == "voice" else "face"  # the seam speaks avdata's names
        frozen = seam_modality in self.encoders
        for s in range(0, len(arrays), batch_size):
            x = to_branch_input(seam_modality, np.stack(arrays[s : s + batch_size]), frozen)
            with torch.inference_mode():
                out[s : s + x.shape[0]] = (
                    self.model.embed(seam_modality, x.to(self.device)).float().cpu().numpy()
                )
        if not np.isfinite(out).all():
            raise InferenceError("the model produced NaN/inf embeddings")
        return out

    def embed_voice(self, voice, sr: int | None = None) -> np.ndarray:
        """The embedding h of a voice: a file path, or a waveform array with ``sr``."""
        return self.embed_inputs([self.voice_input(voice, sr)], "voice")[0]

    def embed_face(self, face) -> np.ndarray:
        """The embedding h of a face: an image file path, or a PIL image."""
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


# --------------------------------------------------------------------------- loading


def _device(name: str | torch.device) -> torch.device:
    from avtrain.run.checkpoint import pick_device

    return pick_device(str(name))  # a device this machine lacks: one-line DeviceError


def _load_from_run(run: Path, device: torch.device, which: str = "last"):
    from avtrain.run.checkpoint import load_run
    from avtrain.run.data_record import RECORD_KEY

    model, state, cfg = load_run(run, device, which)  # checksummed, weights_only; errors are one line
    source = {
        "kind": "run",
        "path": str(run),
        "epoch": int(state.get("epoch", 0)),
        "step": int(state.get("step", 0)),
    }
    return model, cfg, source, state.get(RECORD_KEY)  # the record is checked by load_checkpoint


def load_model(
    run_or_file: str | Path,
    device: str | torch.device = "cpu",
    extract: ExtractConfig | None = None,
    checkpoint: str = "last",
) -> FaceVoiceModel:
    """A trained model ready for raw media.

    ``run_or_file``: a run directory (``checkpoint.pt``), an ``avtrain export`` directory
    (``model.safetensors`` + ``config.json``), or either file. ``device``: auto, cpu, cuda,
    cuda:N. ``extract``: the preprocessing settings, overriding the recorded
    ones; default: those the item shards were built with, as the run (or the export's config.json)
    records them, else avdata's defaults with a one-line note on stderr.
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
    from avtrain.run.checkpoint import resolve

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
        model, cfg, saved_extract, source, record, note = load_export(path, dev)
    elif which != "last" or (path / CHECKPOINT).is_file():
        from avtrain.run.data_record import serving_extract

        model, cfg, source, record = _load_from_run(path, dev, which)
        saved_extract, note = serving_extract(record, str(resolve(path, which)))
    else:
        raise InferenceError(
            f"{path}: neither {CHECKPOINT} (avtrain fit) nor {EXPORT_WEIGHTS} (avtrain export)"
        )
    if note and extract is None:
        print(f"note: {note}", file=sys.stderr)
    return FaceVoiceModel(model, cfg, dev, extract or saved_extract, source, record)
