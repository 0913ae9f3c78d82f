"""The FAME challenge end to end (avtrain/serve/fame.py, docs/fame.md): the score files' format
and checks, each file's EER and the overall score (the mean of the four), and the recipe on the
synthetic corpus laid out as MAV-Celeb: build shards per training language, (the frozen encoders'
feature stores,) make-tuples, fit FOP (from scratch, or on Resemblyzer + dlib features),
fame-score the heard and unheard lists, fame-summary."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import one_line_error

from avdata.cli import main as avdata_main
from avdata.synth import synth_corpus
from avtrain.cli import main as avtrain_main
from avtrain.serve.errors import InferenceError
from avtrain.serve.fame import (
    fame_summary,
    file_eer,
    find_files,
    read_key,
    read_submission,
    submission_name,
    write_submission,
)

LANGS = ("English", "Urdu")


def run_cli(main, *args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.output
    return res


def write_lines(path: Path, lines) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


@pytest.fixture
def fame_files(tmp_path):
    """Four score files of v1 (two models x heard/unheard) with random L2 scores, their keys and
    lists: (dir of score files, keys dir, lists dir)."""
    rng = np.random.default_rng(0)
    keys, lists, subs = tmp_path / "keys", tmp_path / "lists", tmp_path / "sub"
    for lang in LANGS:
        ids = [f"{lang[0].lower()}{i:05d}" for i in range(20)]
        labels = rng.permutation(np.arange(20) % 2)
        write_lines(keys / f"{lang}_test.txt", [f"{i} {y}" for i, y in zip(ids, labels)])
        write_lines(
            lists / f"{lang}_test.txt",
            [f"{i} voices/{lang}/{n:05d}.wav faces/{lang}/{n:05d}.jpg" for n, i in enumerate(ids)],
        )
    for heard, unheard in (LANGS, LANGS[::-1]):
        for cond, lang in (("heard", heard), ("unheard", unheard)):
            ids, y = read_key(keys / f"{lang}_test.txt")
            dist = rng.normal(1.0, 0.3, len(ids)) - 0.4 * y  # a model that is better than chance
            write_lines(subs / submission_name("v1", heard, cond), [f"{i} {d:f}" for i, d in zip(ids, dist)])
    return subs, keys, lists


# ---------------------------------------------------------------- file format, fast


def test_submission_names_are_computescore_s():
    assert submission_name("v1", "English", "heard") == "sub_score_v1_English_heard.txt"
    assert submission_name("v3", "German", "unheard") == "sub_score_v3_German_unheard.txt"
    for bad in (("1", "English", "heard"), ("v1", "../x", "heard"), ("v1", "English", "seen")):
        with pytest.raises(InferenceError):
            submission_name(*bad)


def test_summary_is_the_mean_of_the_four_eers(fame_files):
    subs, keys, lists = fame_files
    s = fame_summary([subs], keys, lists)
    assert [(r["heard"], r["condition"], r["test_language"]) for r in s["files"]] == [
        ("English", "heard", "English"),
        ("English", "unheard", "Urdu"),
        ("Urdu", "heard", "Urdu"),
        ("Urdu", "unheard", "English"),
    ]
    recomputed = []
    for r in s["files"]:
        _, scores = read_submission(r["file"])
        _, labels = read_key(keys / f"{r['test_language']}_test.txt")
        recomputed.append(file_eer(scores, labels))
        assert r["eer"] == recomputed[-1]
    assert s["overall_eer"] == pytest.approx(np.mean(recomputed), abs=1e-15)  # one float mean of four
    assert 0 < s["overall_eer"] < 0.5
    out = run_cli(avtrain_main, "fame-summary", *sorted(subs.iterdir()), "--keys", keys, "--json").output
    assert json.loads(out)["overall_eer"] == s["overall_eer"]
    text = run_cli(avtrain_main, "fame-summary", subs, "--keys", keys).output
    assert f"overall score (mean of the four EERs): {100 * s['overall_eer']:.2f}" in text


def test_eer_is_the_baselines(fame_files):
    """The baseline's test.py: brentq on interp1d of sklearn's ROC of -L2: the same crossing."""
    from scipy.interpolate import interp1d
    from scipy.optimize import brentq
    from sklearn import metrics

    rng = np.random.default_rng(1)
    for n in (7, 50, 301):
        y = rng.integers(0, 2, n)
        y[:2] = (0, 1)
        d = rng.normal(1.0, 0.5, n) - 0.3 * y
        fpr, tpr, _ = metrics.roc_curve(y, -d)
        baseline = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
        assert file_eer(d, y) == pytest.approx(baseline, abs=1e-9)  # brentq's xtol is 2e-12


def test_summary_bad_files_are_one_line_each(fame_files, tmp_path):
    subs, keys, lists = fame_files
    eng = subs / "sub_score_v1_English_heard.txt"
    good = eng.read_text()

    def summary(*extra):
        return run_cli(avtrain_main, "fame-summary", subs, "--keys", keys, *extra, ok=False)

    eng.unlink()
    one_line_error(summary(), "needs four files", "missing sub_score_v1_English_heard.txt")
    res = run_cli(avtrain_main, "fame-summary", tmp_path / "nowhere.txt", "--keys", keys, ok=False)
    one_line_error(res, "nowhere.txt: score file not found")
    eng.write_text(good)
    res = run_cli(avtrain_main, "fame-summary", subs, "--keys", tmp_path, ok=False)
    one_line_error(res, str(tmp_path / "English_test.txt"), "key file not found")
    lines = good.splitlines()
    eng.write_text("\n".join(lines[:-1]) + "\n")
    one_line_error(summary(), f"{eng}: 19 score line(s), but {keys / 'English_test.txt'} has 20 ID(s)")
    eng.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    one_line_error(
        summary(), "score line 1 has ID 'e00001'", "has 'e00000' there", "the lines are out of its order"
    )
    eng.write_text("\n".join(["zzz 1.0", *lines[1:]]) + "\n")
    one_line_error(summary(), "score line 1 has ID 'zzz'", "'zzz' is not in it")
    eng.write_text("\n".join([lines[0].split()[0] + " nan", *lines[1:]]) + "\n")
    one_line_error(summary(), f"{eng}:1: score 'nan' is not a finite number")
    eng.write_text("\n".join([lines[0] + " extra", *lines[1:]]) + "\n")
    one_line_error(summary(), f"{eng}:1: expected 'ID SCORE', got 3 field(s)")
    eng.write_text(good)
    (subs / "sub_score_v2_English_heard.txt").write_text(good)
    one_line_error(summary(), "several versions (v1, v2)")
    (subs / "sub_score_v2_English_heard.txt").unlink()
    # the key and the list disagree: the list check names the list
    lst = lists / "English_test.txt"
    lst.write_text("\n".join(reversed(lst.read_text().splitlines())) + "\n")
    one_line_error(summary("--lists", lists), f"{lst} has 'e00019' there")
    assert run_cli(avtrain_main, "fame-summary", subs, "--keys", keys).exit_code == 0


def test_summary_refuses_symlinks_leading_out_of_its_folders(fame_files, tmp_path):
    """Keys, lists and score files are looked up in folders avmatch did not write: a symlink there
    that leads outside is refused in one line, naming the file (avdata.untrusted.resolve_inside)."""
    subs, keys, lists = fame_files
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for folder, name, extra in (
        (keys, "English_test.txt", ()),
        (lists, "English_test.txt", ("--lists", lists)),
        (subs, "sub_score_v1_English_heard.txt", ()),
    ):
        link = folder / name
        target = outside / f"{folder.name}_{name}"
        link.rename(target)
        link.symlink_to(target)
        res = run_cli(avtrain_main, "fame-summary", subs, "--keys", keys, *extra, ok=False)
        one_line_error(res, str(folder), repr(name), "a symlink leads outside")
        link.unlink()
        target.rename(link)
    assert run_cli(avtrain_main, "fame-summary", subs, "--keys", keys, "--lists", lists).exit_code == 0


def test_fame_score_checks_lists_and_keys_before_scoring(tmp_path):
    from helpers import save_random_run

    run = save_random_run(tmp_path / "run")
    lists, keys = tmp_path / "lists", tmp_path / "keys"
    write_lines(lists / "English_test.txt", ["e1 voices/English/00000.wav faces/English/00000.jpg"])
    write_lines(keys / "English_test.txt", ["e1 1"])
    base = ["fame-score", "--run", run, "--lists", lists, "--root", tmp_path, "--heard", "English"]
    base += ["--unheard", "Urdu", "--out", tmp_path / "sub", "--no-progress"]
    res = run_cli(avtrain_main, *base, "--mav-version", "v1", ok=False)
    one_line_error(res, str(lists / "Urdu_test.txt"), "not found")
    write_lines(lists / "Urdu_test.txt", ["u1 voices/Urdu/00000.wav faces/Urdu/00000.jpg"])
    res = run_cli(avtrain_main, *base, "--mav-version", "v1", "--keys", keys, ok=False)
    one_line_error(res, str(keys / "Urdu_test.txt"), "not found")
    write_lines(keys / "Urdu_test.txt", ["u2 1"])
    res = run_cli(avtrain_main, *base, "--mav-version", "v1", "--keys", keys, ok=False)
    one_line_error(res, f"{lists / 'Urdu_test.txt'}: pair 1 has ID 'u1'", "'u1' is not in it")
    one_line_error(run_cli(avtrain_main, *base, "--mav-version", "1", ok=False), "--mav-version")
    assert not (tmp_path / "sub").exists()  # nothing scored, nothing written


def test_find_files_refuses_other_names_and_incomplete_sets(fame_files, tmp_path):
    subs, _, _ = fame_files
    other = write_lines(tmp_path / "scores.txt", ["a 1.0"])
    with pytest.raises(InferenceError, match="not a FAME score file name"):
        find_files([subs, other])
    with pytest.raises(InferenceError, match="needs four files"):
        find_files(sorted(subs.iterdir())[:3])
    assert len(find_files([subs])) == 4


def test_unscorable_pairs_are_filled_as_non_matches(tmp_path):
    raw = write_lines(tmp_path / "raw.txt", ["a 0.5", "b nan", "c 1.25", "d 0.75"])
    out = tmp_path / "sub.txt"
    got = write_submission(raw, ["a", "b", "c", "d"], out)
    assert got == {"failed": ["b"], "fill": 1.25}
    assert out.read_text() == "a 0.500000\nb 1.250000\nc 1.250000\nd 0.750000\n"
    ids, scores = read_submission(out)  # a valid submission: every score finite
    assert ids == ["a", "b", "c", "d"] and np.isfinite(scores).all()
    with pytest.raises(InferenceError, match="the lines are out of its order"):
        write_submission(raw, ["b", "a", "c", "d"], tmp_path / "x.txt")
    write_lines(raw, ["a nan", "b nan"])
    with pytest.raises(InferenceError, match="no pair of the list could be scored"):
        write_submission(raw, ["a", "b"], tmp_path / "y.txt")
    assert not (tmp_path / "y.txt").exists()


def test_key_format(tmp_path):
    key = write_lines(tmp_path / "English_test.txt", ["x 1", "y 0 extra", "", "z 1"])
    ids, labels = read_key(key)
    assert ids == ["x", "y", "z"] and labels.tolist() == [1, 0, 1]
    write_lines(key, ["x 1", "y 2"])
    with pytest.raises(InferenceError, match=r"English_test.txt:2: expected 'ID LABEL'"):
        read_key(key)
    write_lines(key, ["x 1", "x 0"])
    with pytest.raises(InferenceError, match="ID 'x' repeats line 1"):
        read_key(key)


def test_synthetic_mavceleb_test_lists_have_labelled_trials(tmp_path):
    """avdata synth --layout mavceleb: per test video a positive and a negative trial, each line
    its own copies, the key in the list's order; the label says whether voice and face come from
    one identity (checked by the copies' bytes against the identity folders)."""
    import hashlib

    corpus = tmp_path / "c"
    synth_corpus(corpus, identities=8, clips_per_identity=2, faces_per_identity=2, seed=1, layout="mavceleb")
    owner = {}
    for root in ("voices", "faces"):
        for p in (corpus / root).glob("id*/*/*/*"):
            owner[hashlib.sha256(p.read_bytes()).hexdigest()] = p.relative_to(corpus / root).parts[0]
    for lang in LANGS:
        lines = (corpus / "lists" / f"{lang}_test.txt").read_text().splitlines()
        ids, labels = read_key(corpus / "lists" / "keys" / f"{lang}_test.txt")
        assert [ln.split()[0] for ln in lines] == ids and 0 < labels.sum() < len(ids)
        for ln, y in zip(lines, labels):
            _, voice, face = ln.split()
            assert voice.startswith(f"voices/{lang}/") and face.startswith(f"faces/{lang}/")
            who = [owner[hashlib.sha256((corpus / f).read_bytes()).hexdigest()] for f in (voice, face)]
            assert (who[0] == who[1]) == bool(y), (ln, who, y)


# ---------------------------------------------------------------- the recipe end to end


FROZEN = ("model.voice_encoder=resemblyzer", "model.face_encoder=dlib")


def run_recipe(tmp_path: Path, method: str, *sets: str) -> dict:
    """docs/fame.md's recipe on a tiny synthetic MAV-Celeb, one test voice file unreadable: for each
    training language, shards with the fame protocol, (with frozen encoders in ``sets``: the
    Resemblyzer and dlib feature stores,) matching tuples, ``method`` for two steps, fame-score with
    the keys; each file checked (one line per list ID in the list's order, every score a number,
    the unreadable file's pair named and filled); then fame-summary's overall score checked against
    the four EERs recomputed from the files. Returns the paths and each command's output."""
    corpus = tmp_path / "c"
    synth_corpus(corpus, identities=8, clips_per_identity=2, faces_per_identity=2, seed=1, layout="mavceleb")
    (corpus / "voices" / "English" / "00002.wav").write_bytes(b"not a wav")
    lists, keys, sub = corpus / "lists", corpus / "lists" / "keys", tmp_path / "sub"
    bad_id = (lists / "English_test.txt").read_text().splitlines()[2].split()[0]
    out = {"corpus": corpus, "lists": lists, "keys": keys, "sub": sub, "output": {}}
    for heard, unheard in (LANGS, LANGS[::-1]):
        shards, tuples, run = (tmp_path / f"{x}_{heard}" for x in ("shards", "tuples", "run"))
        run_cli(
            avdata_main, "build-shards", "--corpus", "mavceleb", "--audio", corpus / "voices",
            "--faces", corpus / "faces", "--meta", corpus / "v1_meta.csv", "--languages", f"{heard},{unheard}",
            "--splits", lists, "--out", shards, "--shard-size", "4", "--no-progress",
        )  # fmt: skip
        if FROZEN[0] in sets:
            out["output"][f"features-{heard}"] = run_cli(
                avtrain_main, "features", "--shards", shards, "--encoder", "resemblyzer", "--audio", corpus / "voices"
            ).output + run_cli(avtrain_main, "features", "--shards", shards, "--encoder", "dlib").output  # fmt: skip
        run_cli(avdata_main, "make-tuples", "--shards", shards, "--task", "matching", "--k", "2",
                "--split", "train", "--out", tuples)  # fmt: skip
        out["output"][f"fit-{heard}"] = run_cli(
            avtrain_main, "fit", "--shards", tuples, "--out", run, "--epochs", "1", "--no-progress",
            *[a for s in (f"method={method}", "batch_size=8", "workers=0", "threads=1", "max_steps_per_epoch=2",
                          *sets) for a in ("--set", s)],
        ).output  # fmt: skip
        res = run_cli(
            avtrain_main, "fame-score", "--run", run, "--lists", lists, "--root", corpus, "--heard", heard,
            "--unheard", unheard, "--mav-version", "v1", "--out", sub, "--keys", keys, "--no-progress",
        )  # fmt: skip
        out["output"][f"fame-score-{heard}"] = res.output
        assert ("1 pair(s) could not be scored (" + bad_id) in res.output
        for cond, lang in (("heard", heard), ("unheard", unheard)):
            f = sub / submission_name("v1", heard, cond)
            want = [ln.split()[0] for ln in (lists / f"{lang}_test.txt").read_text().splitlines()]
            rows = [ln.split() for ln in f.read_text().splitlines()]
            assert [r[0] for r in rows] == want and all(
                len(r) == 2 for r in rows
            )  # one line per ID, in order
            assert np.isfinite([float(r[1]) for r in rows]).all()
            assert f"{f}: {len(want)} pairs of {lists / f'{lang}_test.txt'}" in res.output
    out_json = run_cli(avtrain_main, "fame-summary", sub, "--keys", keys, "--lists", lists, "--json").output
    s = json.loads(out_json)
    recomputed = [
        file_eer(read_submission(r["file"])[1], read_key(keys / f"{r['test_language']}_test.txt")[1])
        for r in s["files"]
    ]
    assert [r["eer"] for r in s["files"]] == recomputed
    assert s["overall_eer"] == pytest.approx(sum(recomputed) / 4, abs=1e-15)
    text = run_cli(avtrain_main, "fame-summary", sub, "--keys", keys).output
    assert f"overall score (mean of the four EERs): {100 * s['overall_eer']:.2f}" in text
    out["summary"] = s
    return out


def test_fame_recipe_end_to_end(tmp_path, one_torch_thread):
    """docs/fame.md's recipe from scratch (FOP's trained branches), run_recipe's checks; the
    submission folder holds the four files and avtrain score's own files apart."""
    got = run_recipe(tmp_path, "fop")
    sub = got["sub"]
    shutil.rmtree(sub / "scores")  # the submission is the four files; avtrain score's own stay apart
    assert sorted(p.name for p in sub.iterdir()) == sorted(
        submission_name("v1", h, c) for h in LANGS for c in ("heard", "unheard")
    )


def test_fame_recipe_with_frozen_encoders(tmp_path, one_torch_thread):
    """docs/fame.md's recipe with frozen encoders (FOP on Resemblyzer voices and dlib faces),
    run_recipe's checks, and: no leakage warning (MAV-Celeb is in no encoder card's training
    data); fame-score runs the run's encoders on the raw test files, no fallback: a line's score is
    the L2 distance between the embeddings load_model gives that pair's voice and face, through
    Resemblyzer and dlib."""
    from avtrain.serve.model import load_model

    got = run_recipe(tmp_path, "fop", *FROZEN)
    for name, text in got["output"].items():
        assert "warning: encoder" not in text and "leakage not checked" not in text, (name, text)
    for heard in LANGS:
        assert "items embedded" in got["output"][f"features-{heard}"]
    model = load_model(tmp_path / "run_English")
    assert {m: e.card.name for m, e in model.encoders.items()} == {"audio": "resemblyzer", "face": "dlib"}
    rejects = got["sub"] / "scores" / "English_model.Urdu_test.txt.rejects.jsonl"
    failed = {json.loads(ln)["id"] for ln in rejects.read_text().splitlines()}
    lines = [ln.split() for ln in (got["lists"] / "Urdu_test.txt").read_text().splitlines()]
    ids, voice, face = next(ln for ln in lines if ln[0] not in failed)
    unheard = got["sub"] / submission_name("v1", "English", "unheard")
    scored = dict(ln.split() for ln in unheard.read_text().splitlines())
    distance = -model.score(model.embed_voice(got["corpus"] / voice), model.embed_face(got["corpus"] / face))
    # written '%f' (to 5e-7), embedded in a batch there and alone here (float32 sums: ~1e-7)
    assert float(scored[ids]) == pytest.approx(distance, abs=2e-6)
