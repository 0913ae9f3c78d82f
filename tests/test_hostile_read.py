"""Hostile and faulty shard / tuple directories (issue #11, read side).

Shard and tuple directories are shared between labs: every name read from them is
untrusted. Each test builds a real directory (the conftest's synthetic shards and tuple
shards), tampers with it the way an attacker or a broken copy would, and checks that
avmatch refuses it with one line naming what it refused, and runs or unpickles nothing.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import fifo_that_never_blocks, make_tuples_args, one_line_error, save_random_run, tiny_fit_sets

from avdata.cli import main as avdata_main
from avdata.errors import AvmatchError, UnsafeInputError
from avdata.io import sha256_file
from avtrain.cli import main as avtrain_main

K2 = "matching_train_a2v_k2"


class Boom:
    """Unpickling this writes a marker file: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled!"))


def run(main, *args):
    return CliRunner().invoke(main, [str(a) for a in args])


def fit(tuples_dir, out, workers=0, *extra):
    return run(
        avtrain_main,
        "fit",
        "--shards",
        tuples_dir,
        "--out",
        out,
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--set",
        "batch_size=4",
        "--set",
        f"workers={workers}",
        "--set",
        "max_steps_per_epoch=1",
        "--no-progress",
        *extra,
    )


def rewrite_tar(path: Path, edit=None, extra=()):
    """Rewrite a tar in place: members through ``edit(info, data) -> (info, data) | None``
    (None drops it), then ``extra`` (TarInfo, bytes) members appended."""
    with tarfile.open(path) as tin:
        members = [(m, tin.extractfile(m).read() if m.isfile() else b"") for m in tin]
    tmp = path.with_name(path.name + ".new")
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tout:
        for info, data in members:
            if edit:
                kept = edit(info, data)
                if kept is None:
                    continue
                info, data = kept
                info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tout.addfile(info, io.BytesIO(data) if info.isfile() else None)
    tmp.replace(path)


def member(
    name: str, data: bytes = b"", kind=tarfile.REGTYPE, link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def object_npy(marker: Path) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([Boom(str(marker))], dtype=object), allow_pickle=True)
    return buf.getvalue()


def reseal(tuples: Path, shard: str):
    """Make manifest.json and sizes.json agree with a tampered tuple shard again (an attacker
    can rewrite both), so only the checks under test can notice."""
    man = json.loads((tuples / "manifest.json").read_text())
    man["shards"][shard]["sha256"] = sha256_file(tuples / shard)
    (tuples / "manifest.json").write_text(json.dumps(man, indent=1, sort_keys=True) + "\n")


@pytest.fixture
def tuples(train_tuples, tmp_path):
    """A private copy of the session's tuple directory (matching train a2v k=2, 16 per shard)."""
    dst = tmp_path / "tuples"
    shutil.copytree(train_tuples, dst)
    return dst


@pytest.fixture
def shards(train_tuples, tmp_path):
    """A private copy of the item shard directory the tuples were drawn from."""
    dst = tmp_path / "shards"
    shutil.copytree(train_tuples.parent / "shards", dst)
    return dst


def first_shard(tuples: Path) -> str:
    return min(json.loads((tuples / "sizes.json").read_text()))


def test_error_classes():
    from avdata.reader import UnsafeShardError

    assert issubclass(UnsafeShardError, UnsafeInputError) and issubclass(UnsafeShardError, AvmatchError)
    assert issubclass(UnsafeShardError, ValueError)  # callers that caught the old class still do


# ---- 1. names in sizes.json: never URLs, never outside the directory


def test_pipe_name_in_sizes_json_runs_no_command(tuples, tmp_path, monkeypatch):
    """The issue's exploit: webdataset ran `pipe:` shard names as shell commands."""
    name = f"pipe:touch PWNED; cat shards/{K2}-000000.tar #/{K2}-000001.tar"
    sizes = json.loads((tuples / "sizes.json").read_text())
    (tuples / "sizes.json").write_text(json.dumps(sizes | {name: 16}))
    monkeypatch.chdir(tuples)
    line = one_line_error(fit(".", tmp_path / "run"))
    assert not (tuples / "PWNED").exists()
    assert "pipe:touch PWNED" in line and "refusing the name" in line


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "scheme"])
def test_names_leaving_the_tuple_dir_are_refused(how, tuples, tmp_path):
    outside = tmp_path / "elsewhere" / f"{K2}-000000.tar"
    outside.parent.mkdir()
    shutil.copy(tuples / first_shard(tuples), outside)
    if how == "dotdot":
        name = f"../elsewhere/{K2}-000000.tar"
    elif how == "absolute":
        name = str(outside)
    elif how == "symlink":
        name = f"shards/{K2}-000099.tar"
        os.symlink(outside, tuples / name)
    else:
        name = f"file:{outside}"
    (tuples / "sizes.json").write_text(json.dumps({name: 16}))
    line = one_line_error(fit(tuples, tmp_path / "run"))
    assert repr(name) in line, line


