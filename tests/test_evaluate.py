"""avtrain evaluate / report on the synthetic corpus: structure, correctness against a
brute-force recomputation, determinism, embed-once cost, and the HTML report."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import make_tuples_args

from avtrain.cli import main as avtrain_main
from avtrain.evaluation.tuple_lists import read_tuple_lists
from avtrain.methods import build_method
from avtrain.methods.encoders import AudioBranch, VisualBranch
from avtrain.run.checkpoint import LAST as CHECKPOINT
from avtrain.run.checkpoint import save_checkpoint
from avtrain.run.config import TrainConfig
from avtrain.train.loop import fit

torch.set_num_threads(1)


def _avdata(args):
    from avdata.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def _lines(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


@pytest.fixture(scope="module")
def setup(train_tuples, tmp_path_factory):
    """Evaluation lists (matching k=2..4 on train: the 12-identity corpus has only 2 test
    identities, too few for k > 2; verification and retrieval on test), a briefly trained
    run and an untrained 'ML only' run saved in the same checkpoint format."""
    root = train_tuples.parent
    shards = root / "shards"
    tmp = tmp_path_factory.mktemp("evaluate")
    ev = tmp / "ev"
    _avdata(
        make_tuples_args(shards, ev, "--sets-per-identity", "3", "--negatives-per-positive", "2", k="2-4")
    )  # also writes tuple shards
    _avdata(make_tuples_args(shards, ev, "--pairs-per-identity", "3", task="verification", split="test"))
    _avdata(make_tuples_args(shards, ev, task="retrieval", split="test"))

    run = tmp / "run"
    cfg = TrainConfig(
        task="matching",
        k=2,
        direction="a2v",
        epochs=1,
        batch_size=8,
        workers=0,
        threads=1,
        seed=0,
        max_steps_per_epoch=3,
    )
    fit(cfg, train_tuples, run, progress=False)

    ablation = tmp / "run_ml_only"
    ablation.mkdir()
    cfg2 = TrainConfig.from_dict(
        {"task": "matching", "k": 2, "direction": "a2v", "adversarial": False, "seed": 1}
    )
    torch.manual_seed(1)
    save_checkpoint(
        ablation / CHECKPOINT,
        {"config": cfg2.to_dict(), "model": build_method(cfg2).state_dict(), "epoch": 0, "step": 0},
    )
    return {"shards": shards, "ev": ev, "run": run, "ablation": ablation, "tmp": tmp}


def _evaluate(s, run, out, *extra):
    res = CliRunner().invoke(
        avtrain_main,
        [
            "evaluate",
            "--run",
            str(run),
            "--shards",
            str(s["shards"]),
            "--tuples",
            str(s["ev"]),
            "--out",
            str(out),
            "--bootstrap",
            "200",
            "--batch-size",
            "16",
            *extra,
        ],
    )
    assert res.exit_code == 0, res.output
    return json.loads(Path(out).read_text()), res.output


def _check_entry(e: dict):
    assert 0.0 <= e["value"] <= 1.0
    lo, hi = e["ci95"]
    assert 0.0 <= lo <= e["value"] <= hi <= 1.0


def test_metrics_structure_and_values(setup):
    m, output = _evaluate(setup, setup["run"], setup["run"] / "metrics.json")
    assert "matching" in output and "verification" in output and "retrieval" in output
    assert m["checkpoint_epoch"] == 1 and m["config"]["k"] == 2 and m["run"] == str(setup["run"])
    assert m["matching_split"] == "train" and m["matching_other"] == {}
    index = setup["ev"] / "index"
    for d in ("a2v", "v2a"):
        assert sorted(m["matching"][d]) == ["k2", "k3", "k4"]
        for k in (2, 3, 4):
            e = m["matching"][d][f"k{k}"]
            _check_entry(e)
            assert e["n"] == len(_lines(index / f"matching_train_{d}_k{k}.jsonl"))
            assert e["chance"] == pytest.approx(1 / k)
    # the learned head exists only for the trained k and direction
    assert "head" in m["matching"]["a2v"]["k2"]
    _check_entry(m["matching"]["a2v"]["k2"]["head"])
    assert all(
        "head" not in e
        for d in ("a2v", "v2a")
        for k, e in m["matching"][d].items()
        if (d, k) != ("a2v", "k2")
    )
    v = m["verification"]["test"]
    _check_entry(v["auc"])
    _check_entry(v["eer"])
    assert v["n"] == v["n_pos"] + v["n_neg"] == len(_lines(index / "verification_test.jsonl"))
    assert v["roc"]["fpr"][0] == 0 and v["roc"]["tpr"][-1] == 1
    for d in ("a2v", "v2a"):
        r = m["retrieval"]["test"][d]
        for key in ("R@1", "R@5", "R@10", "mAP"):
            _check_entry(r[key])
        assert r["R@1"]["value"] <= r["R@5"]["value"] <= r["R@10"]["value"]
        assert r["n"] == len(_lines(index / f"retrieval_test_{d}_queries.jsonl"))
    pd_ = m["pair_distance"]
    for space in ("before", "after"):
        assert pd_[space]["same"] > 0 and pd_[space]["different"] > 0
        assert pd_[space]["normalised"] == pytest.approx(pd_[space]["same"] / pd_[space]["different"])
    with np.load(setup["run"] / "embeddings.npz", allow_pickle=False) as z:
        assert z["audio_before"].shape[1] == 3200 and z["face_after"].shape[1] == 128
        assert z["audio_before"].shape[0] == z["audio_ids"].shape[0] == z["audio_after"].shape[0] > 0
        assert z["face_ids"].dtype.kind == "U"


def test_scores_match_brute_force(setup):
    """Accuracy and AUC equal a direct per-tuple recomputation from freshly embedded items."""
    from sklearn.metrics import roc_auc_score

    from avdata.reader import decode_jpg, decode_npy, index_items, read_member
    from avtrain.methods.encoders import normalise_audio, normalise_face
    from avtrain.run.checkpoint import load_run

    m = json.loads((setup["run"] / "metrics.json").read_text())
    model, _, _ = load_run(setup["run"], torch.device("cpu"))
    items = index_items(setup["shards"]).set_index("key")

    def h(key):
        r = items.loc[key]
        data = read_member(setup["shards"] / r["tar"], int(r["data_offset"]), int(r["data_size"]))
        with torch.no_grad():
            if r["modality"] == "audio":
                return model.embed_audio(normalise_audio(np.stack([decode_npy(data)])))[0].double().numpy()
            return model.embed_face(normalise_face(np.stack([decode_jpg(data)])))[0].double().numpy()

    cache = {}
    emb = lambda k: cache.setdefault(k, h(k))
    tuples = _lines(setup["ev"] / "index" / "matching_train_v2a_k3.jsonl")
    correct = [
        int(np.argmin([np.linalg.norm(emb(t["query"]) - emb(g)) for g in t["gallery"]]) == t["label"])
        for t in tuples
    ]
    assert m["matching"]["v2a"]["k3"]["value"] == pytest.approx(np.mean(correct), abs=1e-12)
    pairs = _lines(setup["ev"] / "index" / "verification_test.jsonl")
    scores = [-np.linalg.norm(emb(p["query"]) - emb(p["gallery"][0])) for p in pairs]
    assert m["verification"]["test"]["auc"]["value"] == pytest.approx(
        roc_auc_score([p["label"] for p in pairs], scores)
    )


def test_deterministic_and_embeds_each_item_once(setup):
    """Two evaluations give identical bytes; branch forward rows == distinct items."""
    calls = {"audio": [], "face": []}

    def hook(module, inputs, output):
        if isinstance(module, AudioBranch):
            calls["audio"].append(inputs[0].shape[0])
        elif isinstance(module, VisualBranch):
            calls["face"].append(inputs[0].shape[0])

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        a, _ = _evaluate(setup, setup["run"], setup["tmp"] / "a.json")
    finally:
        handle.remove()
    _evaluate(setup, setup["run"], setup["tmp"] / "b.json")
    assert (setup["tmp"] / "a.json").read_bytes() == (setup["tmp"] / "b.json").read_bytes()

    audio, face, tuple_slots = set(), set(), 0
    for f in sorted((setup["ev"] / "index").glob("*.jsonl")):
        for r in _lines(f):
            if "gallery" in r:  # matching / verification tuple
                d = r["direction"]
                (audio if d == "a2v" else face).add(r["query"])
                (face if d == "a2v" else audio).update(r["gallery"])
                tuple_slots += 1 + len(r["gallery"])
            elif "query" in r:  # retrieval query
                (audio if r["direction"] == "a2v" else face).add(r["query"])
            else:  # retrieval gallery line
                (face if "_a2v_" in f.name else audio).add(r["key"])
    assert sum(calls["audio"]) == len(audio) == a["items"]["audio"]
    assert sum(calls["face"]) == len(face) == a["items"]["face"]
    assert len(calls["audio"]) == math.ceil(len(audio) / 16) and len(calls["face"]) == math.ceil(
        len(face) / 16
    )
    assert len(audio) + len(face) < tuple_slots  # cost follows items, not tuples x k


def test_report_with_comparison(setup):
    _evaluate(setup, setup["ablation"], setup["ablation"] / "metrics.json")
    out = setup["tmp"] / "report.html"
    res = CliRunner().invoke(
        avtrain_main,
        ["report", "--run", str(setup["run"]), "--out", str(out), "--compare", str(setup["ablation"])],
    )
    assert res.exit_code == 0, res.output
    page = out.read_text()
    for title in (
        "Metrics",
        "not comparable",
        "Matching accuracy against k",
        "Verification ROC curves",
        "Training losses",
        "t-SNE",
        "Same-identity audio-face distance",
        "Run comparison",
    ):
        assert title in page, title
    assert page.count("data:image/png;base64,") == 5  # accuracy-k, ROC, losses, t-SNE, distances
    assert "http://" not in page and "https://" not in page  # self-contained
    table = page[page.index('<table class="compare">') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr>") == 3  # header + two runs
    assert "AL+ML (gan, lifted" in table and "ML only (lifted" in table
    assert re.search(r"<th>seed</th>", table)  # another differing setting is shown


def test_cli_errors_are_one_line(setup, tmp_path):
    res = CliRunner().invoke(
        avtrain_main,
        ["evaluate", "--run", str(tmp_path), "--shards", str(setup["shards"]), "--tuples", str(setup["ev"])],
    )
    assert res.exit_code == 1 and "no checkpoint.pt" in res.output and res.output.count("\n") == 1
    res = CliRunner().invoke(
        avtrain_main,
        ["evaluate", "--run", str(setup["run"]), "--shards", str(setup["shards"]), "--tuples", str(tmp_path)],
    )
    assert res.exit_code == 1 and "not a tuple directory" in res.output and res.output.count("\n") == 1
    res = CliRunner().invoke(avtrain_main, ["report", "--run", str(tmp_path)])
    assert res.exit_code == 1 and "no metrics file" in res.output


def _one_error_line(res, *needles: str) -> None:
    assert res.exit_code == 1, res.output
    lines = res.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit), res.output
    for needle in needles:
        assert needle in lines[0], (needle, res.output)


def test_report_bad_inputs_are_one_line_naming_the_file(tmp_path):
    """A run without metrics.json, a metrics.json that is not JSON or lacks a key the report
    reads, a --compare run without metrics.json and an unreadable embeddings.npz: exit 1 and
    one `Error:` line naming the file, never a traceback."""

    def report(*args):
        return CliRunner().invoke(avtrain_main, ["report", *map(str, args)])

    empty = tmp_path / "empty"
    empty.mkdir()
    _one_error_line(report("--run", empty), f"{empty / 'metrics.json'}: no metrics file")

    run = tmp_path / "run"
    run.mkdir()
    metrics = run / "metrics.json"
    roc = {"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]}
    good = {"verification": {"test": {"auc": {"value": 0.9}, "eer": {"value": 0.1}, "roc": roc}}}
    for text, problem in (
        (json.dumps({"verification": {"test": {"eer": {"value": 0.1}, "roc": roc}}}), "has no key 'auc'"),
        (json.dumps({"matching": {"a2v": {"k2": {"ci95": None}}}}), "matching.a2v.k2 has no key 'value'"),
        ("[]", "the top level is not a JSON object"),
        ("{", "not JSON"),
    ):
        metrics.write_text(text)
        _one_error_line(report("--run", run), f"{metrics}: ", problem)

    metrics.write_text(json.dumps(good))
    _one_error_line(report("--run", run, "--compare", empty), f"{empty / 'metrics.json'}: no metrics file")
    (run / "embeddings.npz").write_bytes(b"not an npz")
    _one_error_line(report("--run", run), f"{run / 'embeddings.npz'}: not a readable embedding sample")
    np.savez(run / "embeddings.npz", audio_ids=np.array(["a"]))
    _one_error_line(report("--run", run), f"{run / 'embeddings.npz'}: no array 'audio_before'")
    (run / "embeddings.npz").unlink()
    res = report("--run", run)
    assert res.exit_code == 0 and (run / "report.html").is_file(), res.output


# payloads of issue #20: a plain tag, one whose handler is entity-encoded (survives .upper(): the
# retrieval direction went through _arrow), one that closes an attribute, and matplotlib mathtext
XSS = "<img src=x onerror=alert(1)>"
XSS_UPPER = "<img src=x onerror=&#97;&#108;&#101;&#114;&#116;(1)>"
XSS_ATTR = '"><svg onload=alert(1)>'
MATHTEXT = r"$\frac{$ and $x^$"
PAYLOADS = (XSS, XSS_UPPER, XSS_ATTR)
REPORT_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "b", "div", "small"}
REPORT_TAGS |= {"table", "thead", "tbody", "tr", "th", "td", "img"}


class _Page(HTMLParser):
    """The elements and the text of a page as a browser's tokenizer sees them."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, list]] = []
        self.text: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)


