"""Learnable PINs (Nagrani, Albanie and Zisserman, ECCV 2018) on avmatch's encoders: model.py."""

from avtrain.methods.pins.model import LearnablePINs, PINsOptions

__all__ = ["LearnablePINs", "PINsOptions"]
