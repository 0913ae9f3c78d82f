"""Checkpoints: checksum beside every file, verified loads; damaged, foreign and malicious
files are refused in one line by evaluate, fit --resume and avdata manifest verify."""

from __future__ import annotations

import io
import itertools
import pickle
import re
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import tiny_fit_sets

from avdata.io import sha256_file
from avtrain.cli import main as avtrain_main
from avtrain.run.checkpoint import (
    BEST,
    LAST,
    MAX_CHECKPOINT_BYTES,
    MAX_ZIP_DIRECTORY_BYTES,
    CheckpointError,
    UnsafeCheckpointError,
    checksum_path,
    load_checkpoint,
    load_run,
    save_checkpoint,
)
from avtrain.run.config import TrainConfig
from avtrain.train.loop import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(train_tuples, tmp_path_factory):
    run = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = TrainConfig(epochs=1, batch_size=8, workers=0, threads=1, seed=2, max_steps_per_epoch=2)
    fit(cfg, train_tuples, run, progress=False)
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


class Boom:
    """Unpickling this writes a marker file: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled!"))


def _damage(kind: str, path: Path, marker: Path) -> str:
    """Damage RUN/checkpoint.pt; returns a phrase the one-line error must contain."""
    if kind == "flipped":  # 200 bytes flipped in the middle, checksum file untouched
        data = bytearray(path.read_bytes())
        mid = len(data) // 2
        for i in range(mid, mid + 200):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
        return "does not match checkpoint.pt.sha256"
    if kind == "no_checksum":
        checksum_path(path).unlink()
        return "no checksum file checkpoint.pt.sha256"
    if kind == "empty":
        path.write_bytes(b"")
        return "empty file"
    # the rest also rewrite the checksum, as someone who replaced the file would
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
        phrase = "truncated or corrupt"
    elif kind == "foreign":  # a valid torch file, but not a run checkpoint
        torch.save({"weights": torch.zeros(3)}, path)
        phrase = "not an avtrain checkpoint"
    elif kind == "text":
        path.write_text("hello, not a checkpoint\n")
        phrase = "truncated or corrupt"
    elif kind == "malicious":  # a torch zip whose data.pkl carries a __reduce__ payload
        torch.save({"config": {}, "model": {}, "epoch": 1, "step": 1}, path)
        with zipfile.ZipFile(path) as z:
            members = {n: z.read(n) for n in z.namelist()}
        name = next(n for n in members if n.endswith("data.pkl"))
        members[name] = pickle.dumps(
            {"config": Boom(str(marker)), "model": {}, "epoch": 1, "step": 1}, protocol=2
        )
        with zipfile.ZipFile(path, "w") as z:
            for n, data in members.items():
                z.writestr(n, data)
        phrase = "refusing a checkpoint with pickled objects"
    else:
        raise AssertionError(kind)
    checksum_path(path).write_text(f"{sha256_file(path)}  {path.name}\n")
    return phrase


KINDS = ["flipped", "no_checksum", "empty", "truncated", "foreign", "text", "malicious"]


def test_save_writes_a_checksum_and_load_verifies_it(trained):
    side = checksum_path(trained / LAST)
    assert side.read_text() == f"{sha256_file(trained / LAST)}  {LAST}\n"
    state = load_checkpoint(trained / LAST)
    assert state["epoch"] == 1 and "model" in state
    model, _, cfg = load_run(trained, "cpu")
    assert cfg.seed == 2 and not model.training


def test_a_swap_in_progress_still_loads(trained, tmp_path):
    """The checksum file names the old and the new hash while save_checkpoint swaps files, so
    a run killed between the two renames resumes; any other file is still refused."""
    run = _copy(trained, tmp_path)
    state = load_checkpoint(run / LAST)
    old = sha256_file(run / LAST)
    state["epoch"] = 7
    new = save_checkpoint(tmp_path / "new.pt", state)
    checksum_path(run / LAST).write_text(f"{old}  {LAST}\n{new}  {LAST}\n")  # as during the swap
    assert load_checkpoint(run / LAST)["epoch"] == 1
    shutil.copy(tmp_path / "new.pt", run / LAST)
    assert load_checkpoint(run / LAST)["epoch"] == 7


@pytest.mark.parametrize("kind", KINDS)
def test_bad_checkpoint_is_one_line_everywhere(trained, train_tuples, tmp_path, kind):
    from avdata.cli import main as avdata_main

    run = _copy(trained, tmp_path)
    res = CliRunner().invoke(
        avdata_main, ["manifest", "update", str(run), "--out", str(tmp_path / "good.json")]
    )
    assert res.exit_code == 0, res.output
    marker = tmp_path / "pwned"
    phrase = _damage(kind, run / LAST, marker)
    with pytest.raises((CheckpointError, UnsafeCheckpointError), match=phrase):
        load_checkpoint(run / LAST)
    shards = train_tuples.parent / "shards"
    runs = {
        "evaluate": ["evaluate", "--run", str(run), "--shards", str(shards), "--tuples", str(train_tuples)],
        "resume": [
            "fit",
            "--shards",
            str(train_tuples),
            "--out",
            str(run),
            "--resume",
            "--epochs",
            "1",
            "--no-progress",
            "--seed",
            "2",
            *tiny_fit_sets(2),
        ],
    }
    before = sha256_file(run / LAST)
    for name, args in runs.items():
        res = CliRunner().invoke(avtrain_main, args)
        assert res.exit_code == 1, (name, res.output)
        assert res.output.startswith("Error: ") and res.output.count("\n") == 1, (name, res.output)
        assert phrase in res.output, (name, res.output)
    assert sha256_file(run / LAST) == before  # a refused resume wrote nothing
    for args in (
        ["verify", str(run), "--against", str(tmp_path / "good.json")],
        ["update", str(run), "--out", str(tmp_path / "m.json")],
    ):
        res = CliRunner().invoke(avdata_main, ["manifest", *args])
        assert res.exit_code == 1 and res.output.count("\n") == 1 and phrase in res.output, res.output
    assert not marker.exists()


def test_evaluate_best_without_validation_says_so(trained, train_tuples):
    res = CliRunner().invoke(
        avtrain_main,
        [
            "evaluate",
            "--run",
            str(trained),
            "--checkpoint",
            BEST.split(".")[0],
            "--shards",
            str(train_tuples.parent / "shards"),
            "--tuples",
            str(train_tuples),
        ],
    )
    assert res.exit_code == 1 and "no best.pt" in res.output and res.output.count("\n") == 1


def _with(key, value):
    return lambda state: state | {key: value(state) if callable(value) else value}


def _group(name, **changes):
    return lambda s: s[name] | {"param_groups": [s[name]["param_groups"][0] | changes]}


# a field of a checkpoint saved with a matching checksum: (change, phrase of the one-line error)
BAD_FIELDS = {
    "step_text": (_with("step", "abc"), "step is 'abc', expected an integer >= 0"),
    "epoch_negative": (_with("epoch", -1), "epoch is -1"),
    "epoch_past_the_run": (_with("epoch", 99), "epoch 99 is past the run's 1 epochs"),
    "step_past_the_run": (_with("step", 10**30), "is past the run's 2 steps"),
    "step_bool": (_with("step", True), "step is True"),
    "model_not_tensors": (_with("model", {"w": 1}), "model is dict, expected a dict of named tensors"),
    "config_not_dict": (_with("config", [1]), "config is list"),
    "lr_plan_text": (_with("lr_plan", [[0, "a", 2]]), "lr_plan[0] is not"),
    "best_other_metric": (
        _with("best", {"metric": "x", "value": None, "epoch": None}),
        "best.metric 'x' is not the run's",
    ),
    "best_epoch_ahead": (_with("best", {"metric": "m", "value": 0.5, "epoch": 7}), "best.epoch is 7"),
    "val_text": (_with("val", {"m": "high"}), "val is dict, expected a dict of metric values"),
    "rng_short": (
        _with("torch_rng", torch.zeros(3, dtype=torch.uint8)),
        "cannot resume from it: torch_rng holds 3 bytes",
    ),
    "rng_float": (_with("torch_rng", torch.zeros(5056)), "torch_rng is Tensor, expected a 1-d uint8"),
    "sched_attribute": (
        _with("sched", lambda s: s["sched"] | {"optimizer": 1}),
        "cannot resume from it: sched has an unknown field 'optimizer'",
    ),
    "sched_step_text": (
        _with("sched", lambda s: s["sched"] | {"last_epoch": "x"}),
        "cannot resume from it: sched.last_epoch is a str",
    ),
    "sched_other_step": (
        _with("sched", lambda s: s["sched"] | {"last_epoch": 5}),
        "cannot resume from it: sched.last_epoch 5",
    ),
    "opt_lr_text": (
        _with("opt_g", _group("opt_g", lr="abc")),
        "cannot resume from it: opt_g: param_groups[0].lr is not a number",
    ),
    "opt_betas": (
        _with("opt_d", _group("opt_d", betas=("a", 1))),
        "cannot resume from it: opt_d: param_groups[0].betas",
    ),
    "opt_moments": (
        _with(
            "opt_d",
            lambda s: (
                s["opt_d"]
                | {
                    "state": {
                        0: {
                            "step": torch.tensor(1.0),
                            "exp_avg": torch.zeros(3),
                            "exp_avg_sq": torch.zeros(3),
                        }
                    }
                }
            ),
        ),
        "cannot resume from it: opt_d: state[0] moments are not of the parameter's shape",
    ),
    "opt_betas_tensor": (
        _with("opt_d", _group("opt_d", betas=(torch.tensor([0.9, 0.999]), 0.999))),
        "cannot resume from it: opt_d: param_groups[0].betas",
    ),
    "sched_tensor": (
        _with("sched", lambda s: s["sched"] | {"base_lrs": torch.tensor([5e-3, 1.0])}),
        "cannot resume from it: sched.base_lrs is a Tensor, not a plain value",
    ),
    "opt_no_groups": (_with("opt_g", {"state": {}}), "opt_g is dict, expected an optimizer state"),
    "no_optimizer": (
        lambda s: {k: v for k, v in s.items() if k != "opt_g"},
        "cannot resume from it: no opt_g",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_bad_field_with_a_matching_checksum_is_one_line(trained, train_tuples, tmp_path, case):
    """#20 item 20: every field of a checkpoint is checked by type and range (a checkpoint saved with
    its checksum, as one who crafted it would), so no command gets a traceback from it later."""
    change, phrase = BAD_FIELDS[case]
    run = _copy(trained, tmp_path)
    state = change(load_checkpoint(run / LAST))
    if case == "best_epoch_ahead":
        state["best"]["metric"] = TrainConfig.from_dict(state["config"]).select_metric
    save_checkpoint(run / LAST, state)
    before = sha256_file(run / LAST)
    resume = [
        "fit", "--shards", str(train_tuples), "--out", str(run), "--resume", "--epochs", "2",
        "--no-progress", "--seed", "2", *tiny_fit_sets(2),
    ]  # fmt: skip
    res = CliRunner().invoke(avtrain_main, resume)
    assert res.exit_code == 1 and res.output.startswith("Error: "), res.output
    assert res.output.count("\n") == 1 and phrase in res.output and str(run / LAST) in res.output, res.output
    assert sha256_file(run / LAST) == before  # a refused resume wrote nothing
    if "cannot resume" in phrase:
        return  # a field only a resume reads: the weights still load for evaluate/embed
    for args in (
        [
            "evaluate",
            "--run",
            str(run),
            "--shards",
            str(train_tuples.parent / "shards"),
            "--tuples",
            str(train_tuples),
        ],
        ["export", "--run", str(run), "--out", str(tmp_path / "export")],
    ):
        res = CliRunner().invoke(avtrain_main, args)
        assert res.exit_code == 1 and res.output.count("\n") == 1 and phrase in res.output, (args, res.output)


# --------------------------------------------------------------------------- #20 item 13: zip bombs


def _zip_bomb(path: Path, unpacked: int) -> None:
    """A torch checkpoint whose one tensor is ``unpacked`` zero bytes, deflated (~1000:1), with
    a matching checksum file: torch.load inflates it in memory (the pickle names the full size)."""
    n = 65537  # pickled as a 4-byte int (opcode J), so the size can be patched in place
    buf = io.BytesIO()
    torch.save({"config": {}, "model": {"w": torch.zeros(n, dtype=torch.uint8)}, "epoch": 1, "step": 0}, buf)
    with zipfile.ZipFile(buf) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    pkl = next(k for k in members if k.endswith("data.pkl"))
    old = b"J" + struct.pack("<i", n)
    assert members[pkl].count(old) == 2  # the storage's size and the tensor's shape
    members[pkl] = members[pkl].replace(old, b"J" + struct.pack("<i", unpacked))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name, blob in members.items():
            if name.endswith("/data/0"):
                with z.open(name, "w", force_zip64=True) as f:
                    for _ in range(unpacked >> 20):
                        f.write(bytes(1 << 20))
            else:
                z.writestr(name, blob)
    checksum_path(path).write_text(f"{sha256_file(path)}  {path.name}\n")


def test_decompression_bomb_is_refused_before_torch_reads_it(trained, train_tuples, tmp_path):
    run = _copy(trained, tmp_path)
    _zip_bomb(run / LAST, MAX_CHECKPOINT_BYTES + (16 << 20))
    assert (run / LAST).stat().st_size < 4 << 20  # a few MB on disk
    phrase = "its zip records unpack to 272 MiB, more than an avtrain checkpoint holds (256 MiB)"
    with pytest.raises(UnsafeCheckpointError, match=re.escape(phrase)):
        load_checkpoint(run / LAST)
    shards = train_tuples.parent / "shards"
    for args in (
        ["evaluate", "--run", str(run), "--shards", str(shards), "--tuples", str(train_tuples)],
        ["embed", "--run", str(run), "--faces", str(tmp_path), "--out", str(tmp_path / "e.npz")],
    ):
        res = CliRunner().invoke(avtrain_main, args)
        assert res.exit_code == 1 and res.output.count("\n") == 1 and phrase in res.output, res.output


def test_zip_directory_bomb_is_refused_unread(trained, tmp_path):
    """An end record naming a directory of millions of entries: zipfile would build an object for
    each; refused from the end record alone."""
    run = _copy(trained, tmp_path)
    with zipfile.ZipFile(run / LAST, "w") as z:
        for i in range(MAX_ZIP_DIRECTORY_BYTES // 40):
            z.writestr(f"archive/data/{i}", b"")
    checksum_path(run / LAST).write_text(f"{sha256_file(run / LAST)}  {LAST}\n")
    with pytest.raises(UnsafeCheckpointError, match="its zip directory is 1.[0-9] MiB, more than"):
        load_checkpoint(run / LAST)


def test_checkpoint_caps_leave_headroom_for_the_largest_model():
    """MAX_CHECKPOINT_BYTES / MAX_ZIP_DIRECTORY_BYTES are >= 4x what a fit checkpoint of the largest
    model the settings allow holds (weights and two Adam moments per parameter)."""
    from avtrain.methods import build_method
    from avtrain.methods.aml.model import MATCHING_HEADS
    from avtrain.run.checkpoint import _zip_directory_bytes

    largest, biggest = None, 0
    for task, k, head, shared in itertools.product(
        ("matching", "verification", "retrieval"), (2, 10), MATCHING_HEADS, (True, False)
    ):
        try:
            cfg = TrainConfig.from_dict(
                {"task": task, "k": k, "model.head": head, "model.shared_generator": shared}
            )
        except ValueError:  # a head only matching has
            continue
        sd = build_method(cfg).state_dict()
        size = sum(t.numel() * t.element_size() for t in sd.values())
        if size > biggest:
            largest, biggest = sd, size
    moments = [{k: t.clone() for k, t in largest.items()} for _ in range(2)]
    buf = io.BytesIO()
    torch.save({"model": largest, "opt_g": {"state": dict(enumerate(moments))}}, buf)
    assert 4 * len(buf.getvalue()) <= MAX_CHECKPOINT_BYTES, len(buf.getvalue())
    assert 4 * _zip_directory_bytes(buf, len(buf.getvalue())) <= MAX_ZIP_DIRECTORY_BYTES


def test_package_load_model_takes_checkpoint(trained, tmp_path):
    """#20 item 22: avtrain.load_model(..., checkpoint=) as the CLIs' --checkpoint (last, best, a path)."""
    import avtrain

    run = _copy(trained, tmp_path)
    save_checkpoint(run / BEST, load_checkpoint(run / LAST) | {"step": 1})
    assert avtrain.load_model(run).source["step"] == 2
    assert avtrain.load_model(run, checkpoint="best").source["step"] == 1
    assert avtrain.load_model(run, "cpu", None, str(run / BEST)).source["step"] == 1
