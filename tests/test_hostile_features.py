"""Hostile inputs on the surfaces of issues #23 / #24: feature stores (``avtrain features``
output), the data record in checkpoints and exports with the ``source_shards`` link it follows,
FAME lists, keys and score files, and encoder weights in safetensors.

Each is read from disk and may come from someone else. Each test makes a real file or directory
(feature stores with the store's own writer and a real encoder's card), tampers with it the way an
attacker or a broken copy would, and checks for one line naming the file and the reason: never a
traceback, nothing unpickled, nothing read outside the directory, no link followed to another
build.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from avdata.errors import AvmatchError
from avdata.io import sha256_bytes
from avdata.tuples import linked_source_shards
from avtrain.encoders import EncoderError, encoder_card
from avtrain.encoders.store import FeatureStore, FeatureStoreError, _write_store
from avtrain.run.data_record import record_problem, serving_extract
from avtrain.serve.errors import InferenceError
from avtrain.serve.fame import fame_summary, read_key, read_submission

SHA = "ab" * 32


def one_line(exc: BaseException, *words: str) -> str:
    text = str(exc)
    assert "\n" not in text and isinstance(exc, AvmatchError), text
    for w in words:
        assert w in text, (w, text)
    return text


# ------------------------------------------------------------------------------ feature stores


def make_store(root: Path, n: int = 3) -> Path:
    """A valid face store of ``n`` rows written by the store's own writer (dlib's card: 128-d)."""
    enc = SimpleNamespace(card=encoder_card("dlib"))
    rng = np.random.default_rng(0)
    vectors = [rng.standard_normal(128).astype("<f4") for _ in range(n)]
    lines = [
        {"key": f"id1000{i}_f{i}", "row": i, "vox_id": f"id1000{i}", "split": "train", "modality": "face"}
        for i in range(n)
    ]
    identity = {"weights_sha256": SHA, "extract": {"face_margin": 0.2}, "shards_manifest_sha256": SHA}
    root.mkdir(parents=True)
    _write_store(root, enc, identity, vectors, lines, [], {"items": n})
    assert len(FeatureStore(root)) == n
    return root


def reseal(store: Path, **changes) -> None:
    """Rewrite the manifest with ``changes`` and every data file's sha256 recomputed: what an
    attacker who edits a store does (a sha256 in the same directory proves nothing)."""
    m = json.loads((store / "manifest.json").read_text())
    m["files"] = {n: sha256_bytes((store / n).read_bytes()) for n in m["files"]}
    m.update(changes)
    (store / "manifest.json").write_text(json.dumps(m))


def refused(store: Path, *words: str) -> str:
    with pytest.raises(FeatureStoreError) as err:
        FeatureStore(store)
    return one_line(err.value, str(store), *words)


@pytest.fixture
def store(tmp_path) -> Path:
    return make_store(tmp_path / "store")


def test_store_manifest_of_another_kind_or_fields_of_wrong_types(store):
    reseal(store, kind="avmatch.items")
    refused(store, "manifest.json is not a feature store's")
    reseal(store, kind="avmatch-feature-store-v1")
    good = json.loads((store / "manifest.json").read_text())
    for bad in ({"dim": True}, {"dim": "128"}, {"dim": -1}, {"modality": "smell"}, {"files": []}):
        (store / "manifest.json").write_text(json.dumps(good | bad))
        refused(store, "manifest.json lacks")
    (store / "manifest.json").write_bytes(b"\xff\xfe{")
    refused(store, "manifest.json is not JSON")
    (store / "manifest.json").write_text("[" * 100_000)
    refused(store, "manifest.json is not JSON")


def test_store_files_entries_are_not_names_to_open(store, tmp_path):
    """``files`` maps the store's fixed file names to their sha256; a name an attacker adds
    (absolute, ``..``, a URL) is never opened."""
    secret = tmp_path / "secret"
    secret.write_text("outside")
    m = json.loads((store / "manifest.json").read_text())
    m["files"] |= {str(secret): SHA, "../secret": SHA, "http://example.com/x": SHA}
    (store / "manifest.json").write_text(json.dumps(m))
    assert len(FeatureStore(store)) == 3  # the extra names are ignored, not read


@pytest.mark.parametrize("name", ["items.jsonl", "features.npy", "manifest.json"])
def test_store_file_that_is_a_symlink_out_of_the_store_is_refused(store, tmp_path, name):
    outside = tmp_path / f"outside-{name}"
    os.replace(store / name, outside)
    (store / name).symlink_to(outside)
    refused(store, name, "a symlink leads outside")


def test_store_features_npy_as_a_fifo_is_refused_without_blocking(store):
    os.unlink(store / "features.npy")
    os.mkfifo(store / "features.npy")
    refused(store, "features.npy", "FIFO")


def test_store_features_npy_with_pickled_objects_is_never_unpickled(store, tmp_path):
    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(store / "features.npy", "wb") as f:
        np.save(f, np.array([Boom()] * 3, dtype=object), allow_pickle=True)
    refused(store, "features.npy", "object array", "nothing was unpickled")
    (store / "features.npy").write_bytes(pickle.dumps(Boom()))  # a bare pickle named .npy
    refused(store, "features.npy", "not a .npy array")
    assert not marker.exists()


@pytest.mark.parametrize(
    "array, words",
    [
        (np.zeros((3, 64), "<f4"), ["(3, 64) <f4", "need (3, 128) <f4"]),
        (np.zeros((4, 128), "<f4"), ["(4, 128)", "need (3, 128)"]),
        (np.zeros((3, 128), "<f8"), ["<f8"]),
        (np.zeros((3, 128), ">f4"), [">f4"]),
        (np.asfortranarray(np.zeros((3, 128), "<f4")), ["features.npy holds"]),
    ],
)
def test_store_features_of_wrong_shape_or_dtype(store, array, words):
    with open(store / "features.npy", "wb") as f:
        np.lib.format.write_array(f, array, allow_pickle=False)
    refused(store, *words)


def test_store_features_truncated_or_with_trailing_bytes(store):
    data = (store / "features.npy").read_bytes()
    (store / "features.npy").write_bytes(data[:-100])
    refused(store, "features.npy is", "its header needs")
    (store / "features.npy").write_bytes(data + b"\0" * 8)
    refused(store, "features.npy is", "its header needs")
    (store / "features.npy").write_bytes(data[:40])  # cut inside the header
    refused(store, "features.npy: not a .npy array")


def test_store_features_header_claiming_a_huge_array_is_refused_unread(store):
    """A header of (3, 128) rows is what items.jsonl needs; one claiming 2**40 rows from a 1 kB
    file is refused from the header and the file size, before anything is mapped."""
    m = json.loads((store / "manifest.json").read_text())
    header = {"descr": "<f4", "fortran_order": False, "shape": (2**40, 128)}
    with open(store / "features.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 1024)
    refused(store, "(1099511627776, 128)")
    assert m["dim"] == 128


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_store_with_a_non_finite_row_is_refused_naming_row_and_key(store, value):
    """The builder never writes a non-finite embedding (a reject instead); one in a store that
    was edited would poison every distance it enters."""
    array = np.load(store / "features.npy")
    array[1, 7] = value
    with open(store / "features.npy", "wb") as f:
        np.lib.format.write_array(f, array, allow_pickle=False)
    refused(store, "features.npy: row 1 (item id10001_f1) is not finite")


@pytest.mark.parametrize(
    "lines, words",
    [
        (['{"key": "a"'], ["items.jsonl:1: not JSON"]),
        (["[" * 100_000], ["items.jsonl:1: not JSON"]),
        ([b"\xff\xfe garbage"], ["items.jsonl: not UTF-8"]),
        ([None, None], ["items.jsonl:2: item 'id10000_f0' listed twice"]),  # the first line twice
        (["row5"], ["items.jsonl:2: not a key, the next row"]),
        (["rowtrue"], ["items.jsonl:2: not a key, the next row"]),
        (["modality"], ["items.jsonl:1: not a key, the next row, vox_id, split and modality face"]),
        (["newline"], ["items.jsonl:1: not a key, the next row"]),  # a key that would break the line
    ],
)
def test_store_items_jsonl_with_bad_lines(store, lines, words):
    good = (store / "items.jsonl").read_bytes().splitlines()
    if lines == ["row5"]:
        bad = [good[0], good[1].replace(b'"row": 1', b'"row": 5'), good[2]]
    elif lines == ["rowtrue"]:
        bad = [good[0], good[1].replace(b'"row": 1', b'"row": true'), good[2]]
    elif lines == ["newline"]:
        bad = [good[0].replace(b"id10000_f0", b"id10000\\n\\u001b[2Jf0"), *good[1:]]
    elif lines == ["modality"]:
        bad = [good[0].replace(b'"face"', b'"audio"'), *good[1:]]
    elif lines == [None, None]:  # the first line's key again, at the next row
        bad = [good[0], good[1].replace(b"id10001_f1", b"id10000_f0"), good[2]]
    else:
        bad = [line.encode() if isinstance(line, str) else line for line in lines]
    (store / "items.jsonl").write_bytes(b"\n".join(bad) + b"\n")
    reseal(store)
    refused(store, *words)


@pytest.mark.parametrize(
    "line",
    [
        b'{"key": "a", "source": 3, "reason": "x"}',
        b'{"key": "a", "source": "s", "reason": "fine\\nError: forged second line"}',
        b'{"key": "a", "source": "s", "reason": "\\u001b]0;title\\u0007"}',
    ],
)
def test_store_rejects_jsonl_with_bad_lines(store, line):
    """A reject's reason is printed in fit's notes: one with a newline or a terminal escape is refused."""
    (store / "rejects.jsonl").write_bytes(line + b"\n")
    reseal(store)
    refused(store, "rejects.jsonl:1: not a key, source and reason")


@pytest.mark.parametrize("counts", [[], {"items": "3"}, {"items": -1}, {"items": True}])
def test_store_counts_of_wrong_types(store, counts):
    """build_feature_store returns a reused store's counts and `avtrain features` prints them."""
    reseal(store, counts=counts)
    refused(store, "counts is not an object of non-negative integers")