def _assert_inert(page: str, *shown: str) -> None:
    """No element or attribute of the page comes from data: only the report's own tags, with its
    own attributes (images only as embedded PNGs); and each of SHOWN appears as text."""
    parsed = _Page(page)
    for tag, attrs in parsed.elements:
        assert tag in REPORT_TAGS, (tag, attrs)
        for name, value in attrs:
            assert name in ("lang", "charset", "class", "alt", "src"), (tag, name, value)
            if name == "src":
                assert value.startswith("data:image/png;base64,"), value[:80]
    text = "".join(parsed.text)
    for s in shown:
        assert s in text, s


def _metrics(**more) -> dict:
    """A small metrics.json of avtrain evaluate's layout, with MORE set at the top level."""
    e = {"value": 0.5, "ci95": [0.4, 0.6], "n": 10}
    roc = {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.8, 1.0]}
    return {
        "checkpoint_epoch": 1,
        "checkpoint_step": 3,
        "config": {"task": "matching", "k": 2, "direction": "a2v"},
        "matching": {"a2v": {"k2": dict(e), "k3": dict(e)}, "v2a": {"k2": dict(e)}},
        "matching_split": "test",
        "matching_other": {"matching_val_a2v_k2": dict(e)},
        "verification": {"test": {"auc": {"value": 0.9}, "eer": {"value": 0.1}, "roc": roc, "n": 4}},
        "retrieval": {"test": {"a2v": {"R@1": e, "R@5": e, "R@10": e, "mAP": e, "n": 3}}},
        "items": {"audio": 6, "face": 6},
        "bootstrap": {"n": 10, "seed": 0},
    } | more


