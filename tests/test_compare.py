"""avtrain compare: methods trained on the same tuples with the same seeds, one table, paired p-values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_methods import tiny_registered  # noqa: F401  (fixture: the tiny method of test_methods)

from avtrain.cli import main
from avtrain.evaluation.compare import CompareError, paired_p_value, plan_runs


def _mean(o, idx):
    return float(o["correct"][idx].mean())


def test_paired_p_value_identical_runs_and_a_clear_difference():
    same = [{"correct": np.array([1.0, 0.0] * 50)}]
    assert paired_p_value(same, same, _mean, n_boot=200) == 1.0  # every resampled difference is 0
    better = [{"correct": np.ones(100)}]
    worse = [{"correct": np.array([1.0] * 50 + [0.0] * 50)}]
    # every resample of 100 items differs by the share of the worse run's zeros, > 0 always:
    # p = 2 * (1 + 0) / (1 + 200)
    assert paired_p_value(better, worse, _mean, n_boot=200) == pytest.approx(2 / 201)


def test_plan_runs_routes_method_settings_and_refuses_unknown_methods():
    plan = plan_runs(["aml"], 2, ["epochs=3", "aml:loss.beta=1"])
    assert plan.seeds == [0, 1] and plan.sets["aml"] == ["epochs=3", "loss.beta=1"]
    with pytest.raises(CompareError, match="unknown method"):
        plan_runs(["aml", "nope"], 1, [])
    with pytest.raises(CompareError, match="not one of the compared methods"):
        plan_runs(["aml"], 1, ["pins:pins.margin=1"])


def test_compare_two_methods_on_the_same_tuples(tiny_registered, train_tuples, tmp_path, one_torch_thread):  # noqa: F811
    out = tmp_path / "cmp"
    args = ["compare", "--methods", "aml,tiny", "--shards", str(train_tuples), "--items",
            str(train_tuples.parent / "shards"), "--out", str(out), "--bootstrap", "50",
            "--set", "epochs=1", "--set", "batch_size=8", "--set", "workers=0", "--set", "threads=1",
            "--set", "max_steps_per_epoch=2", "--set", "tiny:tiny.width=8"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    table = json.loads((out / "compare.json").read_text())
    assert table["methods"] == ["aml", "tiny"] and table["reference"] == "aml"
    key = table["order"][0]
    assert key.startswith("matching/a2v/k2")
    aml, tiny = table["rows"][key]["aml"], table["rows"][key]["tiny"]
    assert aml["p_vs_reference"] is None and 0 < tiny["p_vs_reference"] <= 1
    for run in ("aml-seed0", "tiny-seed0"):
        assert (out / "runs" / run / "outcomes.npz").is_file()
    md = (out / "compare.md").read_text()
    assert "| metric (%) | aml (-L2) | tiny (-L2) |" in md and "(p=" in md
    steps = (out / "runs" / "tiny-seed0" / "log.jsonl").read_text()
    res = CliRunner().invoke(main, args)  # again: complete runs are not trained again
    assert res.exit_code == 0, res.output
    assert (out / "runs" / "tiny-seed0" / "log.jsonl").read_text() == steps