# ---- 2. tar members: names, types, pickles, object arrays, refused by name up front

BAD_MEMBERS = {
    "dotdot": member("../x.json", b"{}"),
    "absolute": member("/etc/x.json", b"{}"),
    "symlink": member("evil.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd"),
    "hardlink": member("evil.jpg", kind=tarfile.LNKTYPE, link="/etc/passwd"),
    "device": member("evil.jpg", kind=tarfile.CHRTYPE),
    "directory": member("evil", kind=tarfile.DIRTYPE),
    "pickle": member("evil.pyd", pickle.dumps(1)),
}


@pytest.mark.parametrize("kind", sorted(BAD_MEMBERS))
def test_bad_item_shard_member_is_refused_by_make_tuples(kind, shards, tmp_path):
    info, data = BAD_MEMBERS[kind]
    tar = min((shards / "train").glob("face-*.tar"))
    rewrite_tar(tar, extra=[(info, data)])
    res = run(avdata_main, *make_tuples_args(shards, tmp_path / "t", "--no-tuple-shards"))
    line = one_line_error(res)
    assert repr(info.name) in line and str(tar) in line, line


@pytest.mark.parametrize("kind", ["dotdot", "symlink", "pickle"])
def test_readers_refuse_bad_members(kind, shards):
    from avdata.reader import UnsafeShardError, index_shard, iter_samples, shard_urls

    info, data = BAD_MEMBERS[kind]
    tar = min((shards / "train").glob("audio-*.tar"))
    rewrite_tar(tar, extra=[(info, data)])
    for read in (lambda: index_shard(tar), lambda: list(iter_samples(shard_urls(shards, "train", "audio")))):
        with pytest.raises(UnsafeShardError, match="refusing"):
            read()


def test_shard_urls_refuse_a_symlink_out(shards, tmp_path):
    from avdata.reader import UnsafeShardError, shard_urls

    outside = tmp_path / "outside.tar"
    shutil.copy(min((shards / "train").glob("audio-*.tar")), outside)
    os.symlink(outside, shards / "train" / "audio-000099.tar")
    with pytest.raises(UnsafeShardError, match="symlink leads outside"):
        shard_urls(shards, "train", "audio")


def test_iter_samples_refuses_urls():
    from avdata.reader import UnsafeShardError, iter_samples

    with pytest.raises(UnsafeShardError, match="not a local file"):
        list(iter_samples(["pipe:touch PWNED"]))
    assert not Path("PWNED").exists()


def test_object_array_in_item_shard_is_named(shards, tmp_path):
    marker = tmp_path / "pwned"
    tar = min((shards / "train").glob("audio-*.tar"))
    victim = []

    def edit(info, data):
        if info.name.endswith(".npy") and not victim:
            victim.append(info.name)
            return info, object_npy(marker)
        return info, data

    rewrite_tar(tar, edit)
    res = run(avdata_main, *make_tuples_args(shards, tmp_path / "t"))
    line = one_line_error(res)
    assert victim[0] in line and str(tar) in line and "object array" in line, line
    assert not marker.exists()


# ---- 3. check-tuples looks inside the tuple shards and at sizes.json


def _tamper(tuples: Path, how: str, tmp_path: Path) -> str:
    """Tamper with the tuple dir; return a phrase check-tuples must print."""
    shard = first_shard(tuples)
    if how == "pipe_name":
        sizes = json.loads((tuples / "sizes.json").read_text())
        (tuples / "sizes.json").write_text(json.dumps(sizes | {f"pipe:touch PWNED #/{K2}-000001.tar": 16}))
        return "pipe:touch PWNED"
    if how == "count":
        sizes = json.loads((tuples / "sizes.json").read_text())
        (tuples / "sizes.json").write_text(json.dumps(sizes | {shard: sizes[shard] + 50}))
        return "sizes.json: does not match"
    if how == "swapped_tuple":  # a sample's .json no longer matches its index line

        def edit(info, data):
            if info.name.endswith(".json"):
                t = json.loads(data)
                t["label"] = 1 - t["label"]
                return info, json.dumps(t, sort_keys=True, separators=(",", ":")).encode()
            return info, data

        rewrite_tar(tuples / shard, edit)
        reseal(tuples, shard)
        return ".json member differs"
    info, data = {
        "pickle": member(f"{K2}-0000000.extra.pyd", pickle.dumps(Boom(str(tmp_path / "pwned")))),
        "dotdot": member("../../x.cls", b"1"),
        "symlink": member(f"{K2}-0000000.g1.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd"),
    }[how]
    rewrite_tar(tuples / shard, extra=[(info, data)])
    reseal(tuples, shard)
    return repr(info.name)


