"""AML, Adversarial-Metric Learning (the seed paper): model.py (networks, heads, training step);
its losses are avtrain.losses (metric, adversarial, the joint objective)."""

from avtrain.methods.aml.model import (
    AML,
    CONCAT_MLP_HIDDEN,
    DIFF_MLP_HIDDEN,
    EMBED_DIM,
    MATCHING_HEADS,
    TASKS,
    DiffMLPHead,
    Generator,
    MatchingHead,
    MatchingMLPHead,
    ModalityDiscriminator,
    ModelConfig,
    RetrievalHead,
    VerificationHead,
    make_head,
)

__all__ = [
    "AML",
    "CONCAT_MLP_HIDDEN",
    "DIFF_MLP_HIDDEN",
    "EMBED_DIM",
    "MATCHING_HEADS",
    "TASKS",
    "DiffMLPHead",
    "Generator",
    "MatchingHead",
    "MatchingMLPHead",
    "ModalityDiscriminator",
    "ModelConfig",
    "RetrievalHead",
    "VerificationHead",
    "make_head",
]
