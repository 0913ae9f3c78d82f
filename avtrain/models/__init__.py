"""AML networks (see aml.py)."""

from avtrain.models.aml import (
    AML,
    AUDIO,
    AUDIO_SHAPE,
    DIRECTIONS,
    EMBED_DIM,
    FACE,
    FACE_SHAPE,
    FEATURE_DIM,
    TASKS,
    AudioBranch,
    Generator,
    MatchingHead,
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
    "AML", "AUDIO", "AUDIO_SHAPE", "DIRECTIONS", "EMBED_DIM", "FACE", "FACE_SHAPE",
    "FEATURE_DIM", "TASKS", "AudioBranch", "Generator", "MatchingHead",
    "ModalityDiscriminator", "ModelConfig", "RetrievalHead", "VerificationHead",
    "VisualBranch", "init_weights", "make_head", "normalise_audio", "normalise_face",
]
