"""The error of avtrain.serve: a problem with a model, a list or the settings (one line)."""

from __future__ import annotations

from avdata.errors import AvmatchError

__all__ = ["InferenceError"]


class InferenceError(AvmatchError):
    """A problem with a model, a list or the settings of embed/match/score/export (one line)."""
