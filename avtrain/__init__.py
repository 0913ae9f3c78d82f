"""avtrain: AML (Adversarial-Metric Learning) trainer and evaluator for face-voice matching."""

__version__ = "0.1.0"
