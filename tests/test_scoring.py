"""avtrain evaluate --score l2|cosine|head: which rule scores each list, and that the numbers are
the rule's. Scoring is plumbing, so the runs here are randomly initialised (helpers.save_random_run):
their heads and embeddings are arbitrary but fixed, which is all a comparison of two ways of
computing the same scores needs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import make_tuples_args, save_random_run

from avtrain.cli import main as avtrain_main
from avtrain.evaluation import evaluate as evaluate_module
from avtrain.evaluation import metrics as M
from avtrain.evaluation.embeddings import embed_items, load_items
from avtrain.evaluation.evaluate import EvaluationError, ValidationSet, evaluate
from avtrain.evaluation.report import build_report
from avtrain.evaluation.results import format_table, score_kind
from avtrain.evaluation.tuple_lists import read_tuple_lists
from avtrain.methods.aml.model import AML, DiffMLPHead, RetrievalHead
from avtrain.methods.base import SCORE_RULES
from avtrain.run.checkpoint import load_run
from avtrain.run.config import TrainConfig

torch.set_num_threads(1)
CPU = torch.device("cpu")


def _avdata(args):
    from avdata.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def lists(train_tuples, tmp_path_factory):
    """Evaluation lists of the 12-identity corpus (matching k=2,3 on train; verification and
    retrieval on test; the val lists of fit) and three random runs: matching k=2 a2v,
    verification, retrieval (pair_head=diff_mlp, so the head's ranking depends on the query)."""
    shards = train_tuples.parent / "shards"
    tmp = tmp_path_factory.mktemp("scoring")
    ev = tmp / "ev"
    small = ("--sets-per-identity", "2", "--negatives-per-positive", "2", "--no-tuple-shards")
    _avdata(make_tuples_args(shards, ev, *small, k="2-3"))
    _avdata(make_tuples_args(shards, ev, "--pairs-per-identity", "3", task="verification", split="test"))
    _avdata(make_tuples_args(shards, ev, task="retrieval", split="test"))
    _avdata(make_tuples_args(shards, ev, *small, split="val", direction="a2v"))
    _avdata(make_tuples_args(shards, ev, "--pairs-per-identity", "3", task="verification", split="val"))
    runs = {
        "matching": save_random_run(tmp / "matching"),
        "verification": save_random_run(tmp / "verification", task="verification"),
        "retrieval": save_random_run(tmp / "retrieval", task="retrieval", pair_head="diff_mlp"),
    }
    return {"shards": shards, "ev": ev, "runs": runs, "tmp": tmp}


@pytest.fixture(scope="module")
def l2_metrics(lists) -> dict:
    """metrics.json of the matching run under -L2 (a copy per test)."""
    return _run_eval(lists, lists["runs"]["matching"], "l2", name="shared")


def _run_eval(s, run, rule, name=None, **kw) -> dict:
    out = s["tmp"] / f"{Path(run).name}-{name or rule}.json"
    return evaluate(run, s["shards"], s["ev"], out=out, n_boot=20, batch_size=16, echo=None, score=rule, **kw)


def _embeddings(s, run):
    """The run's model and its embeddings of every item of the lists (evaluate's own embedding
    step, same batch size: the rule under test starts after it)."""
    model, _, cfg = load_run(run, CPU)
    tls = read_tuple_lists(s["ev"])
    _, items = load_items(tls, s["shards"], s["ev"])
    return model, cfg, {t.name: t for t in tls}, embed_items(model, items, s["shards"], 16, CPU, set())


def _matching_arrays(tl, emb):
    qm, gm = ("audio", "face") if tl.direction == "a2v" else ("face", "audio")
    qi = np.array([emb.row[qm][r["query"]] for r in tl.rows])
    gi = np.array([[emb.row[gm][g] for g in r["gallery"]] for r in tl.rows])
    return emb.h[qm], emb.h[gm], qi, gi, np.array([r["label"] for r in tl.rows])


def _pairs(tl, emb, direction):
    """(h_query, h_gallery, labels) of a verification list, pairs as (query, gallery) of direction."""
    a = np.array([emb.h["audio"][emb.row["audio"][r["query"]]] for r in tl.rows])
    f = np.array([emb.h["face"][emb.row["face"][r["gallery"][0]]] for r in tl.rows])
    q, g = (a, f) if direction == "a2v" else (f, a)
    return torch.from_numpy(q).float(), torch.from_numpy(g).float(), np.array([r["label"] for r in tl.rows])


# --------------------------------------------------------------------------- the rules


def test_cli_rules_are_the_seams():
    from avtrain.cli import evaluate_cmd

    option = next(p for p in evaluate_cmd.params if p.name == "score")
    assert tuple(option.type.choices) == SCORE_RULES and option.default is None


def test_l2_and_cosine_give_the_metrics_of_gather_scores(lists):
    """Each rule's matching accuracy and verification AUC are those of metrics.gather_scores with
    its kind, and retrieval those of metrics.retrieval_metrics; the two rules differ somewhere."""
    run = lists["runs"]["matching"]
    model, _, tls, emb = _embeddings(lists, run)
    results = {rule: _run_eval(lists, run, rule) for rule in ("l2", "cosine")}
    assert _run_eval(lists, run, None, name="default")["scoring"] == results["l2"]["scoring"]  # AML: l2
    differ = False
    for rule, kind in (("l2", "neg_l2"), ("cosine", "cosine")):
        m = results[rule]
        assert m["scoring"]["kind"] == kind and m["not_scored"] == {}
        for d in ("a2v", "v2a"):
            for k in (2, 3):
                hq, hg, qi, gi, y = _matching_arrays(tls[f"matching_train_{d}_k{k}"], emb)
                want = M.matching_accuracy(M.gather_scores(hq, hg, qi, gi, kind=kind), y)
                assert m["matching"][d][f"k{k}"]["value"] == pytest.approx(want, abs=1e-12)
                differ |= want != results["l2"]["matching"][d][f"k{k}"]["value"]
        tl = tls["verification_test"]
        ai = np.array([emb.row["audio"][r["query"]] for r in tl.rows])
        fi = np.array([[emb.row["face"][r["gallery"][0]]] for r in tl.rows])
        scores = M.gather_scores(emb.h["audio"], emb.h["face"], ai, fi, kind=kind)[:, 0]
        y = np.array([r["label"] for r in tl.rows])
        assert m["verification"]["test"]["auc"]["value"] == pytest.approx(M.roc_auc(scores, y), abs=1e-12)
        tl = tls["retrieval_test_v2a"]
        r = M.retrieval_metrics(
            emb.h["face"][[emb.row["face"][q["query"]] for q in tl.rows]],
            np.array([q["query_identity"] for q in tl.rows]),
            emb.h["audio"][[emb.row["audio"][g["key"]] for g in tl.gallery]],
            np.array([g["identity"] for g in tl.gallery]),
            kind=kind,
        )
        for measure in ("R@1", "R@5", "R@10", "mAP"):
            assert m["retrieval"]["test"]["v2a"][measure]["value"] == pytest.approx(r[measure], abs=1e-12)
    assert differ  # cosine is not -L2 under another name


def test_head_matching_at_the_trained_k_and_every_other_list_not_scored(lists):
    """--score head on a matching k=2 a2v run: that list is scored by C_M (the accuracy of its
    logits, computed here tuple by tuple), every other list is reported as not scored with the
    reason, in metrics.json, on the console and in the report."""
    run = lists["runs"]["matching"]
    out = lists["tmp"] / "matching-head-cli.json"
    res = CliRunner().invoke(
        avtrain_main,
        ["evaluate", "--run", run, "--shards", lists["shards"], "--tuples", lists["ev"], "--out", out]
        + ["--bootstrap", "20", "--batch-size", "16", "--score", "head"],
    )
    assert res.exit_code == 0, res.output
    m = json.loads(out.read_text())
    assert m["scoring"]["kind"] == "head" and score_kind(m) == "head"
    assert m["matching"] == {"a2v": {"k2": m["matching"]["a2v"]["k2"]}}
    assert list(m["matching_other"]) == ["matching_val_a2v_k2"]  # k=2 a2v on another split: scored
    assert m["verification"] == {} and m["retrieval"] == {}
    assert sorted(m["not_scored"]) == sorted(
        [
            "matching_train_a2v_k3",
            "matching_train_v2a_k2",
            "matching_train_v2a_k3",
            "retrieval_test_a2v",
            "retrieval_test_v2a",
            "verification_test",
            "verification_val",
        ]
    )
    assert m["not_scored"]["matching_train_a2v_k3"] == (
        "method aml has no head for matching k=3 a2v; the run trained matching k=2 a2v"
    )
    assert "score learned head" in res.output
    assert "not scored: matching_train_v2a_k2: method aml has no head for matching k=2 v2a" in res.output

    model, _, tls, emb = _embeddings(lists, run)
    hq, hg, qi, gi, y = _matching_arrays(tls["matching_train_a2v_k2"], emb)
    with torch.no_grad():
        pred = [
            int(model.head(torch.tensor(hq[[q]]).float(), torch.tensor(hg[[g]]).float()).argmax())
            for q, g in zip(qi, gi)
        ]
    assert m["matching"]["a2v"]["k2"]["value"] == pytest.approx(np.mean(np.array(pred) == y), abs=1e-12)
    # the same number -L2 evaluation reports beside as "head"
    l2 = _run_eval(lists, run, "l2")
    assert l2["matching"]["a2v"]["k2"]["head"] == {
        k: m["matching"]["a2v"]["k2"][k] for k in ("value", "ci95")
    }

    page = build_report(run, metrics=out, out=lists["tmp"] / "head-report.html").read_text()
    assert "Scoring rule: <b>learned head</b>" in page and "matching_train_v2a_k3: not scored" in page


def test_head_verification_is_the_auc_of_c_v(lists):
    """A verification run under --score head: each verification list's AUC is that of C_V's
    score (logit same - logit different) on its pairs; matching and retrieval are not scored.
    Under -L2 the same AUC is reported beside as head_auc."""
    run = lists["runs"]["verification"]
    m = _run_eval(lists, run, "head")
    assert m["matching"] == {} and m["retrieval"] == {} and set(m["verification"]) == {"test", "val"}
    assert all(name.startswith(("matching_", "retrieval_")) for name in m["not_scored"])
    model, cfg, tls, emb = _embeddings(lists, run)
    q, g, y = _pairs(tls["verification_test"], emb, cfg.direction)
    with torch.no_grad():
        logits = model.head(q, g)
    want = M.roc_auc((logits[:, 1] - logits[:, 0]).double().numpy(), y)
    assert m["verification"]["test"]["auc"]["value"] == pytest.approx(want, abs=1e-6)
    assert _run_eval(lists, run, "l2")["verification"]["test"]["head_auc"]["value"] == pytest.approx(
        want, abs=1e-6
    )


def _rank_by_hand(scores: np.ndarray, relevant: np.ndarray) -> tuple[int, float]:
    """(1-based rank of the first relevant item, average precision) of one query's gallery
    scores, ranked best first (stable: ties keep gallery order)."""
    order = sorted(range(len(scores)), key=lambda j: -scores[j])
    hits, precisions = 0, []
    for rank, j in enumerate(order, 1):
        if relevant[j]:
            hits += 1
            precisions.append(hits / rank)
    first = next(rank for rank, j in enumerate(order, 1) if relevant[j])
    return first, float(np.mean(precisions))


def test_head_retrieval_ranks_by_the_heads_own_scores(lists, monkeypatch):
    """--score head on a retrieval run: each query's gallery is ranked by C_R, exactly as the
    head's scores computed here query by query in its training form (h_query (1, D) against
    h_gallery (1, G, D)) rank it; blocks of two queries (HEAD_RETRIEVAL_ELEMS) change nothing."""
    run = lists["runs"]["retrieval"]
    model, cfg, tls, emb = _embeddings(lists, run)
    monkeypatch.setattr(
        evaluate_module, "HEAD_RETRIEVAL_ELEMS", 2 * 128 * len(tls["retrieval_test_a2v"].gallery)
    )
    m = _run_eval(lists, run, "head")
    assert set(m["retrieval"]["test"]) == {"a2v"}  # the run's direction only
    assert "retrieval_test_v2a" in m["not_scored"] and m["matching"] == {} and m["verification"] == {}
    tl = tls["retrieval_test_a2v"]
    hg = torch.tensor(emb.h["face"][[emb.row["face"][g["key"]] for g in tl.gallery]]).float()[None]
    g_ids = np.array([g["identity"] for g in tl.gallery])
    firsts, aps = [], []
    orders = set()
    for r in tl.rows:
        hq = torch.tensor(emb.h["audio"][[emb.row["audio"][r["query"]]]]).float()
        with torch.no_grad():
            scores = model.head(hq, hg)[0].double().numpy()
        orders.add(tuple(np.argsort(-scores, kind="stable")))
        first, ap = _rank_by_hand(scores, g_ids == r["query_identity"])
        firsts.append(first)
        aps.append(ap)
    assert len(orders) > 1  # diff_mlp ranks the gallery per query
    e = m["retrieval"]["test"]["a2v"]
    for k in (1, 5, 10):
        assert e[f"R@{k}"]["value"] == pytest.approx(np.mean(np.array(firsts) <= k), abs=1e-12)
    assert e["mAP"]["value"] == pytest.approx(np.mean(aps), abs=1e-9)


def test_linear_c_r_ranks_the_gallery_the_same_for_every_query():
    """The paper's C_R by hand: w = (1, -2, 0.5, 0), b = 0.5 on h_q - h_g gives
    w·h_q - w·h_g + b, so every query ranks the gallery by -w·h_g. Gallery (D = 4):
    w·g = 1, -2, 3, 0 -> order 1, 3, 0, 2 (best first) for any query. An MLP on h_q - h_g
    built to give -|h_q - h_g|_1 ranks by closeness instead: each query's own point first."""
    w = torch.tensor([1.0, -2.0, 0.5, 0.0])
    gallery = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [1.0, -1.0, 0, 0], [0, 0, 0, 1.0]])
    assert (gallery @ w).tolist() == [1.0, -2.0, 3.0, 0.0]
    head = RetrievalHead(dropout=0.0)
    head.layers[1].weight.data = torch.nn.functional.pad(w, (0, 124))[None]
    head.layers[1].bias.data = torch.tensor([0.5])
    queries = torch.nn.functional.pad(torch.cat([gallery, torch.randn(3, 4)]), (0, 124))
    g = torch.nn.functional.pad(gallery, (0, 124))[None]
    scores = head(queries[:, None], g)
    assert [row.argsort(descending=True).tolist() for row in scores] == [[1, 3, 0, 2]] * 7
    torch.testing.assert_close(scores[0], torch.tensor([0.0, 3.0, -2.0, 1.0]) + 0.5)  # w·q = 1

    l1 = DiffMLPHead(dropout=0.0, dim=128)  # hidden 256: relu(x) + relu(-x) = |x| per dimension
    eye = torch.eye(128)
    l1.layers[1].weight.data, l1.layers[1].bias.data = torch.cat([eye, -eye]), torch.zeros(256)
    l1.layers[3].weight.data, l1.layers[3].bias.data = -torch.ones(1, 256), torch.zeros(1)
    assert l1(queries[:4, None], g).argmax(1).tolist() == [0, 1, 2, 3]


