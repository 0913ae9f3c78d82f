"""avtrain compare: methods trained on the same tuples with the same seeds, one table, paired p-values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_methods import tiny_registered  # noqa: F401  (fixture: the tiny method of test_methods)

from avdata.errors import AvmatchError
from avtrain.cli import main
from avtrain.evaluation.compare import CompareError, paired_p_value, plan_runs
from avtrain.evaluation.outcomes import load_outcomes


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
    for method, cell in (("aml", aml), ("tiny", tiny)):
        # the table's value is the one evaluate wrote for that method's run (not the other's), and
        # that value is the share of correct answers in the run's outcomes (what the p-value pairs)
        run = out / "runs" / f"{method}-seed0"
        task, direction, k = key.split("/")[:3]
        entry = json.loads((run / "metrics.json").read_text())[task][direction][k]
        assert cell["values"] == [entry["value"]]
        correct = load_outcomes(run / "outcomes.npz")[f"{task}/{direction}/{k}/correct"]
        assert entry["value"] == pytest.approx(correct.mean(), abs=1e-12)  # one float64 mean of 0/1
    md = (out / "compare.md").read_text()
    assert "| metric (%) | aml (-L2) | tiny (-L2) |" in md and "(p=" in md
    steps = (out / "runs" / "tiny-seed0" / "log.jsonl").read_text()
    res = CliRunner().invoke(main, args)  # again: complete runs are not trained again
    assert res.exit_code == 0, res.output
    assert (out / "runs" / "tiny-seed0" / "log.jsonl").read_text() == steps


# --------------------------------------------------------------------------- runs scored on different rows


def test_common_rows_pairs_runs_on_the_rows_both_scored():
    from avtrain.evaluation.compare import Pairing, common_rows

    # 6 rows; the second run left out rows 1 and 4 (they named an item its encoder rejected)
    scratch = {"correct": np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0]), "row": np.arange(6.0)}
    frozen = {"correct": np.array([1.0, 1.0, 0.0, 1.0]), "row": np.array([0.0, 2.0, 3.0, 5.0])}
    got = common_rows([scratch, frozen])
    assert isinstance(got, Pairing) and (got.common, got.scored) == (4, 6)
    np.testing.assert_array_equal(got.runs[0]["correct"], [1, 1, 1, 1])  # rows 0, 2, 3, 5
    np.testing.assert_array_equal(got.runs[1]["correct"], [1, 1, 0, 1])
    np.testing.assert_array_equal(got.runs[0]["row"], got.runs[1]["row"])
    # a third run missing row 3 too: 3 rows left, 6 scored by some run
    third = {"correct": np.array([0.0, 0.0, 0.0, 0.0, 0.0]), "row": np.array([0.0, 1.0, 2.0, 4.0, 5.0])}
    got = common_rows([scratch, frozen, third])
    assert (got.common, got.scored) == (3, 6)
    np.testing.assert_array_equal(got.runs[1]["correct"], [1, 1, 1])  # rows 0, 2, 5
    # verification: scores and labels follow their rows
    a = {"scores": np.array([0.9, 0.1, 0.8, 0.2]), "labels": np.array([1.0, 0, 1, 0]), "row": np.arange(4.0)}
    b = {"scores": np.array([0.7, 0.3]), "labels": np.array([1.0, 0]), "row": np.array([2.0, 3.0])}
    got = common_rows([a, b])
    np.testing.assert_array_equal(got.runs[0]["scores"], [0.8, 0.2])
    np.testing.assert_array_equal(got.runs[0]["labels"], got.runs[1]["labels"])
    # outcomes written before row positions: the same number of rows pairs as before, else why not
    old = [{"correct": np.ones(6)}, {"correct": np.zeros(6)}]
    assert common_rows(old).common == 6
    why = common_rows([{"correct": np.ones(6)}, {"correct": np.ones(4)}])
    assert isinstance(why, str) and "different numbers of rows (4 vs 6)" in why and "evaluate again" in why


def test_paired_p_value_on_common_rows_by_hand():
    from avtrain.evaluation.compare import common_rows

    # on the 4 rows both scored the runs agree, so every resampled difference is 0: p = 1 exactly;
    # on all their rows they differ (1.0 vs 0.5 on rows 1, 4), which an unpaired reading would not see
    scratch = {"correct": np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0]), "row": np.arange(6.0)}
    frozen = {"correct": np.array([1.0, 1.0, 1.0, 1.0]), "row": np.array([0.0, 2.0, 3.0, 5.0])}
    assert paired_p_value([frozen], [scratch], _mean, n_boot=200) is None  # different n: no pairing
    pairing = common_rows([frozen, scratch])
    assert paired_p_value(pairing.runs[:1], pairing.runs[1:], _mean, n_boot=200) == 1.0
    # one run right on all 100 common rows, the other on 50: p = 2 * (1 + 0) / (1 + 200), as unpaired
    better = {"correct": np.ones(120), "row": np.arange(120.0)}
    worse = {"correct": np.array([1.0] * 50 + [0.0] * 50), "row": np.arange(100.0)}
    pairing = common_rows([better, worse])
    assert (pairing.common, pairing.scored) == (100, 120)
    assert paired_p_value(pairing.runs[:1], pairing.runs[1:], _mean, n_boot=200) == pytest.approx(2 / 201)


def _write_run(run, correct, rows, skipped=None, sha="a" * 64, auc=None):
    """A run directory as evaluate leaves it, with just what compare reads: metrics.json (one
    matching list) and outcomes.npz."""
    from avtrain.evaluation.outcomes import save_outcomes

    run.mkdir(parents=True)
    correct = np.asarray(correct, dtype=np.float64)
    entry = {"value": float(correct.mean()), "ci95": [0.0, 1.0], "n": int(correct.size)}
    entry |= {"list": "matching_test_a2v_k2", "list_sha256": sha}
    metrics = {"matching": {"a2v": {"k2": entry}}, "matching_split": "test"}
    if skipped:
        metrics["features"] = {"skipped_rows": skipped}
    (run / "metrics.json").write_text(json.dumps(metrics))
    save_outcomes(run / "outcomes.npz", {"matching/a2v/k2/correct": correct, "matching/a2v/k2/row": rows})


def test_compare_table_pairs_on_common_rows_and_says_so(tmp_path):
    from avtrain.evaluation.compare import markdown, summarise_runs

    _write_run(tmp_path / "aml", [1, 0, 1, 1, 0, 1], range(6))
    _write_run(tmp_path / "fop", [1, 1, 1, 1], [0, 2, 3, 5], skipped={"matching_test_a2v_k2": 2})
    table = summarise_runs({"aml": [tmp_path / "aml"], "fop": [tmp_path / "fop"]}, n_boot=200)
    cell = table["rows"]["matching/a2v/k2"]["fop"]
    # each run's value on its own rows; the paired test on the 4 rows both scored (equal there: p = 1)
    assert cell["mean"] == 1.0 and table["rows"]["matching/a2v/k2"]["aml"]["mean"] == pytest.approx(4 / 6)
    assert cell["p_vs_reference"] == 1.0
    assert cell["paired"] == {"rows": 4, "of": 6, "one_run_only": 2, "rejected_items": True}
    md = markdown(table)
    assert "(p=1.000†)" in md
    assert (
        "fop vs aml, matching/a2v/k2: † paired on 4 of 6 rows: 2 rows scored by one run only "
        "(rows naming items a frozen encoder rejected); each run's value is on its own rows." in md
    )
    # one row in common: too few to resample, no p-value, and the line says so
    _write_run(tmp_path / "one", [1, 0], [0, 7], skipped={"matching_test_a2v_k2": 4})
    table = summarise_runs({"aml": [tmp_path / "aml"], "one": [tmp_path / "one"]}, n_boot=200)
    assert table["rows"]["matching/a2v/k2"]["one"]["p_vs_reference"] is None
    assert (
        "one vs aml, matching/a2v/k2: no p-value on the 1 of 7 rows: 6 rows scored by one run only"
        in markdown(table)
    )
    # the same rows: no note, no mark
    _write_run(tmp_path / "same", [1, 0, 1, 1, 0, 1], range(6))
    table = summarise_runs({"aml": [tmp_path / "aml"], "same": [tmp_path / "same"]}, n_boot=200)
    assert "paired" not in table["rows"]["matching/a2v/k2"]["same"] and "†" not in markdown(table)


def test_compare_refuses_to_pair_runs_on_different_lists(tmp_path):
    from avtrain.evaluation.compare import markdown, summarise_runs
    from avtrain.evaluation.outcomes import load_outcomes

    _write_run(tmp_path / "aml", [1, 0, 1, 1, 0, 1], range(6))
    _write_run(tmp_path / "other", [1, 0, 1, 1, 0, 1], range(6), sha="b" * 64)
    table = summarise_runs({"aml": [tmp_path / "aml"], "other": [tmp_path / "other"]}, n_boot=200)
    cell = table["rows"]["matching/a2v/k2"]["other"]
    assert cell["p_vs_reference"] is None and "different lists" in cell["paired"]["refused"]
    assert "other vs aml, matching/a2v/k2: no p-value: different lists (list sha256 aaaa" in markdown(table)
    # row positions must be whole, increasing and >= 0 (they index the list)
    _write_run(tmp_path / "bad", [1, 0], [1, 1])
    with pytest.raises(AvmatchError, match="matching/a2v/k2/row is not increasing row positions"):
        load_outcomes(tmp_path / "bad" / "outcomes.npz")


def test_common_rows_give_the_old_bench_restriction(tmp_path):
    """bench/feature_methods.py used to restrict the reference run's outcomes to the rows that name
    no rejected item (its own code, kept here as it was); common_rows on the row positions that
    evaluate records (the list's rows kept by without_items) gives the same arrays and the same p."""
    from avtrain.evaluation.compare import common_rows
    from avtrain.evaluation.tuple_lists import TupleList, without_items

    rng = np.random.default_rng(3)
    rows = [{"query": f"v{i % 7}", "gallery": [f"f{i % 5}", f"f{(i + 2) % 5}"]} for i in range(40)]
    rejected = {"v3", "f4"}
    keep = np.array([r["query"] not in rejected and not rejected.intersection(r["gallery"]) for r in rows])
    scratch = {"correct": rng.integers(0, 2, 40).astype(float)}
    frozen = {"correct": rng.integers(0, 2, int(keep.sum())).astype(float)}
    old_reference = {k: v[keep] for k, v in scratch.items()}  # the old restriction
    old_p = paired_p_value([frozen], [old_reference], _mean, n_boot=300)

    full = TupleList("matching_test_a2v_k2", "matching", "test", "a2v", 2, rows=rows, row_index=[*range(40)])
    (kept,), skipped = without_items([full], rejected)
    assert skipped == {"matching_test_a2v_k2": 40 - keep.sum()}
    pairing = common_rows(
        [scratch | {"row": np.arange(40.0)}, frozen | {"row": np.asarray(kept.row_index, dtype=float)}]
    )
    np.testing.assert_array_equal(pairing.runs[0]["correct"], old_reference["correct"])
    np.testing.assert_array_equal(pairing.runs[1]["correct"], frozen["correct"])
    assert pairing.common == keep.sum() < 40
    assert paired_p_value(pairing.runs[1:], pairing.runs[:1], _mean, n_boot=300) == old_p
