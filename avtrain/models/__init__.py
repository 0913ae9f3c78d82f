"""AML networks (see aml.py)."""

from avtrain.models.aml import (
    AML,
    AUDIO,
    AUDIO_SHAPE,
    CONCAT_MLP_HIDDEN,
    DIFF_MLP_HIDDEN,
    DIRECTIONS,
    EMBED_DIM,
    FACE,
    FACE_SHAPE,
    FEATURE_DIM,
    MATCHING_HEADS,
    TASKS,
    AudioBranch,
    DiffMLPHead,
    Generator,
    MatchingHead,
    MatchingMLPHead,
    ModalityDiscriminator,
    ModelConfig,
    RetrievalHead,
    VerificationHead,
    VisualBranch,
    init_weights,
    make_head,
    normalise_audio,
    normalise_face,
)

__all__ = [
    "AML", "AUDIO", "AUDIO_SHAPE", "CONCAT_MLP_HIDDEN", "DIFF_MLP_HIDDEN", "DIRECTIONS", "EMBED_DIM",
    "FACE", "FACE_SHAPE", "FEATURE_DIM", "MATCHING_HEADS", "TASKS", "AudioBranch", "DiffMLPHead",
    "Generator", "MatchingHead", "MatchingMLPHead",
    "ModalityDiscriminator", "ModelConfig", "RetrievalHead", "VerificationHead",
    "VisualBranch", "init_weights", "make_head", "normalise_audio", "normalise_face",
]
