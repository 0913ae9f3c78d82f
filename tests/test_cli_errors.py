"""CLI errors a user makes are one line (usage errors included), never a traceback; an empty
tuple list is said out loud."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from helpers import build_shards_args, make_tuples_args, save_random_run, tiny_fit_sets

from avdata.cli import main


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_k_that_is_not_a_number_is_a_usage_error(train_tuples, tmp_path):
    shards = train_tuples.parent / "shards"
    for bad in ("abc", "2-x", "1", "2-11"):
        res = _invoke(*make_tuples_args(shards, tmp_path / "t", split="test", k=bad))
        assert res.exit_code == 2, res.output
        assert "Invalid value for '--k'" in res.output and "Traceback" not in res.output
        assert [line for line in res.output.splitlines() if line.startswith("Error:")], res.output
    assert not (tmp_path / "t").exists()


def test_empty_list_is_a_warning_and_strict_makes_it_an_error(train_tuples, tmp_path):
    shards = train_tuples.parent / "shards"

    def args(out, *extra):
        return make_tuples_args(shards, out, *extra, split="test", k="2,10", direction="a2v")

    res = _invoke(*args(tmp_path / "warn"))
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: matching_test_a2v_k10 is empty: ")
    assert "eligible negative identities < k-1 = 9" in warnings[0]  # the reason, not just the fact
    assert "1 empty list(s)" in res.output
    res = _invoke(*args(tmp_path / "strict", "--strict"))
    assert res.exit_code == 1
    assert res.output.splitlines()[-1].startswith("Error: ") and "(--strict)" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("out_kind", ["dangling symlink", "below a file"])
@pytest.mark.parametrize("command", ["build-shards", "make-tuples", "fit", "export"])
def test_an_out_that_cannot_be_a_directory_is_one_line(command, out_kind, train_tuples, tmp_path):
    """Issue #20 item 19: a dangling-symlink --out gave a traceback (mkdir: FileExistsError). (An
    --out that is a file is refused by Click's own check.)"""
    from avtrain.cli import main as avtrain_main

    root = train_tuples.parent
    if out_kind == "dangling symlink":
        out = tmp_path / "out"
        out.symlink_to(tmp_path / "gone")
        phrase = f"--out {out}: a dangling symlink (to {tmp_path / 'gone'}), not a directory"
    else:
        (tmp_path / "f").write_text("a file\n")
        out = tmp_path / "f" / "out"
        phrase = f"--out {out}: {tmp_path / 'f'} is not a directory"
    cli, args = {
        "build-shards": (main, build_shards_args(root / "corpus", out)),
        "make-tuples": (main, make_tuples_args(root / "shards", out, "--no-tuple-shards")),
        "fit": (
            avtrain_main,
            ["fit", "--shards", train_tuples, "--out", out, "--epochs", 1, *tiny_fit_sets(1)],
        ),
        "export": (avtrain_main, ["export", "--run", save_random_run(tmp_path / "run"), "--out", out]),
    }[command]
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == 1, (res.output, res.exception)
    lines = res.output.strip().splitlines()
    assert lines and lines[-1] == f"Error: {phrase}", (res.output, res.exception)
    assert "Traceback" not in res.output and not (tmp_path / "gone").exists()