def test_store_that_is_a_symlink_is_read_where_it_points_only_when_named(store, tmp_path):
    """A store named on the command line may be a symlink (the user chose it); inside it,
    nothing leads further out."""
    link = tmp_path / "link"
    link.symlink_to(store)
    assert len(FeatureStore(link)) == 3


def test_default_store_in_shards_that_leads_out_of_them_is_refused(store, tmp_path):
    """fit finds a frozen encoder's store at SHARDS/features/ENCODER when no --features is given:
    a shard directory from elsewhere whose features/ is a symlink out of it is refused."""
    from avtrain.run.config import ModelConfig
    from avtrain.train.features import FeatureInputError, open_features

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "features").symlink_to(store.parent)
    os.rename(store, store.parent / "dlib")
    cfg = ModelConfig(face_encoder="dlib")
    with pytest.raises((FeatureInputError, AvmatchError)) as err:
        open_features(cfg, shards=shards, check_weights=False)
    one_line(err.value, "dlib", "a symlink leads outside")


# ------------------------------------------------------------------------------ the data record


def _deep(n: int) -> dict:
    """A dict nested ``n`` deep (what a checkpoint's restricted unpickler can still build)."""
    d: dict = {}
    for _ in range(n):
        d = {"x": d}
    return d


def good_record() -> dict:
    return {
        "tuples": {"dir": "t", "manifest_sha256": SHA, "lists": ["matching_train_a2v_k2"]},
        "item_shards": {
            "path": "s",
            "manifest_sha256": SHA,
            "extract": {"face_margin": 0.3},
            "spectrogram": None,
            "format_version": 1,
            "avmatch_version": "0.1",
            "corpus": "voxceleb1",
            "protocol": None,
        },
        "val": None,
    }