def test_report_tables_escape_every_cell():
    """The table writer escapes every cell: a metrics dict that never went through the loader's
    checks (`n` and a retrieval direction holding markup) still gives no element of its own."""
    from avtrain.evaluation.report import compare_table, metrics_table

    m = _metrics()
    m["matching"]["a2v"]["k2"]["n"] = XSS
    m["retrieval"]["test"][XSS_UPPER] = m["retrieval"]["test"]["a2v"]
    m["verification"][XSS_ATTR] = m["verification"]["test"]
    m["config"][XSS_ATTR] = XSS
    other = _metrics(config={"task": "matching", XSS_ATTR: "x"})
    page = metrics_table(m) + compare_table([(Path(XSS), m), (Path("b"), other)])
    _assert_inert(page, XSS, XSS_UPPER.upper(), XSS_ATTR)


def test_report_refuses_hostile_metrics_in_one_line(tmp_path):
    """Values the report would show or plot are type-checked when metrics.json is read: markup
    where a count or a direction belongs, integers beyond float range, gallery sizes no plot can
    hold, JSON that Python cannot hand back. Each is one `Error:` line naming the file."""
    metrics = tmp_path / "metrics.json"

    def refused(m, problem: str) -> None:  # m: the metrics (or their text); None: the file as it is
        if m is not None:
            metrics.write_text(m if isinstance(m, str) else json.dumps(m))
        res = CliRunner().invoke(avtrain_main, ["report", "--run", str(tmp_path)])
        _one_error_line(res, f"{metrics}: ", problem)
        assert not (tmp_path / "report.html").exists()

    m = _metrics()
    m["matching"]["a2v"]["k2"]["n"] = XSS
    refused(m, "matching.a2v.k2.n is not a count")
    m = _metrics()
    m["retrieval"]["test"][XSS_UPPER] = m["retrieval"]["test"]["a2v"]
    refused(m, "is not a direction (a2v or v2a)")
    m = _metrics()
    m["matching"][XSS] = {}
    refused(m, "is not a direction (a2v or v2a)")
    m = _metrics()
    m["verification"]["test"]["n"] = XSS_ATTR
    refused(m, "verification.test.n is not a count")
    big = 10**400
    for where, set_big in (
        ("matching.a2v.k2.value", lambda m: m["matching"]["a2v"]["k2"].update(value=big)),
        ("matching.a2v.k2.ci95", lambda m: m["matching"]["a2v"]["k2"].update(ci95=[0.1, big])),
        ("verification.test.roc", lambda m: m["verification"]["test"]["roc"].update(fpr=[0, 0.5, big])),
        ("pair_distance.before.same", lambda m: m.update(pair_distance=_pair_distance(big))),
    ):
        m = _metrics()
        set_big(m)
        refused(m, f"{where} is not a finite number")
    m = _metrics()
    m["matching"]["a2v"]["k2"]["value"] = 1.5
    refused(m, "matching.a2v.k2.value is not a fraction in [0, 1]")
    for k in ("k" + "9" * 30, "k0", "k1001", "k" + "9" * 5000):
        m = _metrics()
        m["matching"]["a2v"][k] = m["matching"]["a2v"]["k2"]
        refused(m, "is not k<gallery size> with a size of 1..1000")
    refused(json.dumps(_metrics())[:-1] + ', "huge": 1' + "0" * 5000 + "}", "not usable JSON")
    refused('{"config": ' + "[" * 100_000 + "]" * 100_000 + "}", "not usable JSON")
    refused(_metrics(matching_split=["test"]), "matching_split is not a split name")
    with metrics.open("r+b") as f:
        f.truncate(65 << 20)  # sparse: no 65 MiB written
    refused(None, "refusing a file of 65 MiB, above the 64 MiB cap for it")


