"""The shape most baselines share: the paper's audio and visual branches (avtrain.methods.encoders),
each followed by embedding layers of its own modality, so ``embed`` is branch -> 3200 features ->
those layers. A subclass builds ``audio_head`` and ``face_head`` (modules 3200 -> embed_dim) and
writes its training step; embedding, diagnostic features and shapes are this class's.
"""

from __future__ import annotations

import torch
from torch import nn

from avtrain.methods.base import Method, check_modality
from avtrain.methods.encoders import AudioBranch, VisualBranch


class TwoStreamMethod(Method):
    """Two streams, one per modality: branch, then the subclass's ``audio_head`` / ``face_head``."""

    audio_head: nn.Module
    face_head: nn.Module

    def __init__(self, cfg, labels=None):
        super().__init__(cfg, labels)
        slope = cfg.model.leaky_slope  # every method's encoders read model.leaky_slope
        self.audio_branch = AudioBranch(slope)
        self.visual_branch = VisualBranch(slope)

    def features(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, 3200) branch features (the report's diagnostics)."""
        check_modality(modality)
        branch = self.audio_branch if modality == "audio" else self.visual_branch
        return branch(x).flatten(1)

    def embedding_layers(self, modality: str) -> nn.Module:
        """``audio_head`` or ``face_head`` (not ``head``: that name is AML's task head)."""
        return self.audio_head if modality == "audio" else self.face_head

    def embed_with_features(self, modality: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(modality, x)
        return self.embedding_layers(modality)(f), f

    def embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        return self.embed_with_features(modality, x)[0]
