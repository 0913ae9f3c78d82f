"""avdata: raw VoxCeleb-style media -> identity-split, model-ready arrays and WebDataset shards."""

__version__ = "0.1.0"
