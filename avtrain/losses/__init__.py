"""Losses: AML's metric (metric.py), adversarial (adversarial.py) and joint objective (aml.py); the
classifying methods' softmax (classification.py) and center loss (center.py)."""

from avtrain.losses.adversarial import (
    ADVERSARIAL_KINDS,
    critic_score,
    generator_adversarial_loss,
    modality_loss,
)
from avtrain.losses.aml import (
    TASK_DEFAULTS,
    AMLLoss,
    LossConfig,
    split_gallery,
    split_modalities,
    task_loss,
)
from avtrain.losses.center import center_loss, center_update
from avtrain.losses.classification import softmax_loss
from avtrain.losses.metric import (
    METRIC_LOSSES,
    euclidean,
    lifted_structured_loss,
    ranked_list_loss,
    triplet_loss,
)

__all__ = [
    "ADVERSARIAL_KINDS",
    "METRIC_LOSSES",
    "TASK_DEFAULTS",
    "AMLLoss",
    "LossConfig",
    "center_loss",
    "center_update",
    "critic_score",
    "euclidean",
    "generator_adversarial_loss",
    "lifted_structured_loss",
    "modality_loss",
    "ranked_list_loss",
    "softmax_loss",
    "split_gallery",
    "split_modalities",
    "task_loss",
    "triplet_loss",
]