def test_good_record_passes_and_gives_its_extract():
    assert record_problem(good_record()) is None
    extract, note = serving_extract(good_record(), "RUN/checkpoint.pt")
    assert extract.face_margin == 0.3 and note is None


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda r: r.clear(), ["data is not a record"]),
        (lambda r: r.update(item_shards=None), ["item_shards_unknown"]),
        (lambda r: r.update(item_shards=["s"]), ["data.item_shards is not a record"]),
        (lambda r: r["item_shards"].update(path=5), ["data.item_shards is not a record"]),
        (lambda r: r["item_shards"].update(extract="margin"), ["data.item_shards.extract"]),
        (lambda r: r["item_shards"]["extract"].update(face_margin=1e9), ["face_margin", "[0, 1]"]),
        (lambda r: r["item_shards"]["extract"].update(face_margin="0.2"), ["face_margin"]),
        (lambda r: r["item_shards"]["extract"].update(video_fps=-1), ["video_fps"]),
        (lambda r: r["item_shards"]["extract"].update(evil=1), ["unknown setting 'evil'"]),
        (lambda r: r["item_shards"].update(format_version="1"), ["data.item_shards.format_version"]),
        (lambda r: r["item_shards"].update(surprise=1), ["data.item_shards: unknown key(s) 'surprise'"]),
        (lambda r: r.update(surprise=1), ["data: unknown key(s) 'surprise'"]),
        (lambda r: r["tuples"].update(lists="matching"), ["data.tuples is not a record"]),
        (lambda r: r["tuples"].update(surprise=1), ["data.tuples: unknown key(s) 'surprise'"]),
        (lambda r: r.update(val=[]), ["data.val is not a record"]),
        (lambda r: r["tuples"].update(dir=["t"]), ["data.tuples is not a record"]),
        (lambda r: r.update(val=dict(r["tuples"], item_shards=3)), ["data.val is not a record"]),
        (lambda r: r["item_shards"].update(spectrogram=[1]), ["data.item_shards.spectrogram"]),
        (lambda r: r["item_shards"].update(spectrogram={"n": object()}), ["data.item_shards.spectrogram"]),
        (lambda r: r["item_shards"].update(spectrogram=_deep(100_000)), ["data.item_shards.spectrogram"]),
    ],
)
def test_bad_records_are_one_phrase(edit, words):
    record = good_record()
    edit(record)
    problem = record_problem(record)
    assert problem is not None and "\n" not in problem, problem
    for w in words:
        assert w in problem, (w, problem)


