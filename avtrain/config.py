"""TrainConfig: every setting of a run in one dataclass.

Loaded from YAML (``--config``), overridden on the command line (``--set key=value``
and the named options), saved as ``RUN/config.yaml`` and inside every checkpoint.
Defaults are the paper's (docs/aml-spec.md, "Training settings").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

EPOCHS_PER_TASK = {"matching": 50, "verification": 20, "retrieval": 100}


@dataclass
class TrainConfig:
    # what is trained on
    task: str = "matching"            # matching | verification | retrieval
    k: int = 2                        # gallery size of the training tuples (verification: 1)
    direction: str = "a2v"            # a2v: voice query, face gallery; v2a: the reverse
    tuples: str | None = None         # tuple-shard name prefix; None -> derived from task/split/direction/k
    # optimisation (paper)
    epochs: int | None = None         # None -> 50 matching, 20 verification, 100 retrieval
    batch_size: int = 50
    lr_start: float = 5e-3            # encoders, generator, head: log-decay lr_start -> lr_end
    lr_end: float = 5e-5
    lr_dis: float = 5e-3              # discriminator
    weight_decay: float = 1e-6        # reference
    d_steps: int = 1                  # T discriminator steps per encoder step
    # loss (None -> per-task (λ, β, γ) defaults of avtrain.losses.TASK_DEFAULTS)
    lambda_margin: float | None = None
    beta: float | None = None
    gamma: float | None = None
    metric: bool = True               # Table VII switches
    adversarial: bool = True
    metric_kind: str = "lifted"       # lifted | triplet | ranked_list (Table IX)
    adversarial_kind: str = "gan"     # gan | lsgan | wgan (Table VIII)
    lifted_squared: bool = True       # paper: max(0, J)^2; reference: max(0, J)
    dis_reduction: str = "tuple_sum"
    clip_value: float | None = 0.01   # discriminator weight clipping (WGAN-style)
    shared_generator: bool = True
    # runtime
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    workers: int = 2                  # DataLoader workers per rank
    threads: int = 0                  # torch CPU threads; 0 -> cores left after the workers (at least 1)
    shuffle_buffer: int = 200
    amp: bool = True                  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True        # on CUDA
    log_every: int = 1
    max_steps_per_epoch: int | None = None  # cap for smoke tests and benchmarks
    record_batches: bool = False      # write RUN/batches-rank{R}.jsonl (tuple ids per batch) to audit DDP

    def __post_init__(self):
        if self.task not in EPOCHS_PER_TASK:
            raise ValueError(f"task must be one of {tuple(EPOCHS_PER_TASK)}, got {self.task!r}")
        if self.direction not in ("a2v", "v2a"):
            raise ValueError(f"direction must be a2v or v2a, got {self.direction!r}")
        if self.task == "verification":
            self.k = 1
        if self.epochs is None:
            self.epochs = EPOCHS_PER_TASK[self.task]
        if self.tuples is None:
            self.tuples = (f"verification_train" if self.task == "verification"
                           else f"{self.task}_train_{self.direction}_k{self.k}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}")
        return cls(**d)


def _parse_value(field_type: str, text: str):
    t = str(field_type)
    if text.lower() in ("none", "null"):
        return None
    if "bool" in t:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if "int" in t and "float" not in t:
        return int(text)
    if "float" in t:
        return float(text)
    return text


def load_config(path: str | Path | None = None, overrides: dict | None = None, sets: list[str] = ()) -> TrainConfig:
    """YAML file, then named overrides (None values ignored), then KEY=VALUE strings."""
    import yaml

    data = {}
    if path:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    types = {f.name: f.type for f in fields(TrainConfig)}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or key not in types:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(types)}")
        data[key] = _parse_value(types[key], value)
    return TrainConfig.from_dict(data)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=True))
