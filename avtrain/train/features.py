"""The feature stores a run reads for its frozen modalities (``model.voice_encoder`` /
``model.face_encoder`` other than ``aml``): found, checked, recorded, and their rejects.

A modality of a frozen pretrained encoder is not read from the item store or shards: its items are
the encoder's precomputed vectors, rows of a feature store (:mod:`avtrain.encoders.store`, built by
``avtrain features``). ``fit`` takes one store per frozen modality (``--features STORE``,
repeatable; default ``ITEM_SHARDS/features/ENCODER`` beside the item shards the run reads) and
checks it before anything trains: of that encoder and modality, built with the weights the run's
config names (their sha256), from the shards the tuples were drawn from. The run records each store
(path, manifest sha256, encoder, weights sha256: ``TrainConfig.features``); ``evaluate`` reads the
recorded stores again (``--features`` overrides, checked the same way).

Items the encoder could not embed (the store's rejects: too short after VAD, no face landmarks)
have no vector; tuples that name one are skipped, and counted in one line, never silently.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avdata.errors import AvmatchError
from avtrain.methods.encoders import ENCODER_KEYS, frozen_encoders


class FeatureInputError(AvmatchError):
    """A feature store that cannot feed this run (one line: which store, which key, why)."""


@dataclass
class FrozenInputs:
    """modality -> the feature store its items are read from, and the store's rejects."""

    stores: dict  # modality -> avtrain.encoders.store.FeatureStore
    rejects: dict[str, dict[str, str]]  # modality -> key -> reason

    @property
    def modalities(self) -> frozenset[str]:
        return frozenset(self.stores)

    def record(self) -> dict:
        """What the run records of each store (TrainConfig.features, config.yaml and checkpoints)."""
        from avdata.io import sha256_file

        return {
            m: {
                "encoder": s.encoder,
                "store": str(Path(s.root).resolve()),
                "manifest_sha256": sha256_file(Path(s.root) / "manifest.json"),
                "weights_sha256": s.weights_sha256,
            }
            for m, s in sorted(self.stores.items())
        }

    def rejected_keys(self) -> set[str]:
        return {k for r in self.rejects.values() for k in r}

    def rows(self, modality: str, keys) -> np.ndarray:
        """Rows of ``keys`` in the modality's store (every key must be there)."""
        store = self.stores[modality]
        out = np.empty(len(keys), dtype=np.int64)
        for i, key in enumerate(keys):
            row = store.locate(key)
            if row is None:
                raise FeatureInputError(
                    f"{store.root}: item {key} is neither embedded nor rejected there; the store is "
                    f"not of these items (rebuild it: avtrain features --shards ITEM_SHARDS --encoder "
                    f"{store.encoder})"
                )
            out[i] = row
        return out

    def vectors(self, modality: str, keys) -> np.ndarray:
        """(len(keys), dim) float32 vectors of ``keys``."""
        return np.asarray(self.stores[modality].array()[self.rows(modality, keys)], dtype=np.float32)

    def skipped_line(self, what: str, skipped: int, total: int, used: set[str]) -> str:
        """One line counting the rejected items a list names and the tuples skipped for them."""
        parts = []
        for m, rejects in sorted(self.rejects.items()):
            named = sorted(k for k in rejects if k in used)
            if named:
                example = f"e.g. {named[0]}: {rejects[named[0]]}"
                parts.append(f"{len(named)} {m} item(s) rejected by {self.stores[m].encoder} ({example})")
        return f"{what}: {skipped} of {total} tuples skipped: they name {'; '.join(parts)}"


def _open_store(path: Path):
    from avtrain.encoders.store import FeatureStore

    return FeatureStore(path)  # not a store, or a damaged one: one line


def default_store(shards: Path, name: str) -> Path:
    from avtrain.encoders.store import default_store as place

    return place(shards, name)


def _check_inside_shards(shards: Path, store: Path) -> None:
    """The default store SHARDS/features/ENCODER is found inside shards that may come from
    elsewhere: a symlink leading out of them (features/ or the store) is refused, not followed."""
    from avdata.untrusted import resolve_inside

    try:
        resolve_inside(shards, store.relative_to(shards).as_posix(), str(shards))
    except AvmatchError as exc:
        raise FeatureInputError(str(exc)) from None


