"""Methods on one seam (base.py): the registry the trainer, evaluation and serving look methods up in.

One line per method: its name -> "module:Class". Modules are imported on first use, so a
method's dependencies load only when it is trained or loaded.
"""

from __future__ import annotations

import difflib
import importlib

from avtrain.methods.base import SCORE_RULES, Batch, LabelSpace, Method, StepContext

METHODS: dict[str, str] = {
    "aml": "avtrain.methods.aml.model:AML",
    "svhf": "avtrain.methods.svhf.model:SVHF",
    "ssnet": "avtrain.methods.ssnet.model:SSNet",
    "dimnet": "avtrain.methods.dimnet.model:DIMNet",
    "pins": "avtrain.methods.pins.model:LearnablePINs",
    "fop": "avtrain.methods.fop.model:FOP",
}


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def get_method(name: str) -> type[Method]:
    """The Method class registered as ``name`` (ValueError naming the known ones otherwise)."""
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"unknown method {name!r}{hint}; known: {', '.join(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_method(cfg, labels: LabelSpace | None = None) -> Method:
    """The method of a TrainConfig (``cfg.method``), freshly initialised."""
    return get_method(cfg.method)(cfg, labels)


__all__ = [
    "METHODS",
    "SCORE_RULES",
    "Batch",
    "LabelSpace",
    "Method",
    "StepContext",
    "build_method",
    "get_method",
    "method_names",
]
