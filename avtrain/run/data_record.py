"""What a run records of the data it trained on, and the preprocessing serving takes from it.

``avtrain fit`` stores this record in every checkpoint under :data:`RECORD_KEY` (checked on load
by :func:`avtrain.run.checkpoint.state_problem`), read from the manifests, never from defaults:

* ``item_shards``: the item shards the training tuples were drawn from -- their manifest's
  sha256, the extraction settings they were built with (``config.extract``: an
  :class:`avdata.extract.ExtractConfig`), the spectrogram recipe, the build's format version,
  avmatch version, corpus and protocol. They are found through the links the data already has:
  ``--items SHARDS`` is them; ``--items STORE`` (avdata cache) links to them, and so does the tuple
  directory (``source_shards`` beside ``source_shards_manifest_sha256``,
  :func:`avdata.tuples.linked_source_shards`). Not found: ``item_shards`` is None and
  ``item_shards_unknown`` says why; fit says so in one line.
* ``tuples``: the tuple directory, its manifest's sha256 and the list trained on;
* ``val``: the validation lists (tuple directory, manifest sha256, list names) and their item shards.

``avtrain embed / match / score / export`` preprocess raw media with the recorded extraction
settings (:func:`serving_extract`); a run without them (unknown, or trained before runs recorded
them) uses avdata's defaults and says so in one line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from avdata.errors import AvmatchError
from avdata.extract import ExtractConfig

RECORD_KEY = "data"  # the checkpoint's (and an export's config.json) key of the record
SHARDS_KIND = "avmatch.shards"


def _manifest(dir: Path) -> tuple[bytes, dict]:
    """DIR/manifest.json: its bytes and its JSON object (a regular file inside DIR, capped)."""
    from avdata.untrusted import read_inside

    raw = read_inside(dir, "manifest.json", missing="missing")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise AvmatchError(f"{dir / 'manifest.json'}: not a JSON object")
    return raw, data


def item_shards_record(shards: str | Path) -> tuple[dict | None, str]:
    """What a run records of an item shard directory (avdata build-shards), from its manifest.json;
    or None and why not (one phrase)."""
    from avdata.io import sha256_bytes

    shards = Path(shards)
    try:
        raw, m = _manifest(shards)
    except AvmatchError as exc:
        return None, str(exc)
    config = m.get("config")
    if m.get("kind") != SHARDS_KIND or not isinstance(config, dict):
        return None, f"{shards / 'manifest.json'} is not an item shards' ({SHARDS_KIND}) manifest"
    try:
        extract = ExtractConfig.from_dict(config.get("extract"))
    except AvmatchError as exc:
        return None, f"{shards / 'manifest.json'}: config.{exc}"
    versions = m.get("versions") if isinstance(m.get("versions"), dict) else {}
    return {
        "path": str(shards),
        "manifest_sha256": sha256_bytes(raw),
        "extract": dataclasses.asdict(extract),
        "spectrogram": config.get("spectrogram"),
        "format_version": m.get("format_version"),
        "avmatch_version": versions.get("avmatch"),
        "corpus": config.get("corpus", "voxceleb1"),  # build-shards leaves out its default
        "protocol": config.get("protocol"),
    }, ""


def locate_item_shards(tuples_dir: str | Path, items: str | Path | None = None) -> tuple[Path | None, str]:
    """The item shards a tuple directory's lists were drawn from: ``items`` when it is them, else
    through the links of ``items`` (an item store) and of the tuple directory; or None and why not."""
    from avdata.items import STORE_KIND
    from avdata.tuples import linked_source_shards, read_tuple_manifest

    reasons = []
    if items is not None:
        try:
            _, m = _manifest(Path(items))
        except AvmatchError as exc:
            m, reasons = {}, [str(exc)]
        if m.get("kind") == SHARDS_KIND:
            return Path(items), ""
        if m.get("kind") == STORE_KIND:
            found, why = linked_source_shards(items, m)
            if found is not None:
                return found, ""
            reasons.append(why)
    try:
        found, why = linked_source_shards(tuples_dir, read_tuple_manifest(Path(tuples_dir), required=True))
    except AvmatchError as exc:
        found, why = None, str(exc)
    if found is not None:
        return found, ""
    return None, (reasons + [why])[0]


def _tuples_record(tuples_dir: str | Path, lists: list[str]) -> dict:
    from avdata.io import sha256_bytes
    from avdata.untrusted import read_inside

    raw = read_inside(tuples_dir, "manifest.json", missing="missing; not a tuple directory")
    return {"dir": str(tuples_dir), "manifest_sha256": sha256_bytes(raw), "lists": sorted(lists)}


def run_data_record(
    tuples_dir: str | Path,
    trained_list: str,
    items: str | Path | None = None,
    val_tuples: str | Path | None = None,
    val_shards: str | Path | None = None,
    val_lists: list[str] = (),
) -> tuple[dict, str | None]:
    """The record fit stores (see the module doc), and the one line to say when the item shards'
    settings are unknown (else None)."""
    record = {"tuples": _tuples_record(tuples_dir, [trained_list]), "item_shards": None, "val": None}
    shards, why = locate_item_shards(tuples_dir, items)
    if shards is not None:
        record["item_shards"], why = item_shards_record(shards)
    if record["item_shards"] is None:
        record["item_shards_unknown"] = why
    if val_tuples is not None:
        record["val"] = _tuples_record(val_tuples, list(val_lists)) | {"item_shards": str(val_shards)}
    note = None
    if record["item_shards"] is None:
        note = (
            f"the item shards' extraction settings are unknown ({why}); embed, match, score and export "
            "will use avdata's defaults"
        )
    return record, note


# --------------------------------------------------------------------------- checked on load


def _str_or_none(v) -> bool:
    return v is None or isinstance(v, str)


# the keys fit writes (run_data_record, item_shards_record, _tuples_record): a record holding others
# was not written by this avmatch, and is refused rather than partly read
RECORD_KEYS = {"tuples", "item_shards", "item_shards_unknown", "val"}
ITEM_SHARDS_KEYS = {
    "path",
    "manifest_sha256",
    "extract",
    "spectrogram",
    "format_version",
    "avmatch_version",
    "corpus",
    "protocol",
}
TUPLES_KEYS = {"dir", "manifest_sha256", "lists"}
VAL_KEYS = TUPLES_KEYS | {"item_shards"}


def _unknown(where: str, d: dict, known: set[str]) -> str | None:
    extra = sorted(map(str, set(d) - known))
    return f"{where}: unknown key(s) {', '.join(map(repr, extra))}" if extra else None


def record_problem(record) -> str | None:
    """Why a checkpoint's (or an export's) record is not one fit writes (one phrase), or None."""
    if not isinstance(record, dict) or not {"tuples", "item_shards"} <= set(record):
        return "data is not a record of item shards and tuples"
    problem = _unknown("data", record, RECORD_KEYS)
    if problem:
        return problem
    shards = record["item_shards"]
    if shards is None:
        if not isinstance(record.get("item_shards_unknown"), str):
            return "data.item_shards is null without data.item_shards_unknown saying why"
    elif not isinstance(shards, dict) or not all(
        _str_or_none(shards.get(k))
        for k in ("path", "manifest_sha256", "avmatch_version", "corpus", "protocol")
    ):
        return "data.item_shards is not a record of item shards"
    else:
        problem = _unknown("data.item_shards", shards, ITEM_SHARDS_KEYS)
        if problem:
            return problem
        version = shards.get("format_version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            return f"data.item_shards.format_version {version!r} is not an integer"
        spectrogram = shards.get("spectrogram")
        try:  # compared as JSON by serving_extract; a checkpoint could hold a tensor or a deep nest
            json.dumps(spectrogram)
        except (TypeError, ValueError, RecursionError):
            spectrogram = "not JSON"
        if spectrogram is not None and not isinstance(spectrogram, dict):
            return "data.item_shards.spectrogram is not null or a JSON object of settings"
        try:
            ExtractConfig.from_dict(shards.get("extract"))
        except AvmatchError as exc:
            return f"data.item_shards.{exc}"
    for key in ("tuples", "val"):
        t = record.get(key)
        if t is None and key == "val":
            continue
        unknown = isinstance(t, dict) and _unknown(
            f"data.{key}", t, VAL_KEYS if key == "val" else TUPLES_KEYS
        )
        if unknown:
            return unknown
        if not (
            isinstance(t, dict)
            and isinstance(t.get("manifest_sha256"), str)
            and _str_or_none(t.get("dir"))
            and _str_or_none(t.get("item_shards"))
            and isinstance(t.get("lists"), list)
            and all(isinstance(n, str) for n in t["lists"])
        ):
            return f"data.{key} is not a record of a tuple directory's lists"
    return None


def serving_extract(record, where: str) -> tuple[ExtractConfig, str | None]:
    """The extraction settings to preprocess raw media with for a model whose record (checkpoint
    key :data:`RECORD_KEY`, checked by :func:`record_problem`) is ``record``, and the one line
    to say when they are avdata's defaults for lack of a record (else None)."""
    from avdata.audio import SPEC_CONFIG

    defaults = ", ".join(f"{f} {getattr(ExtractConfig(), f)}" for f in ("face_margin", "video_fps"))
    if record is None:
        return ExtractConfig(), (
            f"{where} records no extraction settings of its item shards (trained before runs recorded "
            f"them); preprocessing with avdata's defaults ({defaults}, ...)"
        )
    shards = record["item_shards"]
    if shards is None:
        return ExtractConfig(), (
            f"{where}: its item shards' extraction settings are unknown ({record['item_shards_unknown']}); "
            f"preprocessing with avdata's defaults ({defaults}, ...)"
        )
    note = None
    spectrogram = shards.get("spectrogram")
    if spectrogram is not None and json.dumps(spectrogram, sort_keys=True) != json.dumps(
        json.loads(json.dumps(SPEC_CONFIG)), sort_keys=True
    ):
        note = (
            f"{where}: its item shards were built with another spectrogram recipe than this avmatch "
            f"computes (avmatch {shards.get('avmatch_version')}); voices are embedded with this one's"
        )
    return ExtractConfig.from_dict(shards["extract"]), note