# --------------------------------------------------------------------------- validation, report


class _HeadScoredAML(AML):
    """AML whose default rule is its head (as a method like SVHF declares): what fit's
    validation must then score with."""

    default_score = "head"


def test_validation_scores_with_the_methods_default_rule(lists):
    cfg = TrainConfig(task="matching", k=2, direction="a2v")
    torch.manual_seed(0)
    model = _HeadScoredAML(cfg).eval()
    val = ValidationSet(
        lists["ev"], lists["shards"], "matching", 2, "a2v", "val_matching_a2v_k2", batch_size=16
    )
    val.check(model)
    scores = val.score(model, CPU)
    assert list(scores) == ["val_matching_a2v_k2"]  # no verification head: no val_verification_auc
    tl = next(t for t in val.lists if t.task == "matching")
    emb = embed_items(model, val.items, lists["shards"], 16, CPU, set())
    hq, hg, qi, gi, y = _matching_arrays(tl, emb)
    with torch.no_grad():
        head = model.head(torch.tensor(hq[qi]).float(), torch.tensor(hg[gi]).float()).numpy()
    assert scores["val_matching_a2v_k2"] == pytest.approx(M.matching_accuracy(head, y), abs=1e-12)
    # an AML (default l2) on the same lists gets the -L2 accuracy under the same name
    plain = AML(cfg).eval()
    plain.load_state_dict(model.state_dict())
    neg_l2 = M.matching_accuracy(M.gather_scores(hq, hg, qi, gi), y)
    assert val.score(plain, CPU)["val_matching_a2v_k2"] == pytest.approx(neg_l2, abs=1e-12)
    # selecting by a metric the head cannot give is refused before training
    by_auc = ValidationSet(lists["ev"], lists["shards"], "matching", 2, "a2v", "val_verification_auc")
    with pytest.raises(
        EvaluationError, match="val_verification_auc cannot be scored: aml scores with its head"
    ):
        by_auc.check(model)
    by_auc.check(plain)