@pytest.mark.parametrize("how", ["pipe_name", "count", "swapped_tuple", "pickle", "dotdot", "symlink"])
def test_check_tuples_catches_tampered_tuple_dir(how, tuples, train_tuples, tmp_path):
    want = _tamper(tuples, how, tmp_path)
    res = run(avdata_main, "check-tuples", tuples, "--shards", train_tuples.parent / "shards")
    assert res.exit_code == 1, res.output
    assert want in res.output, res.output
    assert not (tmp_path / "pwned").exists() and not Path("PWNED").exists()


def test_check_tuples_passes_an_untouched_dir(train_tuples):
    res = run(avdata_main, "check-tuples", train_tuples, "--shards", train_tuples.parent / "shards")
    assert res.exit_code == 0 and "all tuple checks passed" in res.output, res.output


# ---- 14. one line, not a traceback, for avtrain fit on a refused tuple shard


def test_fit_refuses_pickle_member_before_workers_in_one_line(tuples, tmp_path):
    marker = tmp_path / "pwned"
    shard = first_shard(tuples)
    rewrite_tar(tuples / shard, extra=[member(f"{K2}-0000003.extra.pyd", pickle.dumps(Boom(str(marker))))])
    line = one_line_error(fit(tuples, tmp_path / "run", workers=1))
    assert "refusing a pickle-type member" in line and shard in line
    assert not marker.exists()


def test_fit_names_an_object_array_in_one_line(tuples, tmp_path):
    marker = tmp_path / "pwned"
    shard = first_shard(tuples)
    rewrite_tar(tuples / shard, lambda i, d: (i, object_npy(marker)) if i.name.endswith(".q.npy") else (i, d))
    line = one_line_error(fit(tuples, tmp_path / "run", workers=1))
    assert "object array" in line and f"{K2}-0000000.q.npy" in line and shard in line, line
    assert not marker.exists()


def test_fit_undecodable_member_in_a_worker_is_one_line(tuples, tmp_path):
    """Streaming the tuple shards, a JPEG that does not decode is only found by a DataLoader
    worker; the error still reaches the user as one line naming the shard and member. (Read by
    index, every item is checked before training: test_fit_by_index_refuses_bad_items_up_front.)"""
    shard = first_shard(tuples)
    (tuples / "sizes.json").write_text(json.dumps({shard: 16}))
    rewrite_tar(tuples / shard, lambda i, d: (i, b"not a jpeg") if i.name.endswith(".g0.jpg") else (i, d))
    line = one_line_error(fit(tuples, tmp_path / "run", 1, "--tuple-shards"))
    assert shard in line and ".g0.jpg" in line and "cannot decode" in line, line


# ---- 14. make-tuples: --out vs --shards, and the shard manifest


def test_make_tuples_refuses_out_equal_to_shards(shards):
    before = {p.name: p.read_bytes() for p in shards.iterdir() if p.is_file()}
    res = run(avdata_main, *make_tuples_args(shards, shards))
    assert "is the shard directory" in one_line_error(res)
    assert {p.name: p.read_bytes() for p in shards.iterdir() if p.is_file()} == before


def test_make_tuples_refuses_out_inside_shards(shards):
    before = {p.relative_to(shards): p.read_bytes() for p in shards.rglob("*") if p.is_file()}
    res = run(avdata_main, *make_tuples_args(shards, shards / "train"))
    assert "inside the shard directory" in one_line_error(res)
    assert {p.relative_to(shards): p.read_bytes() for p in shards.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]"])
def test_make_tuples_refuses_empty_or_unreadable_shard_manifest(content, shards, tmp_path):
    (shards / "manifest.json").write_text(content)
    res = run(avdata_main, *make_tuples_args(shards, tmp_path / "t"))
    line = one_line_error(res)
    assert "manifest.json" in line and "build-shards" in line, line
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("name", ["../../outside.jsonl", "index/../../x.jsonl", "pipe:cat x #.jsonl"])
def test_names_in_a_tuple_manifest_are_refused(name, tuples, train_tuples):
    man = json.loads((tuples / "manifest.json").read_text())
    entry = next(iter(man["files"].values()))
    man["files"][name] = entry
    (tuples / "manifest.json").write_text(json.dumps(man))
    line = one_line_error(
        run(avdata_main, "check-tuples", tuples, "--shards", train_tuples.parent / "shards")
    )
    assert repr(name) in line, line
    # make-tuples adding to the same directory reads that manifest too
    line = one_line_error(
        run(
            avdata_main,
            *make_tuples_args(train_tuples.parent / "shards", tuples, task="retrieval", split="test"),
        )
    )
    assert repr(name) in line


