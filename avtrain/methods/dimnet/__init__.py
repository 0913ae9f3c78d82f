"""DIMNet (Wen, Ismail, Liu, Raj, Singh, ICLR 2019): embeddings trained only by classifying the
covariates identity, gender and nationality, with classifiers shared by both modalities. See
model.py and docs/methods.md."""

from avtrain.methods.dimnet.model import COVARIATES, DIMNet, Options

__all__ = ["COVARIATES", "DIMNet", "Options"]