def _check_weights(store, modality: str, name: str, weights: str | None) -> None:
    """The store's encoder weights are the ones the run's config names (installed, or by path)."""
    from avtrain.encoders import load_encoder

    key = f"model.{ENCODER_KEYS[modality]}_weights"
    encoder = load_encoder(name, weights)  # a missing extra or a bad weights file: one line
    if encoder.weights_sha256 != store.weights_sha256:
        given = weights or "the installed weights"
        raise FeatureInputError(
            f"{store.root}: built with {name} weights of sha256 {store.weights_sha256[:12]}…, but {key} "
            f"gives {given} (sha256 {encoder.weights_sha256[:12]}…); rebuild the store or set {key}"
        )


def open_features(
    model_cfg,
    given: list[str | Path] | tuple = (),
    shards: Path | None = None,
    drawn_from: str | None = None,
    check_weights: bool = True,
    shards_unknown: str = "",
) -> FrozenInputs | None:
    """The stores of a run's frozen modalities (None when both branches are trained): ``given``
    (``--features``, one per frozen modality) or ``shards/features/ENCODER``; each checked: a
    feature store, of the modality's encoder, of the weights ``model.*_encoder_weights`` names
    (``check_weights``), built from the item shards ``shards`` (their extraction settings) and,
    for training, from the shards whose manifest sha256 is ``drawn_from`` (the tuples'). ``shards``
    None: ``shards_unknown`` says why they are not known (named when a store must be found there)."""
    frozen = frozen_encoders(model_cfg)
    given = [Path(p) for p in given]
    if not frozen:
        if given:
            raise FeatureInputError(
                f"--features {given[0]}: model.voice_encoder and model.face_encoder are aml (trained "
                "branches), so no feature store is read; set one to a frozen encoder"
            )
        return None
    stores = {}
    for path in given:
        store = _open_store(path)
        if store.modality not in frozen:
            raise FeatureInputError(
                f"--features {path}: {store.encoder} embeds {store.modality} items, but "
                f"model.{ENCODER_KEYS[store.modality]} is aml (trained)"
            )
        if store.modality in stores:
            raise FeatureInputError(f"--features {path}: a second {store.modality} store (one per modality)")
        stores[store.modality] = store
    for modality, name in sorted(frozen.items()):
        key = f"model.{ENCODER_KEYS[modality]}"
        store = stores.get(modality)
        if store is None:
            if shards is None:
                raise FeatureInputError(
                    f"{key}={name}: pass --features STORE (avtrain features --encoder {name}); its "
                    "default place ITEM_SHARDS/features/ENCODER is unknown: "
                    f"{shards_unknown or 'the items are not read from item shards'}"
                )
            default = default_store(shards, name)
            _check_inside_shards(shards, default)
            if not (default / "manifest.json").is_file():
                raise FeatureInputError(
                    f"{key}={name}: no feature store at {default}; build it: avtrain features --shards "
                    f"{shards} --encoder {name}, or pass --features STORE"
                )
            store = stores[modality] = _open_store(default)
        if store.encoder != name:
            raise FeatureInputError(f"{store.root}: features of encoder {store.encoder}; {key} is {name}")
        if drawn_from and store.shards_manifest_sha256 != drawn_from:
            raise FeatureInputError(
                f"{store.root}: built from other item shards (manifest sha256 "
                f"{store.shards_manifest_sha256[:12]}…) than the tuples were drawn from "
                f"({drawn_from[:12]}…); rebuild it: avtrain features --shards SHARDS --encoder {name}"
            )
        if shards is not None:
            store.check_matches(shards)  # other shards or extraction settings: one line
        if check_weights:
            _check_weights(store, modality, name, getattr(model_cfg, f"{ENCODER_KEYS[modality]}_weights"))
    rejects = {m: {str(r.get("key")): str(r.get("reason", "")) for r in s.rejects} for m, s in stores.items()}
    return FrozenInputs(stores, rejects)