def _pair_distance(same) -> dict:
    space = {"same": same, "different": 1.0, "normalised": 0.5}
    return {"n_audio": 6, "n_face": 6, "n_identities_both": 3, "before": space, "after": dict(space)}


def test_report_shows_hostile_names_as_text(tmp_path):
    """Every name the report shows (splits, list names, settings, run directories, the training
    log, the embedding sample's ids) may hold markup or matplotlib mathtext: the page shows them
    as text, the figures draw them literally, and null `items` / `bootstrap` sections are absent
    ones rather than a crash."""
    run, other = tmp_path / "run", tmp_path / XSS_ATTR.replace("/", "")
    for d in (run, other):
        d.mkdir()
    m = _metrics(items=None, bootstrap=None, matching_split=XSS_ATTR + MATHTEXT, shards=XSS, tuples=XSS_UPPER)
    m["verification"][MATHTEXT + XSS] = m["verification"].pop("test")
    m["matching_other"] = {XSS_UPPER: m["matching_other"]["matching_val_a2v_k2"]}
    m["retrieval"] = {XSS_ATTR: m["retrieval"]["test"]}
    m["config"] |= {"adversarial_kind": XSS, "metric_kind": MATHTEXT, XSS_ATTR: 1}
    m["pair_distance"] = _pair_distance(1.0)
    (run / "metrics.json").write_text(json.dumps(m))
    (other / "metrics.json").write_text(json.dumps(_metrics(config={"seed": XSS_UPPER})))
    rows = [{"step": s, "L_total": 1.0 / s, "L_dis": 0.5} for s in range(1, 30)]
    (run / "log.jsonl").write_bytes(
        "\n".join(map(json.dumps, rows)).encode()
        + b'\n{"step": 1' + b"0" * 400 + b', "L_total": 1, "L_dis": 1' + b"0" * 400
        + b'}\n{"step": 31, "L_total": 1' + b"0" * 5000 + b'}\n' + b"[" * 100_000
        + b'\n\xff\xfe{"step": 32}\n{"step": 33, "L_total": NaN, "L_dis": Infinity}\n'
    )  # fmt: skip
    ids = np.array([XSS, XSS_ATTR, MATHTEXT] * 2)
    np.savez(
        run / "embeddings.npz",
        **{f"{mod}_{k}": v for mod in ("audio", "face") for k, v in (("ids", ids), ("keys", ids))},
        **{f"{mod}_before": np.random.default_rng(0).normal(size=(6, 8)) for mod in ("audio", "face")},
        **{f"{mod}_after": np.random.default_rng(1).normal(size=(6, 4)) for mod in ("audio", "face")},
    )
    res = CliRunner().invoke(avtrain_main, ["report", "--run", str(run), "--compare", str(other)])
    assert res.exit_code == 0, res.output
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5  # accuracy-k, ROC, losses, t-SNE, distances
    _assert_inert(page, XSS, XSS_UPPER, XSS_ATTR, MATHTEXT, str(other))