def test_export_config_json_nested_too_deep_is_one_line(tmp_path):
    """json.loads of 100,000 nested brackets raises RecursionError, which is not a JSONDecodeError."""
    import torch

    from avtrain.serve.export import load_export

    (tmp_path / "config.json").write_text("[" * 100_000)
    with pytest.raises(AvmatchError) as err:
        load_export(tmp_path, torch.device("cpu"))
    one_line(err.value, "config.json", "not a readable model config")


def test_export_config_json_with_a_bad_record_is_one_line(tmp_path):
    from avtrain.serve.export import EXPORT_FORMAT, _check_export_config

    meta = {"format": EXPORT_FORMAT, "format_version": 1, "train_config": {}, "extract": {}}
    meta |= {"weights_sha256": SHA, "data": good_record()}
    meta["data"]["item_shards"]["extract"]["face_margin"] = 7
    with pytest.raises(AvmatchError) as err:
        _check_export_config(meta, tmp_path / "config.json")
    one_line(err.value, "config.json: data.item_shards.extract", "face_margin")


# ------------------------------------------------------------------------------ source_shards links


@pytest.fixture
def linked(tmp_path) -> tuple[Path, Path, dict]:
    """An item shard directory (just its manifest: all a link checks) and a tuple directory beside
    it linking to it as make-tuples does."""
    from avdata.tuples import source_shards_link

    shards, tuples = tmp_path / "data" / "shards", tmp_path / "data" / "tuples"
    shards.mkdir(parents=True)
    tuples.mkdir()
    raw = json.dumps({"kind": "avmatch.shards", "config": {}}).encode()
    (shards / "manifest.json").write_bytes(raw)
    manifest = {
        "source_shards": source_shards_link(shards, tuples),
        "source_shards_manifest_sha256": sha256_bytes(raw),
    }
    assert manifest["source_shards"] == "../shards"
    assert linked_source_shards(tuples, manifest) == (tuples / "../shards", "")
    return shards, tuples, manifest