def test_import_veriflist_refuses_out_equal_to_shards(shards, tmp_path):
    lst = tmp_path / "veriflist_x.txt"
    lst.write_text("id,voice-speaker-id,face-speaker-id,label,voice-path,face-path\n")
    line = one_line_error(run(avdata_main, "import-veriflist", lst, "--shards", shards, "--out", shards))
    assert "is the shard directory" in line


# ---- issue #20 items 3, 4: every file read from a shard or tuple directory is a regular file
# inside it (avdata.untrusted.open_inside): a FIFO is refused, never waited on; a link to
# /dev/zero or out of the directory is refused, never read; a missing one is one line


def _commands(shards: Path, tuples: Path, tmp_path: Path) -> dict[str, list]:
    """CLI argv (avdata or avtrain main, args) of every reader of the two directories."""
    run_dir = save_random_run(tmp_path / "run")
    fit_args = ["fit", "--shards", tuples, "--out", tmp_path / "r", "--epochs", 1, *tiny_fit_sets(1)]
    return {
        "make-tuples": [avdata_main, *make_tuples_args(shards, tmp_path / "t", "--no-tuple-shards")],
        "check-tuples": [avdata_main, "check-tuples", tuples, "--shards", shards],
        "manifest update": [avdata_main, "manifest", "update", shards, "--out", tmp_path / "m.json"],
        "fit": [avtrain_main, *fit_args],
        "fit --items": [avtrain_main, *fit_args, "--items", shards],
        "fit --val-tuples": [avtrain_main, *fit_args, "--val-tuples", tuples, "--val-shards", shards],
        "evaluate": [
            avtrain_main,
            *("evaluate", "--run", run_dir, "--shards", shards, "--tuples", tuples, "--device", "cpu"),
        ],
    }


LIST = f"index/{K2}.jsonl"
READS = [  # (directory, file, command): every file read from a shared directory, by each reader
    ("shards", "manifest.json", "make-tuples"),
    ("shards", "sizes.json", "make-tuples"),
    ("shards", "splits.csv", "make-tuples"),
    ("shards", "splits.csv", "check-tuples"),
    ("shards", "splits.csv", "manifest update"),
    ("shards", "rejects.jsonl", "manifest update"),
    ("tuples", "manifest.json", "check-tuples"),
    ("tuples", "sizes.json", "check-tuples"),
    ("tuples", "sizes.json", "fit"),
    ("tuples", "manifest.json", "fit"),
    ("tuples", LIST, "fit"),
    ("shards", "manifest.json", "fit --items"),
    ("shards", "sizes.json", "fit --items"),
    ("tuples", LIST, "check-tuples"),
    ("tuples", LIST, "evaluate"),
    ("tuples", LIST, "fit --val-tuples"),
]


def _refused(res, *phrases: str) -> str:
    """The command failed with one line (check-tuples: its problem lines, then one Error line),
    no traceback, and the output holds every phrase."""
    assert res.exit_code == 1, (res.output, res.exception)
    assert "Traceback" not in res.output and res.output.strip().splitlines()[-1].startswith("Error: ")
    for phrase in phrases:
        assert phrase in res.output, res.output
    return res.output


@pytest.mark.parametrize("where, name, command", READS)
def test_a_fifo_in_a_shared_directory_is_refused_not_waited_on(
    where, name, command, shards, tuples, tmp_path
):
    argv = _commands(shards, tuples, tmp_path)[command]
    path = {"shards": shards, "tuples": tuples}[where] / name
    path.unlink()
    with fifo_that_never_blocks(path) as fifo:
        res = run(*argv)
    assert not fifo["blocked"], f"{command} waited on the FIFO {name}"
    _refused(res, f"{name}: refusing a FIFO, not a regular file")


@pytest.mark.parametrize("where, name, command", READS)
def test_a_link_to_dev_zero_in_a_shared_directory_is_never_read(
    where, name, command, shards, tuples, tmp_path
):
    argv = _commands(shards, tuples, tmp_path)[command]
    path = {"shards": shards, "tuples": tuples}[where] / name
    path.unlink()
    path.symlink_to("/dev/zero")  # read whole, it would exhaust memory
    _refused(res := run(*argv), repr(name), "a symlink leads outside")
    assert "MemoryError" not in res.output


@pytest.mark.parametrize("command", ["check-tuples", "evaluate", "fit --val-tuples"])
def test_an_index_dir_linked_out_of_the_tuple_dir_is_not_read(command, shards, tuples, tmp_path):
    """The index lists are read through the manifest's names: a symlinked index/ leading out of
    the tuple directory is refused like any other name leading out."""
    shutil.move(tuples / "index", tmp_path / "elsewhere")
    (tuples / "index").symlink_to(tmp_path / "elsewhere")
    _refused(run(*_commands(shards, tuples, tmp_path)[command]), repr(LIST), "a symlink leads outside")


