"""Shard directories in the conventions of the tools their readers already use.

Written by ``build-shards`` beside the shards, from the shard stats alone (no shard is re-read):

* ``SPLIT/sizes.json``: ``{"audio-000000.tar": samples, ...}`` keyed by file name, as open_clip's
  ``get_dataset_size`` looks it up (``sizes[basename(shard)]`` in the shards' own directory). The root
  ``sizes.json`` (keyed ``SPLIT/NAME.tar``) stays for avmatch's own readers.
* ``SPLIT/MODALITY.wids.json``: a wids shard index (``wids-shard-index-v1``): each shard's URL, relative
  to the index file, its sample count and file size.
* brace-expansion patterns of every shard set (``train/face-{000000..000012}.tar``), printed by
  ``build-shards`` and recorded in ``manifest.json`` under ``patterns``;
* ``README.md``: a dataset card whose YAML header declares one Hugging Face ``configs:`` entry per
  split × modality, so ``load_dataset(DIR, "train-face")`` loads only face shards (mixing the two
  modalities in one config makes ``datasets`` infer one schema and drop the other's columns).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from avdata.io import atomic_write_text, write_json

WIDS_KIND = "wids-shard-index-v1"
_SHARD_NAME = re.compile(r"^(?P<split>[a-z_]+)/(?P<modality>audio|face)-(?P<index>\d{6})\.tar$")

# What each modality's samples hold, for the card.
_MEMBERS = {
    "audio": "`npy` float32 (224, 125) spectrogram in dB, `json` metadata, `cls` identity index",
    "face": "`jpg` 224×224 RGB aligned face, `json` metadata, `cls` identity index",
}


def shard_sets(shards: dict[str, dict]) -> dict[tuple[str, str], list[tuple[int, str, dict]]]:
    """Group manifest shard entries (``SPLIT/MODALITY-NNNNNN.tar`` -> stats) by (split, modality),
    each list sorted by shard index."""
    sets: dict[tuple[str, str], list] = defaultdict(list)
    for name, entry in shards.items():
        m = _SHARD_NAME.match(name)
        if m is None:
            raise ValueError(f"{name}: not a shard name of the form SPLIT/MODALITY-NNNNNN.tar")
        sets[(m["split"], m["modality"])].append((int(m["index"]), name, entry))
    return {key: sorted(items) for key, items in sorted(sets.items())}


def brace_pattern(split: str, modality: str, indices: list[int]) -> str:
    """``split/modality-{000000..000012}.tar`` for a dense run of indices (as build-shards numbers
    them), the single name for one shard; a gap falls back to ``{a,b,c}``."""
    if len(indices) == 1:
        return f"{split}/{modality}-{indices[0]:06d}.tar"
    if indices == list(range(indices[0], indices[0] + len(indices))):
        return f"{split}/{modality}-{{{indices[0]:06d}..{indices[-1]:06d}}}.tar"
    return f"{split}/{modality}-{{{','.join(f'{i:06d}' for i in indices)}}}.tar"


def shard_patterns(shards: dict[str, dict]) -> dict[str, str]:
    """``{"train/face": "train/face-{000000..000012}.tar", ...}``, relative to the shard directory."""
    return {
        f"{split}/{modality}": brace_pattern(split, modality, [i for i, _, _ in items])
        for (split, modality), items in shard_sets(shards).items()
    }


def dataset_card(shards: dict[str, dict], protocol: str) -> str:
    """README.md text: YAML header with one ``configs`` entry per split × modality, then a short body."""
    sets = shard_sets(shards)
    lines = ["---", "configs:"]
    for split, modality in sets:
        lines += [
            f"- config_name: {split}-{modality}",
            "  data_files:",
            f"  - split: {split}",
            f'    path: "{split}/{modality}-*.tar"',
        ]
    lines += [
        "---",
        "",
        "# avmatch shards",
        "",
        f"Identity-split WebDataset shards built by `avdata build-shards` (protocol: {protocol}).",
        "Each config below is one split and one modality; samples of a config share one schema.",
        "",
        "| config | shards | samples | members |",
        "|---|---|---|---|",
    ]
    for (split, modality), items in sets.items():
        samples = sum(int(e["samples"]) for _, _, e in items)
        lines.append(f"| `{split}-{modality}` | {len(items)} | {samples} | {_MEMBERS[modality]} |")
    lines += [
        "",
        "```python",
        "from datasets import load_dataset",
        f'faces = load_dataset("PATH/TO/THIS/DIR", "{next(iter(sets))[0]}-face")',
        "```",
        "",
        "The spectrograms are `np.save` arrays (no pickle). Never decode these shards with a reader",
        "that unpickles `.pyd/.pkl/.pth` members. Format: avmatch `docs/shard-format.md`.",
        "",
    ]
    return "\n".join(lines)


def write_ecosystem_files(out: str | Path, shards: dict[str, dict], protocol: str) -> dict[str, str]:
    """Write per-split sizes.json, per split × modality wids indexes and the dataset card into the
    shard directory ``out``; return the brace patterns (for the manifest and the build summary)."""
    out = Path(out)
    per_split: dict[str, dict[str, int]] = defaultdict(dict)
    for (split, modality), items in shard_sets(shards).items():
        index = {
            "__kind__": WIDS_KIND,
            "wids_version": 1,
            "name": f"{split}-{modality}",
            "shardlist": [
                {"url": Path(name).name, "nsamples": int(e["samples"]), "filesize": int(e["bytes"])}
                for _, name, e in items
            ],
        }
        write_json(out / split / f"{modality}.wids.json", index)
        for _, name, e in items:
            per_split[split][Path(name).name] = int(e["samples"])
    for split, sizes in per_split.items():
        write_json(out / split / "sizes.json", sizes)
    atomic_write_text(out / "README.md", dataset_card(shards, protocol))
    return shard_patterns(shards)