@pytest.mark.parametrize(
    "link, words",
    [
        ("http://example.com/shards", ["not a relative path to a directory", "URL"]),
        ("s3://bucket/shards", ["URL"]),
        ("file:///etc", ["URL"]),
        ("pipe:cat /etc/passwd", ["URL"]),
        ("/etc", ["an absolute path"]),
        ("~/shards", ["not a relative path"]),
        ("..\\shards", ["not a relative path"]),
        ("../shards\n", ["not a relative path"]),
        ("../shards\x00", ["is not a path"]),
        (5, ["is not a path"]),
    ],
)
def test_source_shards_link_that_is_not_a_relative_path_is_ignored_with_a_reason(linked, link, words):
    shards, tuples, manifest = linked
    found, why = linked_source_shards(tuples, manifest | {"source_shards": link})
    assert found is None and "\n" not in why and str(tuples / "manifest.json") in why, why
    for w in words:
        assert w in why, (w, why)


def test_source_shards_link_to_another_build_or_nowhere_is_not_followed(linked, tmp_path):
    shards, tuples, manifest = linked
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"kind": "avmatch.shards", "config": {"x": 1}}))
    # a ``..`` chain up to / and down to another build: followed only to check its manifest's hash
    chain = "../" * (len(tuples.resolve().parts) + 3) + str(other.resolve()).lstrip("/")
    found, why = linked_source_shards(tuples, manifest | {"source_shards": chain})
    assert found is None and "is not the one it was made from" in why and "\n" not in why, why
    found, why = linked_source_shards(tuples, manifest | {"source_shards": "../nowhere"})
    assert found is None and "missing" in why and "\n" not in why, why
    (shards / "manifest.json").unlink()  # a manifest that is a directory or a FIFO
    (shards / "manifest.json").mkdir()
    found, why = linked_source_shards(tuples, manifest)
    assert found is None and "not a regular file" in why, why


def test_source_shards_link_into_a_symlink_loop_is_one_reason(linked, tmp_path):
    _, tuples, manifest = linked
    loop = tmp_path / "data" / "loop"
    loop.symlink_to(loop)
    found, why = linked_source_shards(tuples, manifest | {"source_shards": "../loop"})
    assert found is None and "\n" not in why and "symlink loop" in why, why
    # the shards' manifest.json itself a loop
    shards, _, _ = linked
    (shards / "manifest.json").unlink()
    (shards / "manifest.json").symlink_to(shards / "manifest.json")
    found, why = linked_source_shards(tuples, manifest)
    assert found is None and "\n" not in why and "symlink loop" in why, why


# ------------------------------------------------------------------------------ FAME files


@pytest.mark.parametrize(
    "data, words",
    [
        (b"\xef\xbb\xbfa 1\r\nb 0\r\n", None),  # BOM and CRLF: read
        (b"a 1\nb \xff\n", ["cannot read the key file (UnicodeDecodeError)"]),
        (b"a 1\nb 0\na 1\n", ["key.txt:3: ID 'a' repeats line 1"]),
        (b"a 1\nb\x000\n", ["key.txt:2: expected 'ID LABEL'"]),
        (b"a 1\nb 2\n", ["key.txt:2: expected 'ID LABEL' with LABEL 0 or 1"]),
        (b"a 1\n" + b"x" * 5_000_000 + b" 0\n", None),  # one huge line: a long ID, read
    ],
)
def test_fame_key_files(tmp_path, data, words):
    key = tmp_path / "key.txt"
    key.write_bytes(data)
    if words is None:
        ids, labels = read_key(key)
        assert labels.tolist() == [1, 0] and ids[0] == "a"
        return
    with pytest.raises(InferenceError) as err:
        read_key(key)
    one_line(err.value, str(key), *words)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"a 0.5\r\nb 1.5\r\n", None),
        (b"a 0.5\nb nan\n", ["score.txt:2: score 'nan' is not a finite number"]),
        (b"a 0.5\nb 1e999\n", ["score.txt:2: score '1e999' is not a finite number"]),
        (b"a 0.5\nb 1_0\n", None),  # Python's float() reads 1_0 as 10: harmless
        (b"a 0.5\nb 0x10\n", ["score.txt:2: score '0x10' is not a number"]),
        (b"a 0.5\na 0.7\n", ["score.txt:2: ID 'a' repeats line 1"]),
        (b"a 0.5 extra\n", ["score.txt:1: expected 'ID SCORE', got 3 field(s)"]),
        (b"a\x00 0.5\n", None),  # NUL inside an ID: an ID that matches no key, not a crash
        (b"\xc3\x28 0.5\n", ["cannot read the score file"]),
    ],
)
def test_fame_score_files(tmp_path, data, words):
    path = tmp_path / "score.txt"
    path.write_bytes(data)
    if words is None:
        read_submission(path)
        return
    with pytest.raises(InferenceError) as err:
        read_submission(path)
    one_line(err.value, str(path), *words)


