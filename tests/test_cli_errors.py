"""CLI errors a user makes are one line (usage errors included), never a traceback; an empty
tuple list is said out loud."""

from __future__ import annotations

from click.testing import CliRunner
from helpers import make_tuples_args

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
