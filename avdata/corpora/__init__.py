"""The corpus registry: one module per corpus, each owning its layout, meta reader and protocols
(:mod:`avdata.corpora.base` is the seam; docs/corpora.md describes every corpus).

A new corpus is one module here and one line in :data:`CORPORA`. The CLIs list the corpora and
the protocols from this registry (the protocols' one owner): nothing else types their names.
Importing it loads no pandas or torch.
"""

from __future__ import annotations

from avdata.corpora.base import Corpus, CorpusError, Protocol, ProtocolOptions, media_split_names
from avdata.corpora.csvlist import CSV_CORPUS
from avdata.corpora.mavceleb import MAVCELEB
from avdata.corpora.vggface2 import VGGFACE2
from avdata.corpora.voxceleb1 import VOXCELEB1
from avdata.corpora.voxceleb2 import VOXCELEB2

CORPORA: dict[str, Corpus] = {c.name: c for c in (VOXCELEB1, VOXCELEB2, VGGFACE2, MAVCELEB, CSV_CORPUS)}
DEFAULT_CORPUS = "voxceleb1"


def get_corpus(name: str | None) -> Corpus:
    """The corpus ``name`` (None: the default, voxceleb1), or a one-line CorpusError."""
    name = name or DEFAULT_CORPUS
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; choose from {', '.join(CORPORA)}")
    return CORPORA[name]


def protocol_names() -> list[str]:
    """Every protocol of every corpus, in registry order (each name once)."""
    names: list[str] = []
    for corpus in CORPORA.values():
        names += [p for p in corpus.protocols if p not in names]
    return names


def protocols_help() -> str:
    """One line per corpus: its protocols, default first (for --help texts)."""
    parts = []
    for corpus in CORPORA.values():
        names = [corpus.default_protocol] + [p for p in corpus.protocols if p != corpus.default_protocol]
        parts.append(f"{corpus.name}: {', '.join(names)}")
    return "; ".join(parts)


def find_protocol(corpus: str | None, protocol: str | None) -> Protocol | None:
    """The protocol a manifest names (None where the corpus or protocol is unknown: a manifest
    from elsewhere is described, not trusted)."""
    if not isinstance(corpus, (str, type(None))) or not isinstance(protocol, (str, type(None))):
        return None
    c = CORPORA.get(corpus or DEFAULT_CORPUS)
    if c is None:
        return None
    return c.protocols.get(protocol or c.default_protocol)


def known_splits() -> set[str]:
    """Every split name a registered protocol can make (custom splits are any plain name)."""
    return {s for c in CORPORA.values() for p in c.protocols.values() for s in p.splits}


__all__ = [
    "CORPORA",
    "DEFAULT_CORPUS",
    "Corpus",
    "CorpusError",
    "Protocol",
    "ProtocolOptions",
    "find_protocol",
    "get_corpus",
    "known_splits",
    "media_split_names",
    "protocol_names",
    "protocols_help",
]