@pytest.mark.parametrize("command", ["make-tuples", "check-tuples"])
def test_a_missing_splits_csv_is_one_line(command, shards, tuples, tmp_path):
    (shards / "splits.csv").unlink()
    line = _refused(run(*_commands(shards, tuples, tmp_path)[command]), "splits.csv: missing")
    assert "build-shards" in line


@pytest.mark.parametrize("content", ["", "not,a\nsplits,table\n", "\xff\xfe\x00bad"])
def test_a_malformed_splits_csv_is_one_line(content, shards, tmp_path):
    (shards / "splits.csv").write_bytes(content.encode("latin-1"))
    line = one_line_error(run(avdata_main, *make_tuples_args(shards, tmp_path / "t")))
    assert "splits.csv" in line, line


def test_metadata_files_above_their_cap_are_refused_unread(shards, tmp_path):
    """sizes.json of 65 MiB (sparse: no disk used) is above the 64 MiB metadata cap."""
    from avdata.untrusted import MAX_METADATA_BYTES

    with open(shards / "sizes.json", "r+b") as f:
        f.truncate(MAX_METADATA_BYTES + (1 << 20))
    line = one_line_error(run(avdata_main, *make_tuples_args(shards, tmp_path / "t")))
    assert "sizes.json: refusing a file of 65 MiB, above the 64 MiB cap" in line, line


def test_checked_open_refuses_what_is_not_a_regular_file(tmp_path):
    from avdata.errors import InputError
    from avdata.reader import UnsafeShardError
    from avdata.untrusted import open_inside, read_inside

    (tmp_path / "ok.json").write_bytes(b"{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "inner").symlink_to("ok.json")  # a link that stays inside is followed
    assert read_inside(tmp_path, "ok.json") == read_inside(tmp_path, "inner") == b"{}"
    with open_inside(tmp_path, "ok.json", max_bytes=2) as f:
        assert f.read() == b"{}"
    for name, phrase in [
        ("sub", "refusing a directory"),
        ("../x", "leaves the directory"),
        ("gone.json", "missing"),
    ]:
        with pytest.raises((UnsafeShardError, InputError), match=phrase):
            read_inside(tmp_path, name)
    with pytest.raises(UnsafeShardError, match="above the 1 bytes cap"):
        read_inside(tmp_path, "ok.json", max_bytes=1)


# ---- issue #20 follow-up A: every reader of an index list checks each line's fields
# (avdata.tuples.row_problem, check-tuples' table): a line without them is one line naming the
# file and the line number, never a KeyError half-way through evaluate or fit --val-tuples

VAL_K2, VAL_VER = "index/matching_val_a2v_k2.jsonl", "index/verification_val.jsonl"
BAD_LINES = {  # edit of a list's first tuple -> (list, phrase of the error line)
    "no gallery": (VAL_K2, lambda t: t.pop("gallery"), "missing or malformed field(s) gallery"),
    "label a string": (VAL_K2, lambda t: t.update(label="0"), "missing or malformed field(s) label"),
    "gallery of numbers": (
        VAL_K2,
        lambda t: t.update(gallery=[1, 2]),
        "gallery and gallery_identities must be lists of strings",
    ),
    "label off the gallery": (VAL_K2, lambda t: t.update(label=2), "label 2 is not a gallery position 0..1"),
    "unknown direction": (VAL_K2, lambda t: t.update(direction="x2y"), "direction 'x2y' is not a2v or v2a"),
    "not an object": (VAL_K2, lambda t: t.clear(), "not a JSON object"),
    "a pair without its face": (
        VAL_VER,
        lambda t: t.update(gallery=[], gallery_identities=[]),
        "not one gallery item labelled 0 or 1 (0 items, label",
    ),
}


@pytest.fixture(scope="module")
def val_tuples(train_tuples, tmp_path_factory):
    """The session's tuple directory plus val lists (matching a2v k=2, verification), index only."""
    dst = tmp_path_factory.mktemp("val_tuples") / "tuples"
    shutil.copytree(train_tuples, dst)
    shards = train_tuples.parent / "shards"
    for task in ("matching", "verification"):
        args = make_tuples_args(shards, dst, "--no-tuple-shards", task=task, split="val", direction="a2v")
        assert (res := run(avdata_main, *args)).exit_code == 0, res.output
    return dst


def reseal_list(tuples: Path, rel: str, edit) -> None:
    """Edit the first line of index list ``rel`` and update its sha256 in manifest.json (an
    attacker can rewrite both), so only the line checks can notice."""
    path = tuples / rel
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    edit(first)
    lines[0] = json.dumps(first if first else [1])
    path.write_text("\n".join(lines) + "\n")
    man = json.loads((tuples / "manifest.json").read_text())
    man["files"][rel]["sha256"] = sha256_file(path)
    (tuples / "manifest.json").write_text(json.dumps(man, indent=1, sort_keys=True) + "\n")


@pytest.mark.parametrize("command", ["evaluate", "fit --val-tuples", "check-tuples"])
@pytest.mark.parametrize("bad", list(BAD_LINES))
def test_an_index_line_without_its_fields_is_one_line_naming_it(bad, command, val_tuples, shards, tmp_path):
    rel, edit, phrase = BAD_LINES[bad]
    tuples = tmp_path / "tuples"
    shutil.copytree(val_tuples, tuples)
    reseal_list(tuples, rel, edit)
    res = run(*_commands(shards, tuples, tmp_path)[command])
    where = f"{rel}: line 1: " if command == "check-tuples" else f"{rel}:1: "
    _refused(res, where + phrase)


# ---- issue #20 follow-up B: every file of a run directory read by `manifest update RUN` and
# `avtrain report` (config.yaml, log.jsonl, metrics.json, embeddings.npz) is a regular file
# inside RUN with a cap (avdata.untrusted.open_inside): a FIFO is refused, never waited on; a
# link to /dev/zero is refused, never read; nothing is skipped as if it were absent

LOG_LINES = [{"epoch": 0, "step": 1, "L_total": 2.5, "L_dis": 0.7}, {"epoch": 0, "step": 2, "L_total": 2.0}]
METRICS = {"matching": {"a2v": {"k2": {"value": 0.6, "ci95": [0.5, 0.7], "n": 10}}}}


def _run_dir(path: Path) -> Path:
    """A run directory as fit and evaluate leave it (a random model, no training): checkpoint.pt
    and its sidecar, config.yaml, log.jsonl, metrics.json."""
    from avtrain.run.config import TrainConfig, save_config

    save_random_run(path)
    save_config(
        TrainConfig.from_dict({"task": "matching", "k": 2, "direction": "a2v", "seed": 3}),
        path / "config.yaml",
    )
    (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in LOG_LINES))
    (path / "metrics.json").write_text(json.dumps(METRICS))
    return path


