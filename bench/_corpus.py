"""The synthetic data the benchmarks share: a corpus (4 clips and 4 faces per identity, seed 0) and
its matching-protocol shards, built with the plain functions build-shards calls."""

from __future__ import annotations

from pathlib import Path


def synth_shards(tmp: Path, identities: int, jobs: int = 2) -> Path:
    """TMP/corpus and TMP/shards; returns the shard directory."""
    from avdata.shards import build_shards
    from avdata.synth import synth_corpus

    c = tmp / "corpus"
    synth_corpus(c, identities=identities, clips_per_identity=4, faces_per_identity=4, seed=0)
    build_shards(tmp / "shards", c / "vox1_meta.csv", audio=c / "wav", faces=c / "faces", jobs=jobs)
    return tmp / "shards"


def random_run(path: Path) -> Path:
    """A run directory holding a randomly initialised AML checkpoint (default TrainConfig, torch
    seed 0): enough to time or size inference, whose cost does not depend on the weights."""
    import torch

    from avtrain.methods import build_method
    from avtrain.run.checkpoint import LAST, save_checkpoint
    from avtrain.run.config import TrainConfig

    path.mkdir()
    cfg = TrainConfig()
    torch.manual_seed(0)
    save_checkpoint(
        path / LAST, {"config": cfg.to_dict(), "model": build_method(cfg).state_dict(), "epoch": 0, "step": 0}
    )
    return path
