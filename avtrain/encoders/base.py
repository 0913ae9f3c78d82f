"""Frozen pretrained encoders: what each one is (its card), the errors, the common frame.

A frozen encoder maps one item's raw input (a voice clip's 16 kHz waveform, an aligned face crop)
to a fixed embedding with weights somebody else trained. Nothing here trains it: the weights are
loaded once, the network runs in eval mode without gradients on the CPU, so the same input gives
the same embedding, bit for bit, at every run (docs/encoders.md). The feature store
(:mod:`avtrain.encoders.store`) runs an encoder once per item; training then learns only the heads.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np

from avdata.errors import AvmatchError

SAMPLE_RATE = 16000  # every voice encoder's input rate
TRAINED = "aml"  # model.voice_encoder / model.face_encoder: the method's own trained CNN branch


@contextlib.contextmanager
def one_torch_thread():
    """Run a frozen encoder on one intra-op torch thread, wherever it runs (``avtrain features``,
    serving): with more threads facenet's convolutions sum in another order and a last bit moves, so
    only a fixed count makes the store byte-identical and serving's vectors the store's rows bit for
    bit (the method was trained on those rows). One thread also keeps OpenMP threads from
    spin-waiting against other processes (fame-score with Resemblyzer's LSTM on 2 threads of 2 busy
    cores: 76 s; on one: 14 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


EXTRA = "encoders"  # the pip extra that installs the encoders' packages: avmatch[encoders]
INSTALL_HINT = "pip install 'avmatch[encoders]'"


@dataclass(frozen=True)
class EncoderCard:
    """What docs, store manifests and the leakage warning say about an encoder."""

    name: str  # registry name, e.g. "resemblyzer"
    modality: str  # "audio" | "face" (the item modality names)
    dim: int  # embedding size
    input: str  # what the network is given, e.g. "16 kHz mono waveform, webrtcvad-trimmed, whole file"
    trained_on: tuple[str, ...]  # corpora its weights saw, as documented by its authors
    overlaps: tuple[str, ...]  # avmatch corpus names whose identities those weights saw
    licence: str
    extra: str  # pip extra that installs it
    weights: str  # "in the X package" | "a file by path (--encoder-weights)"

    def to_dict(self) -> dict:
        d = asdict(self)
        return d | {"trained_on": list(self.trained_on), "overlaps": list(self.overlaps)}


class EncoderError(AvmatchError):
    """An encoder that cannot be used (one line): unknown name, a missing extra, a weights file
    with the wrong checksum, format, keys or shapes."""


class ItemRejected(Exception):
    """One item the encoder cannot embed; str(exc) is the reason ("too short after VAD: 0.12 s",
    "no usable face landmarks: ..."). The item becomes a reject; its neighbours are kept."""


def require_modules(encoder: str, *modules: str) -> list:
    """Import the encoder's optional packages, or one line naming the extra that installs them."""
    loaded = []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError as exc:
            raise EncoderError(
                f"encoder {encoder} needs the '{EXTRA}' extra ({name} cannot be imported: "
                f"{type(exc).__name__}): {INSTALL_HINT}"
            ) from None
    return loaded


class FrozenEncoder:
    """Base of the encoders: frozen (eval, no grad), on the CPU, deterministic.

    ``embed_audio`` (voice encoders): a (T,) float32 waveform at SAMPLE_RATE -> (dim,) float32.
    ``embed_faces`` (face encoders): (N, 224, 224, 3) uint8 RGB crops aligned by avdata (the item
    shards' crops or the Extractor's, whose square is the MTCNN box grown by ``face_margin``) ->
    per crop a (dim,) float32 embedding or the :class:`ItemRejected` saying why not."""

    card: ClassVar[EncoderCard]
    requires: ClassVar[tuple[str, ...]] = ()  # the optional packages it imports (the extra's)
    weights_sha256: str  # sha256 of the weights actually loaded

    @classmethod
    def check_installed(cls) -> list:
        """The encoder's optional packages, imported; one line naming the extra when one is missing."""
        return require_modules(cls.card.name, *cls.requires)

    def embed_audio(self, wave: np.ndarray) -> np.ndarray:
        raise EncoderError(f"encoder {self.card.name} embeds {self.card.modality} items, not voices")

    def embed_faces(self, crops: np.ndarray) -> list[np.ndarray | ItemRejected]:
        raise EncoderError(f"encoder {self.card.name} embeds {self.card.modality} items, not faces")


def check_face_crops(crops: np.ndarray, encoder: str) -> np.ndarray:
    """The (N, 224, 224, 3) uint8 batch embed_faces takes, or one line."""
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[1:] != (224, 224, 3) or crops.dtype != np.uint8:
        raise EncoderError(
            f"encoder {encoder}: face crops must be (N, 224, 224, 3) uint8, got {crops.shape} {crops.dtype}"
        )
    return crops


def check_wave(wave: np.ndarray, encoder: str) -> np.ndarray:
    wave = np.asarray(wave)
    if wave.ndim != 1 or not np.issubdtype(wave.dtype, np.floating):
        raise EncoderError(
            f"encoder {encoder}: a voice is a (T,) float waveform, got {wave.shape} {wave.dtype}"
        )
    return wave.astype(np.float32, copy=False)