def _fame_dir(root: Path) -> tuple[Path, Path]:
    subs, keys = root / "subs", root / "keys"
    subs.mkdir()
    keys.mkdir()
    for lang in ("English", "Urdu"):
        (keys / f"{lang}_test.txt").write_text("a 1\nb 0\nc 1\nd 0\n")
        for cond in ("heard", "unheard"):
            (subs / f"sub_score_v1_{lang}_{cond}.txt").write_text("a 0.1\nb 0.9\nc 0.2\nd 0.8\n")
    return subs, keys


def test_fame_summary_of_a_directory_with_extra_missing_or_odd_files(tmp_path):
    subs, keys = _fame_dir(tmp_path)
    assert fame_summary([subs], keys)["overall_eer"] == 0.0
    (subs / "notes.txt").write_text("not a score file")  # other files in the folder: ignored
    (subs / "sub_score_v1_English_heard.txt.bak").write_text("x")
    assert fame_summary([subs], keys)["overall_eer"] == 0.0

    def summary_error(*words):
        with pytest.raises(AvmatchError) as err:
            fame_summary([subs], keys)
        return one_line(err.value, *words)

    (subs / "sub_score_v2_English_heard.txt").write_text("a 0.1\n")
    summary_error("score files of several versions (v1, v2)")
    (subs / "sub_score_v2_English_heard.txt").unlink()
    (subs / "sub_score_v1_French_heard.txt").write_text("a 0.1\n")
    summary_error("needs four files", "English, French, Urdu")
    (subs / "sub_score_v1_French_heard.txt").unlink()
    (subs / "sub_score_v1_Urdu_unheard.txt").unlink()
    summary_error("needs four files", "missing sub_score_v1_Urdu_unheard.txt")
    # a directory, a FIFO, a symlink to a directory under a score file's name
    (subs / "sub_score_v1_Urdu_unheard.txt").mkdir()
    summary_error("sub_score_v1_Urdu_unheard.txt", "not a regular file")
    (subs / "sub_score_v1_Urdu_unheard.txt").rmdir()
    os.mkfifo(subs / "sub_score_v1_Urdu_unheard.txt")
    summary_error("sub_score_v1_Urdu_unheard.txt", "FIFO")
    (subs / "sub_score_v1_Urdu_unheard.txt").unlink()
    (subs / "sub_score_v1_Urdu_unheard.txt").write_text("a 0.1\nb 0.9\nc 0.2\n")  # a line short
    summary_error("sub_score_v1_Urdu_unheard.txt: 3 score line(s)", "has 4 ID(s)")
    (keys / "English_test.txt").unlink()  # the key of a file's test language missing
    (subs / "sub_score_v1_Urdu_unheard.txt").write_text("a 0.1\nb 0.9\nc 0.2\nd 0.8\n")
    summary_error("English_test.txt", "not found")


