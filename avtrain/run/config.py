"""TrainConfig: every setting of a run, checked before anything is created.

Loaded from YAML (``--config``), overridden by the named options and ``--set KEY=VALUE``,
saved as ``RUN/config.yaml`` and inside every checkpoint. Defaults are the paper's
(docs/aml-spec.md, "Training settings").

Settings are nested: the top level (method, task, optimisation, runtime, validation), ``model.*``
(every field of :class:`avtrain.methods.aml.model.ModelConfig` except task/k) and ``loss.*`` (every field
of :class:`avtrain.losses.LossConfig` except task), e.g. ``--set loss.triplet_margin=0.5``,
``--set model.generator_dropout=0.3``. The old flat names of those settings still work
(``adversarial=false`` is ``loss.adversarial=false``, ``clip_value=none`` is
``model.clip_value=none``). Values are coerced to the field's type (YAML ``1e-3`` -> float,
``"true"`` -> bool) and checked against their range; a wrong key, type or range is one line
(:class:`ConfigError`) naming the key, with the closest valid names for a typo.

``method`` picks the method (:mod:`avtrain.methods`; default ``aml``, the paper's). A method with
settings of its own has a section named after it (its ``Options`` dataclass), e.g.
``--set method=pins --set pins.margin=0.5``; only the chosen method's section may be given and
is saved. ``model.*`` and ``loss.*`` are AML's (the encoders of every method read
``model.leaky_slope``).
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from avdata.errors import AvmatchError
from avdata.tasks import TASKS
from avtrain.losses import LossConfig
from avtrain.methods.aml.model import ModelConfig

EPOCHS_PER_TASK = {"matching": 50, "verification": 20, "retrieval": 100}
SECTIONS = {"model": ModelConfig, "loss": LossConfig}  # every run's (AML's; the encoders read model.*)
SECTION_SKIP = {"model": ("task", "k"), "loss": ("task",)}  # set from the top level
# Settings that may differ when a run is resumed: they change neither the data order nor the
# optimisation (epochs may only grow; see docs/training.md, "Resuming").
RESUMABLE_CHANGES = ("epochs", "threads", "log_every", "patience", "keep_last", "tuples_dir", "items")
VAL_METRIC_RE = re.compile(r"^val_(?:matching_(?:a2v|v2a)_k(?:[2-9]|10)|verification_auc)$")


class ConfigError(AvmatchError, ValueError):
    """A setting that is unknown, of the wrong type or out of range (one line, names the key)."""


def method_sections() -> dict[str, type]:
    """Method name -> its Options dataclass, for every registered method that has settings."""
    from avtrain.methods import get_method, method_names

    return {n: get_method(n).Options for n in method_names() if get_method(n).Options is not None}


def all_sections() -> dict[str, type]:
    return {**SECTIONS, **method_sections()}


def _section(name: str) -> dict:
    cls = all_sections()[name]
    return {f.name: f for f in fields(cls) if f.name not in SECTION_SKIP.get(name, ())}


@dataclass
class TrainConfig:
    method: str = "aml"  # a name of avtrain.methods.METHODS
    # what is trained on
    task: str = "matching"  # matching | verification | retrieval
    k: int = 2  # gallery size of the training tuples (verification: 1)
    direction: str = "a2v"  # a2v: voice query, face gallery; v2a: the reverse
    tuples: str | None = None  # the training list's exact name; None -> derived from task/split/direction/k
    tuples_dir: str | None = None  # set by fit: the tuple directory trained on (run manifests read it)
    items: str | None = None  # set by fit: the item store or item shards read (None: the tuple shards)
    tuple_shards: bool = False  # stream the tuple shards (fit --tuple-shards) instead of reading by index
    # set by fit when model.voice_encoder / face_encoder is a frozen encoder: modality -> the feature
    # store read ({encoder, store, manifest_sha256, weights_sha256}; avtrain.train.features)
    features: dict | None = None
    # optimisation (paper)
    epochs: int | None = None  # None -> 50 matching, 20 verification, 100 retrieval
    batch_size: int = 50
    lr_start: float = 5e-3  # encoders, generator, head: log-decay lr_start -> lr_end
    lr_end: float = 5e-5
    lr_dis: float = 5e-3  # discriminator
    weight_decay: float = 1e-6  # reference
    d_steps: int = 1  # T discriminator steps per encoder step
    # model.* and loss.* (ModelConfig / LossConfig fields; None loss weights -> per-task defaults)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    # the chosen method's own settings (its Options dataclass; None for a method without any),
    # given and saved as the section named after the method
    options: object | None = None
    # validation (fit --val-shards): scored every val_every epochs, best.pt by `select`
    val_every: int = 1
    select: str = "auto"  # auto -> val_matching_{direction}_k{k}; or val_verification_auc
    keep_last: int = 0  # per-epoch checkpoints epoch-NNNN.pt kept (0: none)
    patience: int | None = None  # stop after this many validations without a better `select`
    # runtime
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int = 2  # DataLoader workers per rank
    threads: int = 0  # torch CPU threads; 0 -> cores left after the workers (at least 1)
    shuffle_buffer: int = 200  # fit --tuple-shards only: the streamed tuples' shuffle buffer
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # on CUDA
    cudnn_benchmark: bool = False  # torch.backends.cudnn.benchmark on CUDA (not measured on a GPU yet)
    log_every: int = 1
    max_steps_per_epoch: int | None = None  # cap for smoke tests and benchmarks
    record_batches: bool = False  # write RUN/batches-rank{R}.jsonl (tuple ids per batch) to audit DDP
    # fit --deterministic: plain x86-64 CPU kernels (avdata.kernels.PINNED_KERNELS, oneDNN off), so
    # the same seed gives bit-identical weights on any x86-64 CPU for the same `threads`
    deterministic: bool = False

    def __post_init__(self):
        hints = typing.get_type_hints(TrainConfig)
        for f in fields(self):
            if f.name in SECTIONS or f.name == "options":
                continue
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), hints[f.name]))
        from avtrain.methods import method_names

        if self.features is not None and not isinstance(self.features, dict):
            raise ConfigError("features: recorded by fit from --features, not a setting")
        _check_choice("method", self.method, method_names())
        _check_choice("task", self.task, TASKS)
        _check_choice("direction", self.direction, ("a2v", "v2a"))
        if self.task == "verification":
            self.k = 1
        elif not 2 <= self.k <= 10:
            raise ConfigError(f"k: {self.task} needs a gallery of 2..10 items, got {self.k}")
        if self.epochs is None:
            self.epochs = EPOCHS_PER_TASK[self.task]
        if self.tuples is None:
            # the list name make-tuples gives the training tuples (avdata.tuples owns the scheme)
            from avdata.tuples import TupleConfig as ListConfig

            if self.task == "retrieval":  # make-tuples writes no retrieval training tuples: name them
                self.tuples = f"retrieval_train_{self.direction}_k{self.k}"  # with --set tuples=NAME
            else:
                self.tuples = ListConfig(
                    task=self.task, split="train", direction=self.direction, k=self.k
                ).name
        for name, lo in (
            ("epochs", 1),
            ("batch_size", 1),
            ("d_steps", 1),
            ("workers", 0),
            ("threads", 0),
            ("shuffle_buffer", 1),
            ("log_every", 1),
            ("val_every", 1),
            ("keep_last", 0),
            ("patience", 1),
            ("max_steps_per_epoch", 1),
        ):
            v = getattr(self, name)
            if v is not None and v < lo:
                raise ConfigError(f"{name}: must be >= {lo}, got {v}")
        for name in ("lr_start", "lr_end", "lr_dis"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if self.device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.select != "auto" and not VAL_METRIC_RE.match(self.select):
            raise ConfigError(
                f"select: expected auto, val_matching_{{a2v|v2a}}_k{{2..10}} or val_verification_auc, "
                f"got {self.select!r}"
            )
        self.model = _build_section("model", self.model, {"task": self.task, "k": self.k})
        self.loss = _build_section("loss", self.loss, {"task": self.task})
        own = method_sections().get(self.method)
        if own is None and self.options not in (None, {}):
            raise ConfigError(f"{self.method}: this method has no settings of its own")
        self.options = _build_section(self.method, self.options or {}, {}) if own is not None else None

    # -- derived
    @property
    def select_metric(self) -> str:
        """The validation metric that picks best.pt."""
        if self.select != "auto":
            return self.select
        if self.task == "verification":
            return "val_verification_auc"
        return f"val_matching_{self.direction}_k{self.k}"

    def model_config(self) -> ModelConfig:
        return self.model

    def loss_config(self) -> LossConfig:
        return self.loss

    # -- (de)serialisation
    def to_dict(self) -> dict:
        d = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in SECTIONS and f.name != "options"
        }
        for name in SECTIONS:
            d[name] = {k: getattr(getattr(self, name), k) for k in _section(name)}
        if self.options is not None:
            d[self.method] = {k: getattr(self.options, k) for k in _section(self.method)}
        return d

    def flat(self) -> dict:
        """{'batch_size': 50, ..., 'loss.beta': 3.0, 'model.clip_value': 0.01}."""
        d = self.to_dict()
        sections = all_sections()
        out = {k: v for k, v in d.items() if k not in sections}
        for name in sections:
            out.update({f"{name}.{k}": v for k, v in d.get(name, {}).items()})
        return out

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """From a nested or flat mapping (old flat names and ``section.key`` both accepted)."""
        top, nested = _split_keys(flatten(d))
        method = top.get("method", "aml")
        for name, given in nested.items():
            if name not in SECTIONS and name != method and given:
                key = f"{name}.{sorted(given)[0]}"
                raise ConfigError(f"{key}: a setting of method {name}; this run's method is {method}")
        return cls(**top, **{name: nested[name] for name in SECTIONS}, options=nested.get(method) or None)

    def differences(self, other: TrainConfig) -> list[str]:
        """'key: mine -> other' for every setting that differs."""
        a, b = self.flat(), other.flat()
        return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# --------------------------------------------------------------------------- keys


def _aliases() -> dict[str, str]:
    """Flat old names -> section.key (every section field whose name is unique)."""
    top = {f.name for f in fields(TrainConfig)}
    out: dict[str, str] = {}
    for name in SECTIONS:  # the old flat names predate methods: AML's sections only
        for key in _section(name):
            if key not in top:
                out[key] = f"{name}.{key}"
    return out


def valid_keys() -> list[str]:
    keys = [f.name for f in fields(TrainConfig) if f.name not in SECTIONS and f.name != "options"]
    keys += [f"{name}.{k}" for name in all_sections() for k in _section(name)]
    return keys


def _unknown(key: str) -> ConfigError:
    candidates = valid_keys() + list(_aliases())
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
    if not close and "." in key:  # 'loss.tripletmargin' -> compare the part after the section too
        close = [c for c in difflib.get_close_matches(key.split(".", 1)[1], candidates, n=3, cutoff=0.6)]
    hint = f"; did you mean {', '.join(close)}?" if close else "; see docs/training.md for the settings"
    return ConfigError(f"unknown setting {key!r}{hint}")


def flatten(d: dict) -> dict:
    """Nested sections -> 'section.key'; flat aliases -> 'section.key'; unknown keys refused."""
    if not isinstance(d, dict):
        raise ConfigError(f"expected a mapping of settings, got {type(d).__name__}")
    aliases = _aliases()
    valid = set(valid_keys())
    sections = all_sections()
    out: dict = {}
    for key, value in d.items():
        key = str(key)
        if key in sections and isinstance(value, dict):
            for sub, v in value.items():
                if sub in SECTION_SKIP.get(key, ()):
                    continue  # task/k of a section always come from the top level
                out[f"{key}.{sub}"] = v
            continue
        if key in sections and isinstance(value, sections[key]):
            out.update({f"{key}.{k}": getattr(value, k) for k in _section(key)})
            continue
        key = aliases.get(key, key)
        if key not in valid:
            raise _unknown(key)
        out[key] = value
    for key in out:
        if key not in valid:
            raise _unknown(key)
    return out


def _split_keys(flat: dict) -> tuple[dict, dict]:
    top = {k: v for k, v in flat.items() if "." not in k}
    nested = {name: {} for name in all_sections()}
    for k, v in flat.items():
        if "." in k:
            name, sub = k.split(".", 1)
            nested[name][sub] = v
    return top, nested


def _build_section(name: str, value, fixed: dict):
    cls = all_sections()[name]
    given = value if isinstance(value, dict) else {k: getattr(value, k) for k in _section(name)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, v in given.items():
        if key in SECTION_SKIP.get(name, ()):
            continue
        if key not in _section(name):
            raise _unknown(f"{name}.{key}")
        kwargs[key] = coerce(f"{name}.{key}", v, hints[key])
    for key, v in kwargs.items():
        if "dropout" in key and not 0 <= v < 1:
            raise ConfigError(f"{name}.{key}: must be in [0, 1), got {v}")
        if key in ("clip_value", "triplet_margin", "rll_temperature") and v is not None and not v > 0:
            raise ConfigError(f"{name}.{key}: must be > 0, got {v}")
        if (
            key
            in (
                "lambda_margin",
                "beta",
                "gamma",
                "leaky_slope",
                "rll_alpha",
                "rll_margin",
                "rll_negative_weight",
            )
            and v is not None
            and v < 0
        ):
            raise ConfigError(f"{name}.{key}: must be >= 0, got {v}")
    try:
        return cls(**fixed, **kwargs)
    except ValueError as exc:  # the section's own checks (choices); "key: why" names section.key
        msg = str(exc)
        if msg.split(":", 1)[0] in _section(name):
            raise ConfigError(f"{name}.{msg}") from None
        raise ConfigError(f"{name}: {exc}") from None


# --------------------------------------------------------------------------- values


def _check_choice(key: str, value, choices) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{key}: expected one of {', '.join(map(str, choices))}, got {value!r}{hint}")


def _optional(tp) -> tuple[object, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def coerce(key: str, value, tp):
    """``value`` (from YAML, a ``--set`` string or Python) as type ``tp``, or a ConfigError."""
    base, optional = _optional(tp)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~")):
        if optional:
            return None
        raise ConfigError(f"{key}: a value is required, got {value!r}")
    text = value.strip() if isinstance(value, str) else None
    if base is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in ("1", "true", "yes", "on"):
            return True
        if text is not None and text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if text is not None:
            try:
                return int(text)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if base is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            out = float(value)
        elif text is not None:
            try:
                out = float(text)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        else:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(out):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return out
    if base is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a text value, got {value!r}")
    return value


# --------------------------------------------------------------------------- loading


def load_config(
    path: str | Path | None = None, overrides: dict | None = None, sets: list[str] = ()
) -> TrainConfig:
    """YAML file, then named overrides (None values ignored), then KEY=VALUE strings."""
    import yaml

    data: dict = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:160]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
        data = flatten(loaded or {})
    data.update(flatten({k: v for k, v in (overrides or {}).items() if v is not None}))
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set loss.triplet_margin=0.5")
        data.update(flatten({key.strip(): value}))
    return TrainConfig.from_dict(data)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    import yaml

    from avdata.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=True))