@pytest.fixture(scope="module")
def random_run(tmp_path_factory) -> Path:
    return _run_dir(tmp_path_factory.mktemp("runs") / "run")


@pytest.fixture
def run_dir(random_run, tmp_path) -> Path:
    """A private copy of the module's run directory."""
    shutil.copytree(random_run, tmp_path / "run")
    return tmp_path / "run"


def _run_commands(run_dir: Path, tmp_path: Path) -> dict[str, list]:
    return {
        "manifest update": [avdata_main, "manifest", "update", run_dir, "--out", tmp_path / "m.json"],
        "report": [avtrain_main, "report", "--run", run_dir, "--out", tmp_path / "r.html"],
    }


RUN_READS = [  # (file, command): every file of a run directory, by each reader
    ("config.yaml", "manifest update"),
    ("log.jsonl", "manifest update"),
    ("metrics.json", "manifest update"),
    ("metrics.json", "report"),
    ("log.jsonl", "report"),
    ("embeddings.npz", "report"),
]


@pytest.mark.parametrize("name, command", RUN_READS)
def test_a_fifo_in_a_run_directory_is_refused_not_waited_on(name, command, run_dir, tmp_path):
    argv = _run_commands(run_dir, tmp_path)[command]
    (run_dir / name).unlink(missing_ok=True)
    with fifo_that_never_blocks(run_dir / name) as fifo:
        res = run(*argv)
    assert not fifo["blocked"], f"{command} waited on the FIFO {name}"
    _refused(res, f"{name}: refusing a FIFO, not a regular file")
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("name, command", RUN_READS)
def test_a_link_to_dev_zero_in_a_run_directory_is_never_read(name, command, run_dir, tmp_path):
    (run_dir / name).unlink(missing_ok=True)
    (run_dir / name).symlink_to("/dev/zero")  # read whole, it would exhaust memory
    res = run(*_run_commands(run_dir, tmp_path)[command])
    _refused(res, repr(name), "a symlink leads outside")
    assert "MemoryError" not in res.output


def test_a_compared_run_is_read_like_the_run(run_dir, tmp_path):
    other = _run_dir(tmp_path / "other")
    (other / "metrics.json").unlink()
    with fifo_that_never_blocks(other / "metrics.json") as fifo:
        res = run(avtrain_main, "report", "--run", run_dir, "--compare", other, "--out", tmp_path / "r.html")
    assert not fifo["blocked"]
    _refused(res, "metrics.json: refusing a FIFO, not a regular file")