def test_report_refuses_hostile_embedding_samples(tmp_path):
    """embeddings.npz: arrays t-SNE cannot take (widths that differ between the modalities,
    complex numbers, ids that are not strings), more items than a sample has, or arrays that
    unpack to more than a sample's size: one `Error:` line naming the file."""
    run = tmp_path
    (run / "metrics.json").write_text(json.dumps(_metrics()))
    npz = run / "embeddings.npz"
    ids = np.array(["a", "b", "c"])

    def sample(n=3, before=8, face_before=8, dtype=np.float32, ids=ids, save=np.savez):
        save(
            npz,
            audio_ids=ids,
            face_ids=ids,
            audio_before=np.ones((n, before), dtype),
            face_before=np.ones((n, face_before), dtype),
            audio_after=np.ones((n, 4), dtype),
            face_after=np.ones((n, 4), dtype),
        )
        return CliRunner().invoke(avtrain_main, ["report", "--run", str(run)])

    _one_error_line(sample(face_before=9), f"{npz}: audio_before and face_before have different widths")
    _one_error_line(sample(dtype=np.complex64), f"{npz}: audio_before is not 3 rows of real numbers")
    _one_error_line(sample(ids=np.arange(3)), f"{npz}: audio_ids is not a list of ids (strings)")
    with npz.open("r+b") as f:
        f.truncate(65 << 20)  # sparse: no 65 MiB written
    _one_error_line(
        CliRunner().invoke(avtrain_main, ["report", "--run", str(run)]),
        f"{npz}: refusing a file of 65 MiB, above the 64 MiB cap",
    )
    _one_error_line(sample(n=201, ids=np.array([f"id{i}" for i in range(201)])), f"{npz}: more than the 400")
    big = 70 << 20  # bytes of zeros: a 70 kB file
    _one_error_line(sample(n=1, before=big // 8, ids=ids[:1], dtype=np.float64, save=np.savez_compressed),
                    f"{npz}: its arrays unpack to more than 64 MiB")  # fmt: skip
    # rows all equal (a collapsed model's embeddings): sklearn's t-SNE crashed the process on them
    assert sample().exit_code == 0
    assert "all embeddings before the generator are equal (one point)" in (run / "report.html").read_text()


def test_lists_are_read_from_the_manifest_not_from_names(tmp_path):
    index = tmp_path / "index"
    index.mkdir()
    t = {"tuple_id": "t0", "direction": "a2v", "query": "a1", "query_identity": "id1", "split": "seen_heard"}
    t |= {"gallery": ["f1", "f2"], "gallery_identities": ["id1", "id2"], "label": 0}
    # names that a name parser would misread: only the manifest's configs count
    (index / "matching_x_v2a_k9.jsonl").write_text(json.dumps(t) + "\n")
    (index / "matching_seen_heard_v2a_k3.jsonl").write_text("")  # empty: left out
    (index / "verification_imported_veriflist_test.jsonl").write_text(
        json.dumps(t | {"gallery": ["f1"], "gallery_identities": ["id1"], "split": "unseen_unheard"}) + "\n"
    )
    (index / "matching_not_listed_a2v_k2.jsonl").write_text(
        json.dumps(t) + "\n"
    )  # not in the manifest: ignored

    def entry(**cfg):
        return {"sha256": "0" * 64, "config": {"direction": "a2v", "k": 1, "constrain": []} | cfg}

    manifest = {
        "kind": "avmatch.tuples",
        "format_version": 1,
        "shards": {},
        "files": {
            "index/matching_x_v2a_k9.jsonl": entry(
                task="matching", split="seen_heard", k=2, constrain=["gender", "nationality"]
            ),
            "index/matching_seen_heard_v2a_k3.jsonl": entry(
                task="matching", split="seen_heard", direction="v2a", k=3
            ),
            "index/verification_imported_veriflist_test.jsonl": entry(
                task="verification", split="unseen_unheard"
            ),
        },
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    lists = {tl.name: tl for tl in read_tuple_lists(tmp_path)}
    assert set(lists) == {"matching_x_v2a_k9", "verification_imported_veriflist_test"}
    m = lists["matching_x_v2a_k9"]
    assert (m.split, m.direction, m.k, m.constraint) == ("seen_heard", "a2v", 2, "gender+nationality")
