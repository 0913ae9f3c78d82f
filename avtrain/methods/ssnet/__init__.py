"""SSNet (Nawaz et al., DICTA 2019): one stream shared by both modalities, trained by softmax
identity classification plus center loss. See model.py and docs/methods.md."""

from avtrain.methods.ssnet.model import Options, SSNet

__all__ = ["SSNet", "Options"]
