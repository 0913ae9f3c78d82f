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