def test_a_run_manifest_records_a_checked_config(run_dir, tmp_path):
    """config.yaml is read as a training config: as fit wrote it, it is recorded unchanged; one
    of a foreign layout, above its 1 MiB cap, or a nest of YAML aliases (which would expand
    exponentially once printed) is one line naming the file."""
    import yaml

    from avtrain.run.manifest import run_manifest

    m = run_manifest(run_dir)
    assert m["config"] == yaml.safe_load((run_dir / "config.yaml").read_text())
    assert m["final_losses"] == {"L_total": 2.0} and m["metrics"] == METRICS
    cfg = run_dir / "config.yaml"
    text = cfg.read_text()
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
    )
    for content, phrase in [
        (text + "no_such_setting: 1\n", "config.yaml: not a config of avtrain fit (unknown setting"),
        (text.replace("seed: 3", "seed: [1, 2]"), "config.yaml: not a config of avtrain fit (seed"),
        (bomb + "seed: *i\n", "config.yaml: not a YAML config (a YAML alias"),
        ("{", "config.yaml: not a YAML config"),
    ]:
        cfg.write_text(content)
        line = one_line_error(run(*_run_commands(run_dir, tmp_path)["manifest update"]))
        assert phrase in line, line
    from avtrain.run.manifest import MAX_CONFIG_BYTES

    with open(cfg, "r+b") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)
    line = one_line_error(run(*_run_commands(run_dir, tmp_path)["manifest update"]))
    assert "config.yaml: refusing a file of 1 MiB, above the 1 MiB cap" in line, line


