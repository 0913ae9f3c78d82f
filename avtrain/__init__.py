"""avtrain: AML (Adversarial-Metric Learning) trainer and evaluator for face-voice matching."""

__version__ = "0.1.0"


def load_model(run_or_file, device="cpu", extract=None, checkpoint="last"):
    """A trained model for raw media (see avtrain.serve.model.load_model); ``checkpoint``: of a run
    directory, ``last``, ``best`` or a path, as the CLIs' --checkpoint."""
    from avtrain.serve.model import load_model as _load_model

    return _load_model(run_or_file, device, extract, checkpoint=checkpoint)


__all__ = ["__version__", "load_model"]
