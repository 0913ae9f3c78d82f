"""The registry of frozen pretrained encoders (docs/encoders.md).

Each entry is ``name -> "module:Class"``, imported only when asked for, so the cards can be read
(docs, manifests, the leakage warning) without the optional packages installed. ``aml``
(:data:`avtrain.encoders.base.TRAINED`) is not an entry: it means the method's own trained branch.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from avtrain.encoders.base import (
    SAMPLE_RATE,
    TRAINED,
    EncoderCard,
    EncoderError,
    FrozenEncoder,
    ItemRejected,
)

ENCODERS = {
    "resemblyzer": "avtrain.encoders.resemblyzer:Resemblyzer",
    "dlib": "avtrain.encoders.dlib_face:DlibFace",
    "facenet_vggface2": "avtrain.encoders.facenet:FacenetVGGFace2",
    "ecapa": "avtrain.encoders.ecapa:ECAPA",
}

__all__ = [
    "ENCODERS",
    "SAMPLE_RATE",
    "TRAINED",
    "EncoderCard",
    "EncoderError",
    "FrozenEncoder",
    "ItemRejected",
    "encoder_card",
    "encoder_class",
    "leakage_warning",
    "load_encoder",
]


def encoder_class(name: str) -> type[FrozenEncoder]:
    if name not in ENCODERS:
        known = ", ".join(sorted(ENCODERS))
        raise EncoderError(f"unknown encoder {name!r}; known: {known} (or {TRAINED!r}: the trained branch)")
    module, _, cls = ENCODERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def encoder_card(name: str) -> EncoderCard:
    """The encoder's card, without loading its weights or its optional packages."""
    return encoder_class(name).card


def load_encoder(
    name: str,
    weights: str | Path | None = None,
    allow_download: bool = False,
    face_margin: float | None = None,
) -> FrozenEncoder:
    """The encoder ready to embed. ``weights``: a weights file by path (the encoders whose weights
    are not in a package); ``allow_download``: fetch them from their authors' URL, checked against
    a pinned sha256; ``face_margin``: the margin of the crops it will be given (face encoders;
    default: avdata's ExtractConfig.face_margin)."""
    cls = encoder_class(name)
    kwargs = {"weights": weights, "allow_download": allow_download}
    if cls.card.modality == "face":
        kwargs["face_margin"] = face_margin
    return cls(**kwargs)


def leakage_warning(name: str, corpus: str) -> str | None:
    """One line when encoder ``name``'s training data holds identities of ``corpus`` (as far as its
    authors document), so that corpus's test identities are not unseen by the encoder; else None."""
    if name == TRAINED:
        return None
    card = encoder_card(name)
    if corpus not in card.overlaps:
        return None
    return (
        f"warning: encoder {name} was trained on {', '.join(card.trained_on)}, which hold identities of "
        f"the {corpus} corpus: its test identities are not unseen by the encoder, so results on them "
        f"overstate generalisation to new people (docs/encoders.md, Leakage)"
    )