def test_old_metrics_without_a_rule_read_as_neg_l2(lists, l2_metrics):
    m = json.loads(json.dumps(l2_metrics))
    del m["scoring"], m["not_scored"]
    assert score_kind(m) == "neg_l2" and "score -L2" in format_table(m)
    path = lists["tmp"] / "old.json"
    path.write_text(json.dumps(m))
    page = build_report(lists["runs"]["matching"], metrics=path, out=lists["tmp"] / "old.html").read_text()
    assert "Scoring rule: <b>−L2</b>" in page and "score −L2" in page


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"scoring": {"kind": ["head"]}}, "scoring.kind is not one of neg_l2, cosine, head"),
        ({"scoring": {"kind": "sqrt_l2"}}, "scoring.kind is not one of"),
        ({"scoring": "head"}, "scoring"),
        ({"not_scored": {"matching_test_a2v_k3": 3}}, "not_scored.matching_test_a2v_k3 is not a reason"),
    ],
)
def test_report_refuses_a_bad_scoring_record_in_one_line(lists, l2_metrics, edit, message):
    from avtrain.evaluation.report import ReportError, load_metrics

    m = l2_metrics | edit
    path = lists["tmp"] / "hostile.json"
    path.write_text(json.dumps(m))
    with pytest.raises(ReportError, match=message) as err:
        load_metrics(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