def recorded_features(cfg, given=(), shards: Path | None = None) -> FrozenInputs | None:
    """The stores a run trained on (``cfg.features``, recorded by fit), for evaluation: each
    reopened and checked to be the recorded one (manifest sha256); ``given`` (``--features``)
    replaces them, checked to be of the recorded encoder and weights. Both checked against the
    evaluation's item shards ``shards``."""
    from avdata.io import sha256_file

    recorded = dict(cfg.features or {})
    if given:
        inputs = open_features(cfg.model, given, shards, check_weights=False)
        for m, s in inputs.stores.items():
            want = recorded.get(m, {}).get("weights_sha256")
            if want and s.weights_sha256 != want:
                raise FeatureInputError(
                    f"--features {s.root}: built with {s.encoder} weights of sha256 {s.weights_sha256[:12]}…; "
                    f"the run trained on features of weights {want[:12]}…"
                )
        return inputs
    if not frozen_encoders(cfg.model):
        return None
    paths = []
    for modality in sorted(frozen_encoders(cfg.model)):
        rec = recorded.get(modality)
        if rec is None:
            raise FeatureInputError(
                f"the run records no {modality} feature store; pass --features STORE "
                f"(model.{ENCODER_KEYS[modality]} is {frozen_encoders(cfg.model)[modality]})"
            )
        path = Path(rec["store"])
        if (
            not (path / "manifest.json").is_file()
            or sha256_file(path / "manifest.json") != rec["manifest_sha256"]
        ):
            raise FeatureInputError(
                f"{path}: not the {modality} feature store the run trained on (missing or rebuilt: manifest "
                f"sha256 differs from the recorded {rec['manifest_sha256'][:12]}…); pass --features STORE"
            )
        paths.append(path)
    return open_features(cfg.model, paths, shards, check_weights=False)


def print_leakage(model_cfg, shards: Path | None, unknown: str = "") -> None:
    """The frozen encoders' leakage warnings (avtrain.encoders.leakage_warning) for the corpus the
    item shards ``shards`` were built as, one line each, on stderr. Where the shards are not known
    (``unknown`` says why), neither is their corpus: one note says the check was not made, rather
    than a guessed corpus's warnings (a guess of voxceleb1 warned on MAV-Celeb runs)."""
    from avtrain.encoders import leakage_warning
    from avtrain.encoders.store import shards_corpus

    names = sorted(set(frozen_encoders(model_cfg).values()))
    corpus = None
    if shards is not None:
        try:
            corpus = shards_corpus(shards)
        except (AvmatchError, ValueError, AttributeError) as exc:
            unknown = f"{Path(shards) / 'manifest.json'}: {exc or type(exc).__name__}"
    if corpus is None:
        print(
            f"note: leakage not checked for {', '.join(names)}: the corpus of the run's item shards is "
            f"unknown ({unknown or 'no item shards given'}); docs/encoders.md, Leakage",
            file=sys.stderr,
        )
        return
    for name in names:
        line = leakage_warning(name, corpus)
        if line:
            print(line, file=sys.stderr)


def load_run_encoders(cfg) -> dict:
    """modality -> the loaded frozen encoder of each frozen modality of a trained run (serving:
    raw media in), checked to have the weights the run's features were built with (the sha256
    recorded in ``cfg.features``; an export records it too): other installed weights are one line."""
    from avtrain.encoders import load_encoder

    out = {}
    for modality, name in sorted(frozen_encoders(cfg.model).items()):
        key = f"{ENCODER_KEYS[modality]}_weights"
        encoder = load_encoder(name, getattr(cfg.model, key))  # a missing extra or bad weights: one line
        want = ((cfg.features or {}).get(modality) or {}).get("weights_sha256")
        if want is None:
            raise FeatureInputError(
                f"the run records no weights sha256 of its {modality} encoder {name} (cfg.features); "
                "it was not trained by avtrain fit on a feature store"
            )
        if encoder.weights_sha256 != want:
            raise FeatureInputError(
                f"encoder {name}: the weights here (sha256 {encoder.weights_sha256[:12]}…) are not those the "
                f"model was trained on ({want[:12]}…); install those or set model.{key}"
            )
        out[modality] = encoder
    return out
