"""SVHF-Net (Nagrani, Albanie, Zisserman, CVPR 2018): which of k gallery items matches the query,
as a k-way softmax over the concatenated embeddings. See model.py and docs/methods.md."""

from avtrain.methods.svhf.model import SVHF, Options

__all__ = ["SVHF", "Options"]