def test_fame_list_paths_escaping_the_root_are_rejects_of_their_pair(tmp_path):
    """FAME test lists go through avtrain score's pair-list reader: a path leaving --root is
    refused without being opened (the pair's reject), a huge, NUL or non-UTF-8 line is one line."""
    from avtrain.serve.pairs import read_pair_list, safe_join

    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.wav").write_bytes(b"RIFF")
    for name in ("../secret.wav", "/etc/passwd", "voices/\x00x.wav", "http://h/x.wav", "~/x.wav"):
        with pytest.raises(AvmatchError) as err:
            safe_join(root, name)
        assert "\n" not in str(err.value)
    lst = tmp_path / "English_test.txt"
    lst.write_bytes(b"1 voices/a.wav faces/a.jpg\r\n2 voices/b.wav faces/b.jpg\r\n")
    assert [p.id for p in read_pair_list(lst, "fame")[1]] == ["1", "2"]
    for data, word in (
        (b"1 voices/a.wav faces/a.jpg\n1 voices/b.wav faces/b.jpg\n", "repeat"),
        (b"1 voices/a.wav faces/\xff.jpg\n", "UnicodeDecodeError"),
        (b"1 voices/a.wav\n", "English_test.txt:1"),
    ):
        lst.write_bytes(data)
        with pytest.raises(AvmatchError) as err:
            read_pair_list(lst, "fame")
        one_line(err.value, "English_test.txt", word)


# ------------------------------------------------------------------------------ encoder weights


def _safetensors(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


@pytest.mark.parametrize(
    "data, words",
    [
        # a header claiming a tensor of 2**40 floats in a file of 16 bytes of data
        (
            _safetensors(
                {"w": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}}, b"\0" * 16
            ),
            ["not a weights file"],
        ),
        # a header length of 2**62 bytes
        (struct.pack("<Q", 2**62) + b"{}", ["not a weights file"]),
        # offsets that overlap / run backwards
        (
            _safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, b"\0" * 16),
            ["not a weights file"],
        ),
        # a dtype safetensors does not know
        (
            _safetensors({"w": {"dtype": "PICKLE", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16),
            ["not a weights file"],
        ),
        # header not JSON
        (struct.pack("<Q", 5) + b"\x80\x04K.", ["not a weights file"]),
    ],
)
def test_safetensors_weights_with_lying_headers_are_one_line(tmp_path, data, words):
    path = tmp_path / "w.safetensors"
    path.write_bytes(data)
    with pytest.raises(EncoderError) as err:
        from avtrain.encoders.weights import read_state_dict

        read_state_dict(path)
    one_line(err.value, str(path), *words)


def test_safetensors_weights_of_an_integer_dtype_are_refused_by_name(tmp_path):
    """A complete InceptionResnetV1 state dict in safetensors with one parameter stored as int64:
    refused naming the tensor, never cast silently."""
    import torch
    from facenet_pytorch import InceptionResnetV1
    from safetensors.torch import save_file

    from avtrain.encoders import load_encoder

    state = InceptionResnetV1(pretrained=None, classify=False).state_dict()
    state["last_linear.weight"] = torch.zeros_like(state["last_linear.weight"], dtype=torch.int64)
    path = tmp_path / "int.safetensors"
    save_file(state, str(path))
    with pytest.raises(EncoderError) as err:
        load_encoder("facenet_vggface2", weights=path)
    one_line(err.value, "int.safetensors", "last_linear.weight is torch.int64, expected floating point")


def test_store_builder_writes_a_multi_line_reject_reason_as_one_line(tmp_path):
    """A decoder's message with newlines becomes one line in rejects.jsonl, so the builder's own
    store passes the reader's check on control characters."""
    from avtrain.encoders.store import _reject

    row = SimpleNamespace(key="id10000_f0", source="faces/a\nb.jpg")
    reject = _reject(row, "cannot decode\nffmpeg: error\x1b[0m")
    assert reject == {
        "key": "id10000_f0",
        "source": "faces/a b.jpg",
        "reason": "cannot decode ffmpeg: error [0m",
    }
    store = make_store(tmp_path / "store")
    (store / "rejects.jsonl").write_text(json.dumps(reject) + "\n")
    reseal(store)
    assert FeatureStore(store).rejects == [reject]
