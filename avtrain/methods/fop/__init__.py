"""FOP, fusion and orthogonal projection (Saeed et al., ICASSP 2022) on avmatch's encoders: model.py."""

from avtrain.methods.fop.model import FOP, FOPOptions, GatedFusion

__all__ = ["FOP", "FOPOptions", "GatedFusion"]