def test_a_run_log_is_read_line_by_line_within_its_caps(run_dir, tmp_path):
    """log.jsonl is streamed: a line longer than its 64 KiB cap (no newline for 1 MiB) is skipped
    unparsed, the lines around it are kept; a log above the 256 MiB cap is refused unread."""
    from avtrain.evaluation.report import read_log

    log = run_dir / "log.jsonl"
    with log.open("a") as f:
        f.write('{"step": 3, "L_total": ' + "1" * (1 << 20) + "}\n")
        f.write(json.dumps({"epoch": 0, "step": 4, "L_total": 1.5}) + "\n")
    assert [r["step"] for r in read_log(log)] == [1, 2, 4]
    res = run(*_run_commands(run_dir, tmp_path)["manifest update"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m.json").read_text())["final_losses"] == {"L_total": 1.5}
    from avtrain.evaluation.report import MAX_LOG_BYTES

    with log.open("r+b") as f:
        f.truncate(MAX_LOG_BYTES + 1)  # sparse: nothing written
    for command in ("manifest update", "report"):
        _refused(run(*_run_commands(run_dir, tmp_path)[command]), "log.jsonl: refusing a file of 256 MiB")


# ---- issue #22: fit reads the training list by index; every item it names is checked before
# training (present, of its role's modality, a member of the right type, inside its file), and an
# item store must come from the shards the tuples were drawn from


def _edit_first_row(tuples: Path, edit) -> dict:
    path = tuples / LIST
    lines = path.read_text().splitlines(True)
    row = json.loads(lines[0])
    edit(row)
    path.write_text(json.dumps(row) + "\n" + "".join(lines[1:]))
    return row


def _item_of(shards: Path, key: str):
    from avdata.reader import index_items

    return index_items(shards).set_index("key").loc[key]


@pytest.mark.parametrize("items", ["shards", "tuple shards"])
def test_fit_by_index_names_a_key_missing_from_the_items(items, tuples, shards, tmp_path):
    row = _edit_first_row(tuples, lambda r: r["gallery"].__setitem__(0, "id99999__gone__00001_f0"))
    extra = ["--items", shards] if items == "shards" else []
    line = one_line_error(fit(tuples, tmp_path / "run", 0, *extra))
    assert f"{LIST}: tuple {row['tuple_id']}: item id99999__gone__00001_f0: not in the " in line, line
    assert f"not in the {'item shards' if extra else 'tuple shards'}" in line, line
    assert not (tmp_path / "run").exists()


def test_fit_by_index_names_an_item_of_the_wrong_modality(tuples, shards, tmp_path):
    from avdata.reader import index_items

    items = index_items(shards)
    face = items[(items["split"] == "val") & (items["modality"] == "face")]["key"].iloc[0]
    row = _edit_first_row(tuples, lambda r: r.update(query=face))
    line = one_line_error(fit(tuples, tmp_path / "run", 0, "--items", shards))
    assert f"{LIST}: tuple {row['tuple_id']}: item {face}: face item used as audio" in line, line
    row = _edit_first_row(tuples, lambda r: r.update(query=r["gallery"][0]))
    line = one_line_error(fit(tuples, tmp_path / "run", 0, "--items", shards))
    assert f"item {row['query']}: used both as a query (audio) and in a gallery (face)" in line, line


def _npy(shape, dtype) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros(shape, dtype))
    return buf.getvalue()


@pytest.mark.parametrize(
    "member_kind, phrase",
    [
        ("jpg", "audio item stored as .jpg, expected .npy"),
        ("npy shape", "an array of shape (224, 124) <f4, expected (224, 125) <f4"),
        ("npy dtype", "an array of shape (224, 125) <f8, expected (224, 125) <f4"),
    ],
)
def test_fit_by_index_refuses_bad_items_up_front(member_kind, phrase, tuples, shards, tmp_path):
    """The first tuple's query in the item shards replaced by a member of another type: one line
    naming the list, the tuple and the key, before training (no run directory)."""
    row = json.loads((tuples / LIST).read_text().splitlines()[0])
    it = _item_of(shards, row["query"])
    new = {
        "jpg": (f"{row['query']}.jpg", b"\xff\xd8\xff\xe0 not a spectrogram"),
        "npy shape": (f"{row['query']}.npy", _npy((224, 124), np.float32)),
        "npy dtype": (f"{row['query']}.npy", _npy((224, 125), np.float64)),
    }[member_kind]

    def edit(info, data):
        if info.name == f"{row['query']}.npy":
            info.name = new[0]
            return info, new[1]
        return info, data

    rewrite_tar(shards / it["tar"], edit)
    line = one_line_error(fit(tuples, tmp_path / "run", 0, "--items", shards))
    assert f"{LIST}: tuple {row['tuple_id']}: item {row['query']}: {phrase}" in line, line
    assert not (tmp_path / "run").exists()


def test_an_item_past_the_end_of_its_shard_is_named(tuples, shards):
    """The shards indexed, then the file cut short (a copy still being written, say): the member
    lies past the end of its file; one line naming the list, the tuple and the key."""
    from avdata.items import ItemError
    from avtrain.train.data import locate, open_items, read_training_list

    tl = read_training_list(tuples, K2, "matching", 2, "a2v")
    source = open_items(tuples, shards, tl)
    first = tl.keys[tl.query[0]]
    it = _item_of(shards, first)
    os.truncate(shards / it["tar"], int(it["data_offset"]) + int(it["data_size"]) // 2)
    with pytest.raises(
        ItemError, match=rf"tuple {tl.tuple_ids[0]}: item {first}: its member lies past the end"
    ):
        locate(tl, source)


@pytest.fixture
def store(shards, tmp_path):
    out = tmp_path / "store"
    res = run(avdata_main, "cache", "--shards", shards, "--out", out)
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("how", ["other shards", "items.jsonl edited", "face.npy cut short", "fifo"])
def test_an_item_store_not_of_the_tuples_shards_is_refused_with_how_to_rebuild(
    how, store, shards, tuples, tmp_path
):
    if how == "other shards":  # a store of a rebuilt (other) shard directory
        other = tmp_path / "other"
        shutil.copytree(shards, other)
        (other / "manifest.json").write_text((other / "manifest.json").read_text() + "\n")
        shutil.rmtree(store)
        assert run(avdata_main, "cache", "--shards", other, "--out", store).exit_code == 0
        phrase = "built from other item shards"
    elif how == "items.jsonl edited":
        (store / "items.jsonl").write_text(
            (store / "items.jsonl").read_text().replace('"row": 0', '"row": 1', 1)
        )
        phrase = "items.jsonl differs from its sha256 in manifest.json"
    elif how == "face.npy cut short":
        os.truncate(store / "face.npy", (store / "face.npy").stat().st_size - 1)
        phrase = "face.npy is "
    else:
        (store / "face.npy").unlink()
        with fifo_that_never_blocks(store / "face.npy") as fifo:
            line = one_line_error(fit(tuples, tmp_path / "run", 0, "--items", store))
        assert not fifo["blocked"] and "face.npy: refusing a FIFO" in line, line
        return
    line = one_line_error(fit(tuples, tmp_path / "run", 0, "--items", store))
    assert phrase in line and f"rebuild it: avdata cache --shards SHARDS --out {store}" in line, line
    assert not (tmp_path / "run").exists()


def test_item_shards_other_than_the_tuples_source_are_refused(tuples, shards, tmp_path):
    (shards / "manifest.json").write_text((shards / "manifest.json").read_text() + "\n")
    line = one_line_error(fit(tuples, tmp_path / "run", 0, "--items", shards))
    assert f"{shards}: not the item shards {tuples} was drawn from" in line, line
