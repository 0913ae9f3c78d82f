"""A method on the paper's two branches (avtrain.methods.encoders): the base of the baselines that
put their own layers on the 3200-d branch features (svhf, ssnet, dimnet, pins, fop).

A subclass builds its layers after ``super().__init__`` and defines :meth:`BranchMethod.embedding`
(branch features -> its embedding); the branches, ``features`` (the report's diagnostics), ``embed``
and the one-pass ``embed_with_features`` come from here. Branches and every layer a subclass adds
before calling :func:`avtrain.methods.encoders.init_weights` get the paper's Glorot init.
"""

from __future__ import annotations

import torch

from avtrain.methods.base import Method, check_modality
from avtrain.methods.encoders import modality_branch


class BranchMethod(Method):
    """The paper's audio and visual branches (``audio_branch``, ``visual_branch``: AML's names), the
    leaky slope from the run's ``model.leaky_slope``; a modality of a frozen encoder
    (``model.voice_encoder`` / ``model.face_encoder``) has a trainable adapter over the encoder's
    vectors instead (:func:`avtrain.methods.encoders.modality_branch`)."""

    def __init__(self, cfg, labels=None):
        super().__init__(cfg, labels)
        self.audio_branch = modality_branch("audio", cfg.model)
        self.visual_branch = modality_branch("face", cfg.model)

    def embedding(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        """(N, 3200) branch features of ``modality`` -> (N, embed_dim) embeddings."""
        raise NotImplementedError

    def features(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        check_modality(modality)
        branch = self.audio_branch if modality == "audio" else self.visual_branch
        return branch(x).flatten(1)

    def embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(modality, self.features(modality, x))

    def embed_with_features(self, modality: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(modality, x)
        return self.embedding(modality, f), f
