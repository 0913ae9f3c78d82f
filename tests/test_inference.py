"""avtrain embed / match / score / export and avtrain.load_model on raw media of the synthetic
corpus: raw-media embeddings equal the shard path's (evaluate), score's AUC equals evaluate's on
the same pairs, bad files become rejects, list paths never leave --root, exports hold no pickle."""

from __future__ import annotations

import dataclasses
import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import EMBEDDING_RTOL, fifo_that_never_blocks, make_tuples_args, save_random_run

from avtrain.cli import main as avtrain_main
from avtrain.serve.pairs import PINS_HEADER


def _avdata(args):
    from avdata.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def _avtrain(args, code=0):
    res = CliRunner().invoke(avtrain_main, [str(a) for a in args])
    assert res.exit_code == code, res.output
    return res


def _write_wav(path: Path, samples: np.ndarray, sr: int = 16000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


@pytest.fixture(scope="module")
def setup(train_tuples, tmp_path_factory, one_torch_thread):
    """The session's synthetic corpus and shards, verification tuples on its test split, a
    randomly initialised run (enough for consistency), and a folder of bad files."""
    root = train_tuples.parent
    tmp = tmp_path_factory.mktemp("inference")
    ev = tmp / "ev"
    _avdata(
        make_tuples_args(root / "shards", ev, "--pairs-per-identity", "4", task="verification", split="test")
    )
    run = save_random_run(tmp / "run", seed=3, tuples=train_tuples)  # records the shards' settings
    bad = tmp / "bad"
    bad.mkdir()
    _write_wav(bad / "silent.wav", np.zeros(32000))
    (bad / "empty.wav").write_bytes(b"")
    (bad / "not_an_image.jpg").write_bytes(b"this is text, not a JPEG\n" * 20)
    from PIL import Image

    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(bad / "no_face.png")  # flat grey
    return {
        "root": root,
        "corpus": root / "corpus",
        "shards": root / "shards",
        "ev": ev,
        "run": run,
        "tmp": tmp,
        "bad": bad,
    }


def _shard_embeddings(s) -> dict[str, dict[str, np.ndarray]]:
    """Every shard item embedded by the evaluate path, keyed by its source file (relative path)."""
    from avdata.reader import index_items
    from avtrain.evaluation.embeddings import embed_items
    from avtrain.run.checkpoint import load_run

    model, _, _ = load_run(s["run"], torch.device("cpu"))
    items = index_items(s["shards"])
    emb = embed_items(model, items, s["shards"], 16, torch.device("cpu"), set())
    source = dict(zip(items["key"], items["source"]))
    out = {}
    for mod in ("audio", "face"):
        out[mod] = {
            source[k]: emb.h[mod][i]
            for i, k in enumerate(emb.keys[mod])
            if mod == "face" or k.endswith("_w0")
        }
    return out


def test_embed_equals_shard_path_and_rejects_bad_files(setup):
    """embed on raw trees gives the evaluate (shard) embeddings within EMBEDDING_RTOL of their scale; missing, empty,
    silent, non-image and no-face files are listed as rejects with a reason, the rest embedded."""
    c, bad = setup["corpus"], setup["bad"]
    out = setup["tmp"] / "emb.npz"
    res = _avtrain(
        [
            "embed",
            "--run",
            setup["run"],
            "--audio",
            c / "wav",
            "--audio",
            bad / "silent.wav",
            "--audio",
            bad / "empty.wav",
            "--audio",
            bad / "missing.wav",
            "--faces",
            c / "faces",
            "--faces",
            bad / "not_an_image.jpg",
            "--faces",
            bad / "no_face.png",
            "--out",
            out,
            "--no-progress",
            "--batch-size",
            "7",
        ]
    )
    assert "rejected" in res.output
    from avtrain.serve.embed import read_embeddings

    got = read_embeddings(out)
    reasons = {Path(r["path"]).name: r["reason"] for r in got.rejects}
    assert "silent audio" in reasons["silent.wav"]
    assert "empty file" in reasons["empty.wav"]
    assert "file not found" in reasons["missing.wav"]
    assert "not a recognised image" in reasons["not_an_image.jpg"]
    assert "no face detected" in reasons["no_face.png"]

    ref = _shard_embeddings(setup)
    for mod, keys, h, base in (
        ("audio", got.voice_keys, got.voice, c / "wav"),
        ("face", got.face_keys, got.face, c / "faces"),
    ):
        raw = {Path(k).relative_to(base).as_posix(): h[i] for i, k in enumerate(keys)}
        assert set(raw) == set(ref[mod]) and len(raw) > 10  # same files kept, same files rejected
        scale = max(float(np.linalg.norm(v)) for v in ref[mod].values())
        diff = max(float(np.abs(raw[k] - ref[mod][k]).max()) for k in raw)
        assert diff <= EMBEDDING_RTOL * scale, (mod, diff, scale)


def test_score_verification_list_gives_evaluate_auc(setup):
    """The shard verification pairs written as a 'label voice face' list: score's AUC, EER and
    their CIs are exactly evaluate's."""
    from avdata.reader import index_items

    m = json.loads(
        _avtrain(
            [
                "evaluate",
                "--run",
                setup["run"],
                "--shards",
                setup["shards"],
                "--tuples",
                setup["ev"],
                "--out",
                setup["tmp"] / "metrics.json",
                "--bootstrap",
                "200",
            ]
        ).output
        and (setup["tmp"] / "metrics.json").read_text()
    )["verification"]["test"]
    items = index_items(setup["shards"])
    source = dict(zip(items["key"], items["source"]))
    pairs = [
        json.loads(ln) for ln in (setup["ev"] / "index" / "verification_test.jsonl").read_text().splitlines()
    ]
    lines = []
    for p in pairs:
        a, f = (p["query"], p["gallery"][0]) if p["direction"] == "a2v" else (p["gallery"][0], p["query"])
        lines.append(f"{p['label']} wav/{source[a]} faces/{source[f]}")
    plist = setup["tmp"] / "veri.txt"
    plist.write_text("\n".join(lines) + "\n")
    out = setup["tmp"] / "veri.scores"
    res = _avtrain(
        [
            "score",
            "--run",
            setup["run"],
            "--pairs",
            plist,
            "--root",
            setup["corpus"],
            "--out",
            out,
            "--bootstrap",
            "200",
            "--no-progress",
        ]
    )
    assert "AUC" in res.output and "-L2" in res.output
    summary = json.loads((setup["tmp"] / "veri.scores.metrics.json").read_text())
    assert summary["format"] == "labelled" and summary["scored"] == len(pairs) == m["n"]
    assert summary["metrics"]["auc"] == m["auc"]  # value and CI, exactly
    assert summary["metrics"]["eer"] == m["eer"]
    rows = [ln.split() for ln in out.read_text().splitlines()]
    assert [r[0] for r in rows] == [str(i) for i in range(1, len(pairs) + 1)]
    assert all(float(r[1]) < 0 for r in rows)  # -L2 for labelled lists


def _fame_root(setup, tmp_path: Path) -> tuple[Path, str, str]:
    """A --root holding copies of one corpus voice and face and of the bad files (copies, not
    symlinks: a symlink leading out of --root is refused); (root, voice path, face path)."""
    import shutil

    c = setup["corpus"]
    wav = min((c / "wav").rglob("*.wav")).relative_to(c).as_posix()
    face = min((c / "faces").rglob("*.jpg")).relative_to(c).as_posix()
    root = tmp_path / "root"
    for rel in (wav, face):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(c / rel, root / rel)
    shutil.copytree(setup["bad"], root / "bad")
    return root, wav, face


def _score(setup, plist: Path, root: Path, out: Path, *extra, code=0):
    return _avtrain(
        [
            "score",
            "--run",
            setup["run"],
            "--pairs",
            plist,
            "--root",
            root,
            "--out",
            out,
            "--no-progress",
            *extra,
        ],
        code=code,
    )


def _rejects(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in out.with_name(out.name + ".rejects.jsonl").read_text().splitlines()]


def test_score_fame_list_marks_bad_pairs_and_refuses_unsafe_paths(setup, tmp_path):
    """FAME 'ID voice face': one line per pair in list order, L2 distances (>= 0); a pair with a
    missing, silent or faceless file or a path leaving --root gets 'nan' and a reject entry."""
    c = setup["corpus"]
    root, wav, face = _fame_root(setup, tmp_path)
    lines = [
        f"p00 {wav} {face}",
        f"p01 {wav} faces/missing.jpg",
        f"p02 bad/silent.wav {face}",
        f"p03 {wav} bad/no_face.png",
        f"p04 ../{wav} {face}",
        f"p05 /etc/passwd {face}",
        f"p06 pipe:cat {face}",
        f"p07 {wav} bad/not_an_image.jpg",
        f"p08 {wav} {face}",
    ]
    plist = tmp_path / "English_test.txt"
    plist.write_text("\n".join(lines) + "\n")
    out = tmp_path / "sub_score.txt"
    res = _avtrain(
        ["score", "--run", setup["run"], "--pairs", plist, "--root", root, "--out", out, "--no-progress"]
    )
    assert "L2 distance" in res.output and "lower = same person" in res.output
    rows = [ln.split() for ln in out.read_text().splitlines()]
    assert [r[0] for r in rows] == [f"p0{i}" for i in range(9)]
    assert [r[1] == "nan" for r in rows] == [False, True, True, True, True, True, True, True, False]
    assert float(rows[0][1]) > 0 and rows[0][1] == rows[8][1]
    from avtrain.serve.model import load_model

    model = load_model(setup["run"])
    d = -model.score(model.embed_voice(c / wav), model.embed_face(c / face))
    assert float(rows[0][1]) == pytest.approx(d, rel=EMBEDDING_RTOL, abs=1e-5)  # abs: the file's digits
    rejects = {
        r["id"]: r["reasons"][0]["reason"]
        for r in map(json.loads, (tmp_path / "sub_score.txt.rejects.jsonl").read_text().splitlines())
    }
    assert sorted(rejects) == [f"p0{i}" for i in range(1, 8)]
    assert "file not found" in rejects["p01"] and "silent" in rejects["p02"] and "no face" in rejects["p03"]
    assert "'..'" in rejects["p04"] and "absolute" in rejects["p05"] and "URL" in rejects["p06"]
    assert "not a recognised image" in rejects["p07"]
    assert not (tmp_path / "sub_score.txt.metrics.json").exists()  # FAME lists carry no labels


def test_score_refuses_symlinks_leading_outside_root(setup, tmp_path):
    """#20 item 10: a symlink inside --root to a file or a folder outside it is a refused path
    (nan + reject), never read; a symlink that stays inside --root is followed."""
    c = setup["corpus"]
    root, wav, face = _fame_root(setup, tmp_path)
    (root / "leak.wav").symlink_to(c / wav)  # a file outside --root
    (root / "outside").symlink_to(c / "faces")  # a folder outside --root
    (root / "inside.jpg").symlink_to(root / face)  # stays inside: fine
    (root / "loop.wav").symlink_to(root / "loop.wav")
    face_rel = Path(face).relative_to("faces").as_posix()
    plist = tmp_path / "list.txt"
    plist.write_text(
        f"a {wav} {face}\nb leak.wav {face}\nc {wav} outside/{face_rel}\nd {wav} inside.jpg\ne loop.wav {face}\n"
    )
    out = tmp_path / "s.txt"
    _score(setup, plist, root, out)
    rows = dict(ln.split() for ln in out.read_text().splitlines())
    assert rows["a"] == rows["d"] != "nan"
    assert rows["b"] == rows["c"] == rows["e"] == "nan"
    reasons = {r["id"]: r["reasons"][0]["reason"] for r in _rejects(out)}
    assert sorted(reasons) == ["b", "c", "e"]
    assert "symlink leads outside" in reasons["b"] and "symlink leads outside" in reasons["c"]
    assert reasons["b"].startswith("unsafe path refused")


def test_a_path_component_over_255_bytes_is_a_reject_of_its_item_only(setup, tmp_path):
    """#20 item 12: a name the OS refuses (ENAMETOOLONG) rejects its pair / file / gallery
    item, never the run."""
    root, wav, face = _fame_root(setup, tmp_path)
    long_name = "x" * 300 + ".wav"
    plist = tmp_path / "list.txt"
    plist.write_text(f"a {wav} {face}\nb {long_name} {face}\nc {wav} {'y' * 300}/f.jpg\n")
    out = tmp_path / "s.txt"
    _score(setup, plist, root, out)
    rows = [ln.split() for ln in out.read_text().splitlines()]
    assert [r[1] == "nan" for r in rows] == [False, True, True]
    rejects = _rejects(out)
    assert [r["id"] for r in rejects] == ["b", "c"]
    assert all("name too long" in r["reasons"][0]["reason"] for r in rejects)

    res = _avtrain(
        ["embed", "--run", setup["run"], "--audio", root / wav, "--audio", tmp_path / long_name]
        + ["--out", tmp_path / "e.npz", "--no-progress"]
    )
    assert "1 voice(s), 0 face(s), 1 reject(s)" in res.output and "name too long" in res.output

    result = json.loads(
        _avtrain(
            [
                "match",
                "--run",
                setup["run"],
                "--voice",
                root / wav,
                root / face,
                tmp_path / ("y" * 300 + ".jpg"),
            ]
            + ["--json"]
        ).output
    )
    assert len(result["ranking"]) == 1 and "name too long" in result["rejects"][0]["reason"]


def test_score_rejects_name_the_file_line_and_a_nul_byte(setup, tmp_path):
    """#20 item 22: a reject's "line" is the pair's 1-based line in the list file (blank lines
    counted), and a path with a NUL byte is reported as such, not as an empty path."""
    root, wav, face = _fame_root(setup, tmp_path)
    plist = tmp_path / "list.txt"
    plist.write_text(f"\na {wav} {face}\n\n\nb missing.wav {face}\nc {wav} fa\x00ce.jpg\n")
    out = tmp_path / "s.txt"
    _score(setup, plist, root, out)
    got = {r["id"]: (r["line"], r["reasons"][0]["reason"]) for r in _rejects(out)}
    assert got["b"] == (5, "file not found")
    assert got["c"][0] == 6 and "NUL byte" in got["c"][1] and "empty" not in got["c"][1]


def test_score_refuses_repeated_pair_ids(setup, tmp_path):
    """#20 item 18: a FAME or pins-csv list with a repeated ID is refused in one line naming both
    lines, before any work (the score file would be an invalid FAME submission)."""
    root, wav, face = _fame_root(setup, tmp_path)
    plist = tmp_path / "list.txt"
    plist.write_text(f"p1 {wav} {face}\np2 {wav} {face}\n\np1 {wav} {face}\n")
    out = tmp_path / "s.txt"
    res = _score(setup, plist, root, out, code=1)
    assert (
        res.output
        == f"Error: {plist}:4: pair ID 'p1' repeats line 1; pair IDs must be unique (a FAME submission has one score per ID)\n"
    )
    assert not out.exists()
    csv = tmp_path / "pins.txt"
    csv.write_text(",".join(PINS_HEADER) + f"\n7,a,b,1,{wav},{face}\n7,a,c,0,{wav},{face}\n")
    assert "pins.txt:3: pair ID '7' repeats line 2" in _score(setup, csv, root, out, code=1).output


def test_score_list_format_ignores_a_bom_and_refuses_ambiguous_lists(setup, tmp_path):
    """#20 item 8: a labelled list saved with a UTF-8 BOM is still labelled (neg_l2, AUC), as is
    a pins-csv one; a list that fits both formats or neither is refused in one line."""
    root, wav, face = _fame_root(setup, tmp_path)
    body = "".join(f"{label} {wav} {face}\n" for label in (1, 0, 1, 0))
    plist = tmp_path / "veri.txt"
    plist.write_bytes(b"\xef\xbb\xbf" + body.encode())
    out = tmp_path / "s.txt"
    res = _score(setup, plist, root, out)
    assert "4/4 pairs scored (labelled list)" in res.output and "AUC" in res.output
    assert [ln.split()[0] for ln in out.read_text().splitlines()] == ["1", "2", "3", "4"]
    assert all(float(ln.split()[1]) < 0 for ln in out.read_text().splitlines())
    csv = tmp_path / "pins.txt"
    csv.write_bytes(b"\xef\xbb\xbf" + (",".join(PINS_HEADER) + f"\n1,a,b,1,{wav},{face}\n").encode())
    assert "1/1 pairs scored (pins-csv list)" in _score(setup, csv, root, out).output

    broken = tmp_path / "broken.txt"
    broken.write_text(body + f"label {wav} {face}\n")  # a labelled list with one bad line
    res = _score(setup, broken, root, out, code=1)
    assert (
        res.output.count("\n") == 1
        and "neither a labelled nor a FAME list: line 5 starts with 'label'" in res.output
    )
    one = tmp_path / "one.txt"
    one.write_text(f"1 {wav} {face}\n")
    assert "ambiguous list" in _score(setup, one, root, out, code=1).output
    assert "1/1 pairs scored (labelled list)" in _score(setup, one, root, out, "--format", "labelled").output


def _distinct_pairs(setup, root: Path, n: int) -> Path:
    """ROOT/v/NNN.wav and ROOT/f/NNN.jpg, n of each (hard links to corpus files under distinct
    names: score and embed handle each name as its own file), and a FAME list pairing them."""
    c = setup["corpus"]
    wavs, faces = sorted((c / "wav").rglob("*.wav")), sorted((c / "faces").rglob("*.jpg"))
    (root / "v").mkdir(parents=True)
    (root / "f").mkdir()
    lines = []
    for i in range(n):
        (root / "v" / f"{i:03d}.wav").hardlink_to(wavs[i % len(wavs)])
        (root / "f" / f"{i:03d}.jpg").hardlink_to(faces[(i * 5) % len(faces)])
        lines.append(f"p{i:03d} v/{i:03d}.wav f/{i:03d}.jpg\n")
    (root / "list.txt").write_text("".join(lines))
    return root / "list.txt"


def test_score_and_embed_memory_stays_flat_in_the_number_of_files(setup, tmp_path):
    """#20 item 2: score and embed hold one batch of preprocessed arrays, not every file's
    (~260 KB per voice+face pair before): numpy's peak allocation for 96 distinct pairs is
    that of 24 pairs (was ~19 MB more), and the output is still every pair's score."""
    import tracemalloc

    from avtrain.serve.embed import embed_files
    from avtrain.serve.model import load_model
    from avtrain.serve.score import score_pairs

    model = load_model(setup["run"])
    peaks = {}
    for n in (24, 96):
        plist = _distinct_pairs(setup, tmp_path / f"r{n}", n)
        for what in ("score", "embed"):
            tracemalloc.start()
            if what == "score":
                summary = score_pairs(model, plist, plist.parent, tmp_path / f"s{n}.txt", batch_size=8)
                assert summary["pairs"] == n and summary["scored"] > n // 2
            else:
                res = embed_files(model, [plist.parent / "v"], [plist.parent / "f"], batch_size=8)
                assert len(res.voice_keys) == n and len(res.face_keys) + len(res.rejects) == n
            peaks[what, n] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    for what in ("score", "embed"):
        assert peaks[what, 96] - peaks[what, 24] < 4e6, peaks


def _interrupt_after(monkeypatch, calls: int):
    """Stop the run like a Ctrl-C (KeyboardInterrupt) at the given call of the per-file
    preprocessing: everything up to there is what a killed run had done."""
    from avtrain.serve.model import FaceVoiceModel

    real, count = FaceVoiceModel.extract_items, [0]

    def counting(self, path, modality):
        count[0] += 1
        if count[0] == calls:
            raise KeyboardInterrupt
        return real(self, path, modality)

    monkeypatch.setattr(FaceVoiceModel, "extract_items", counting)


def test_score_and_embed_resume_a_stopped_run_with_the_same_output(setup, tmp_path, monkeypatch):
    """#20 item 2: finished batches go to OUT.partial as they come; a run stopped half-way
    (even with a torn last line) and started again goes on from there and writes exactly the
    files one uninterrupted run writes; OUT.partial is then removed. Another run's journal
    (other settings) is started over; a journal in use by a live run is refused."""
    import fcntl

    from avtrain.serve.embed import embed_to_file
    from avtrain.serve.model import load_model
    from avtrain.serve.score import score_pairs

    model = load_model(setup["run"])
    plist = _distinct_pairs(setup, tmp_path / "r", 40)
    (plist.parent / "list.txt").write_text(plist.read_text() + "p999 v/missing.wav f/000.jpg\n")
    one = tmp_path / "one.txt"
    score_pairs(model, plist, plist.parent, one, batch_size=8)
    out, notes = tmp_path / "two.txt", []
    journal = tmp_path / "two.txt.partial"
    with monkeypatch.context() as m:
        _interrupt_after(m, 50)
        with pytest.raises(KeyboardInterrupt):
            score_pairs(model, plist, plist.parent, out, batch_size=8)
    assert not out.exists() and journal.read_text().count("\n") > 3
    with journal.open("a") as f:
        f.write('{"p": [["p0')  # torn mid-write
    score_pairs(model, plist, plist.parent, out, batch_size=8, echo=notes.append)
    assert "resuming from" in notes[0] and not journal.exists()
    for suffix in ("", ".rejects.jsonl"):
        assert Path(f"{out}{suffix}").read_bytes() == Path(f"{one}{suffix}").read_bytes()

    # the same for embed, and a journal written with other settings (batch size) is dropped
    e_one, e_two = tmp_path / "one.npz", tmp_path / "two.npz"
    embed_to_file(model, e_one, [plist.parent / "v"], [plist.parent / "f"], batch_size=8)
    with monkeypatch.context() as m:
        _interrupt_after(m, 30)
        with pytest.raises(KeyboardInterrupt):
            embed_to_file(model, e_two, [plist.parent / "v"], [plist.parent / "f"], batch_size=8)
    notes.clear()
    embed_to_file(model, e_two, [plist.parent / "v"], [plist.parent / "f"], batch_size=8, echo=notes.append)
    assert "resuming from" in notes[0] and not Path(f"{e_two}.partial").exists()
    with np.load(e_one) as a, np.load(e_two) as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
    with monkeypatch.context() as m:
        _interrupt_after(m, 30)
        with pytest.raises(KeyboardInterrupt):
            embed_to_file(model, e_two, [plist.parent / "v"], [plist.parent / "f"], batch_size=8)
    notes.clear()
    embed_to_file(model, e_two, [plist.parent / "v"], [plist.parent / "f"], batch_size=5, echo=notes.append)
    assert "other inputs or settings: starting over" in notes[0]

    with open(journal, "a") as held:  # a live run holds OUT.partial
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        res = _score(setup, plist, plist.parent, out, code=1)
    assert "another run is writing this output now" in res.output and res.output.count("\n") == 1


def test_score_on_a_full_disk_is_one_line_and_resumes_once_space_is_free(setup, tmp_path, small_tmpfs):
    """#20 item 2: OUT.partial filling the disk ends the run in one line; once space is freed
    the same command resumes and writes what one run writes."""
    import os

    plist = _distinct_pairs(setup, tmp_path / "r", 40)
    one = tmp_path / "one.txt"
    _score(setup, plist, plist.parent, one, "--batch-size", "8")
    mnt = small_tmpfs("1m")
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    (mnt / "filler").write_bytes(b"\0" * (free - 24 * 1024))  # ~24 KB left: a few batches
    out = mnt / "s.txt"
    res = _score(setup, plist, plist.parent, out, "--batch-size", "8", code=1)
    assert res.output == f"Error: no space left on device while writing {out}.partial\n"
    (mnt / "filler").unlink()
    res = _score(setup, plist, plist.parent, out, "--batch-size", "8")
    assert "resuming from" in res.output and not Path(f"{out}.partial").exists()
    assert out.read_bytes() == one.read_bytes()


def test_score_reads_the_learnable_pins_csv(setup, shared_data, tmp_path):
    """The official veriflist CSV form parses; its files are absent here, so every pair is 'nan'."""
    official = (
        shared_data / "protocols" / "voxceleb1" / "learnable_pins" / "veriflist_test_random_seenheard.txt"
    )
    head = official.read_text().splitlines()[:6]
    plist = tmp_path / "veriflist_head.txt"
    plist.write_text("\n".join(head) + "\n")
    out = tmp_path / "pins.scores"
    res = _avtrain(
        ["score", "--run", setup["run"], "--pairs", plist, "--root", tmp_path, "--out", out, "--no-progress"]
    )
    assert "0/5 pairs scored (pins-csv list)" in res.output
    assert out.read_text().splitlines() == [f"{i} nan" for i in range(1, 6)]


def test_match_ranks_by_neg_l2_and_prints_json(setup):
    c = setup["corpus"]
    voice = min((c / "wav").rglob("*.wav"))
    faces = sorted((c / "faces").rglob("*.jpg"))[:4] + [setup["bad"] / "no_face.png"]
    args = ["match", "--run", setup["run"], "--voice", voice, "--faces", *faces]
    text = _avtrain(args).output
    result = json.loads(_avtrain([*args, "--json"]).output)
    assert "ranked by score = -L2" in text and "rejected" in text
    ranking = result["ranking"]
    assert [r["rank"] for r in ranking] == [1, 2, 3, 4] and len(result["rejects"]) == 1
    scores = [r["score"] for r in ranking]
    assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)
    from avtrain import load_model

    model = load_model(setup["run"])
    hv = model.embed_voice(voice)
    for r in ranking:
        assert r["score"] == pytest.approx(model.score(hv, model.embed_face(r["path"])), rel=EMBEDDING_RTOL)
    lines = text.splitlines()[1:5]
    assert [ln.split()[-1] for ln in lines] == [r["path"] for r in ranking]
    # the other direction, and a query that cannot be used: one line, exit 1
    back = json.loads(
        _avtrain(["match", "--run", setup["run"], "--face", faces[0], "--voices", voice, "--json"]).output
    )
    assert back["gallery_modality"] == "voice" and back["ranking"][0]["score"] == pytest.approx(
        next(r["score"] for r in ranking if r["path"] == str(faces[0])), rel=EMBEDDING_RTOL
    )
    bad = _avtrain(
        ["match", "--run", setup["run"], "--voice", setup["bad"] / "silent.wav", *faces[:2]], code=1
    )
    assert bad.output.startswith("Error: ") and "silent audio" in bad.output and bad.output.count("\n") == 1


def test_api_waveform_and_pil_inputs_equal_files(setup):
    from PIL import Image

    from avdata.faces import load_image
    from avdata.media import load_wav
    from avtrain import load_model

    c = setup["corpus"]
    model = load_model(setup["run"], "cpu")
    wav = sorted((c / "wav").rglob("*.wav"))[1]
    face = sorted((c / "faces").rglob("*.jpg"))[1]
    wave_, sr = load_wav(wav)
    assert np.array_equal(model.embed_voice(wave_, sr=sr), model.embed_voice(wav))
    assert np.array_equal(model.embed_face(load_image(face)), model.embed_face(str(face)))
    assert model.embed_face(Image.open(face)).shape == (128,)
    with pytest.raises(ValueError, match="sample rate"):
        model.embed_voice(wave_)
    from avdata.errors import InputError

    for sr in (0, 1):  # #20 item 6: ZeroDivisionError; 4 GB for 2,000 samples
        with pytest.raises(InputError, match=f"<waveform>: absurd audio sample rate {sr} Hz"):
            model.embed_voice(np.random.default_rng(0).standard_normal(2000), sr=sr)


def test_export_is_pickle_free_and_loads_to_the_same_model(setup, tmp_path):
    out = tmp_path / "model"
    _avtrain(["export", "--run", setup["run"], "--out", out])
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    raw = (out / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    json.loads(raw[8 : 8 + header_len])  # safetensors: a JSON header, then raw tensor bytes
    assert b"\x80\x04" not in raw[:2] and not raw.startswith(b"PK")  # neither a pickle nor a torch zip
    meta = json.loads((out / "config.json").read_text())
    assert meta["format"] == "avmatch.model" and meta["scoring"]["kind"] == "neg_l2"
    from avtrain import load_model

    a, b = load_model(setup["run"]), load_model(out)
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[name]), name
    voice = min((setup["corpus"] / "wav").rglob("*.wav"))
    assert np.array_equal(a.embed_voice(voice), b.embed_voice(voice))
    # embed / score accept the export directory too
    _avtrain(["embed", "--run", out, "--audio", voice, "--out", tmp_path / "e.npz", "--no-progress"])
    from avtrain.serve.embed import read_embeddings

    assert np.array_equal(read_embeddings(tmp_path / "e.npz").voice[0], a.embed_voice(voice))
    # tampered weights are refused, in one line
    (out / "model.safetensors").write_bytes(raw[:-4] + b"\0\0\0\1")
    res = _avtrain(["embed", "--run", out, "--audio", voice, "--out", tmp_path / "f.npz"], code=1)
    assert "sha256 differs" in res.output and res.output.count("\n") == 1


# ---- issue #20 item 5: an export's config.json is checked like a fit config before it is used

EXPORT_CONFIG_EDITS = {  # what is written into config.json -> what the one error line must say
    "huge face search": (
        lambda m: m["extract"].update(detect_max_side=1e9, min_face_fraction=0),
        "extract.detect_max_side",
    ),
    "min_face_fraction 0": (lambda m: m["extract"].update(min_face_fraction=0), "extract.min_face_fraction"),
    "jpeg_quality 1000": (lambda m: m["extract"].update(jpeg_quality=1000), "extract.jpeg_quality: must be"),
    "windows of a wrong type": (lambda m: m["extract"].update(windows="2"), "extract.windows: expected"),
    "a bool for a number": (lambda m: m["extract"].update(face_margin=True), "extract.face_margin"),
    "unknown extract key": (lambda m: m["extract"].update(jpeg_qualty=90), "did you mean jpeg_quality"),
    "extract null": (lambda m: m.update(extract=None), "extract: expected a mapping"),
    "aliases null": (lambda m: m.update(aliases=None), "aliases is not an object"),
    "train_config type": (lambda m: m["train_config"].update(k="x"), "train_config: k: expected an integer"),
    "train_config unknown key": (lambda m: m["train_config"].update(bogus=1), "unknown setting 'bogus'"),
    "no weights_sha256": (lambda m: m.pop("weights_sha256"), "lacks weights_sha256"),
    "format_version 2": (lambda m: m.update(format_version=2), "format_version 2 is not 1"),
    "epoch of a wrong type": (lambda m: m.update(epoch="x"), "epoch 'x' is not a non-negative integer"),
    "unknown top-level key": (lambda m: m.update(extra=1), "unknown key(s) 'extra'"),
}


@pytest.fixture(scope="module")
def exported(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "model"
    _avtrain(["export", "--run", setup["run"], "--out", out])
    return out


def _embed_one(setup, model_dir, out, code=0):
    voice = min((setup["corpus"] / "wav").rglob("*.wav"))
    return _avtrain(["embed", "--run", model_dir, "--audio", voice, "--out", out, "--no-progress"], code=code)


def _one_line(res) -> str:
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    return lines[0]


@pytest.mark.parametrize("edit", sorted(EXPORT_CONFIG_EDITS))
def test_export_config_is_checked_like_a_fit_config(edit, setup, exported, tmp_path):
    change, phrase = EXPORT_CONFIG_EDITS[edit]
    model = tmp_path / "model"
    shutil.copytree(exported, model)
    meta = json.loads((model / "config.json").read_text())
    change(meta)
    (model / "config.json").write_text(json.dumps(meta))
    line = _one_line(_embed_one(setup, model, tmp_path / "e.npz", code=1))
    assert f"{model / 'config.json'}: " in line and phrase in line, line
    assert not (tmp_path / "e.npz").exists()


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_export_files_must_be_regular_files_inside_it(name, setup, exported, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(exported, model)
    (model / name).unlink()
    with fifo_that_never_blocks(model / name) as fifo:  # a FIFO: refused, never waited on
        line = _one_line(_embed_one(setup, model, tmp_path / "e.npz", code=1))
    assert not fifo["blocked"] and f"{name}: refusing a FIFO" in line, line
    (model / name).unlink()
    (model / name).symlink_to("/dev/zero")  # read whole, it would exhaust memory
    line = _one_line(_embed_one(setup, model, tmp_path / "e.npz", code=1))
    assert f"refusing the name '{name}': a symlink leads outside" in line, line


def test_extract_config_types_ranges_and_keys():
    from avdata.errors import AvmatchError
    from avdata.extract import ExtractConfig, ExtractConfigError

    assert issubclass(ExtractConfigError, AvmatchError) and issubclass(ExtractConfigError, ValueError)
    assert ExtractConfig.from_dict(dataclasses.asdict(ExtractConfig())) == ExtractConfig()
    assert ExtractConfig(face_margin=0).face_margin == 0.0 and isinstance(
        ExtractConfig(face_margin=0).face_margin, float
    )
    for bad in (
        {"windows": 0},
        {"face_margin": -0.1},
        {"face_margin": float("nan")},
        {"detect_max_side": 10**9},
        {"detect_max_side": 640.0},
        {"min_face_fraction": 0.0},
        {"min_face_fraction": 1.0},
        {"min_face_prob": 1.5},
        {"video_fps": 0},
        {"max_frames_per_video": 10**6},
        {"jpeg_quality": 0},
        {"jpeg_quality": True},
    ):
        with pytest.raises(ExtractConfigError, match=f"extract.{next(iter(bad))}"):
            ExtractConfig.from_dict(bad)
    with pytest.raises(ExtractConfigError, match="unknown setting"):
        ExtractConfig.from_dict({"nope": 1})


# ---- issue #20 item 21: an export never shadows a run


def test_export_refuses_a_run_directory(setup, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(setup["run"], run)
    before = sorted(p.name for p in run.iterdir())
    line = _one_line(_avtrain(["export", "--run", run, "--out", run], code=1))
    assert f"--out {run} is a run directory" in line, line
    other = tmp_path / "other_run"  # another run's directory would be shadowed just the same
    shutil.copytree(setup["run"], other)
    assert "is a run directory" in _one_line(_avtrain(["export", "--run", run, "--out", other], code=1))
    assert sorted(p.name for p in run.iterdir()) == before
    assert not (other / "model.safetensors").exists()


def test_a_run_shadowed_by_an_export_is_refused_not_guessed(setup, exported, tmp_path):
    """A directory holding both (an export written into a run before export refused it): the
    default is ambiguous and refused; naming a file or --checkpoint picks one."""
    run = tmp_path / "run"
    shutil.copytree(setup["run"], run)
    for p in exported.iterdir():
        shutil.copy(p, run / p.name)
    line = _one_line(_embed_one(setup, run, tmp_path / "e.npz", code=1))
    assert "holds both a run's checkpoint.pt and an export's model.safetensors" in line, line
    from avtrain.serve.model import load_model

    assert load_model(run / "checkpoint.pt").source["kind"] == "run"
    assert load_model(run / "model.safetensors").source["kind"] == "export"
    shutil.copy(run / "checkpoint.pt", run / "best.pt")
    shutil.copy(run / "checkpoint.pt.sha256", run / "best.pt.sha256")
    best = load_model(run, checkpoint="best")  # --checkpoint best names the run's best.pt
    assert best.source["kind"] == "run"


def test_embed_writes_parquet_with_rejects(setup, tmp_path):
    pytest.importorskip("pyarrow")  # in the dev extra; .parquet output is optional for users
    import pyarrow.parquet as pq

    voice = min((setup["corpus"] / "wav").rglob("*.wav"))
    out = tmp_path / "e.parquet"
    _avtrain(
        [
            "embed",
            "--run",
            setup["run"],
            "--audio",
            voice,
            "--faces",
            setup["bad"] / "no_face.png",
            "--out",
            out,
            "--no-progress",
        ]
    )
    rows = pq.read_table(out).to_pylist()
    assert [(r["key"], r["modality"]) for r in rows] == [
        (str(voice), "voice"),
        (str(setup["bad"] / "no_face.png"), "face"),
    ]
    assert len(rows[0]["embedding"]) == 128 and rows[0]["reject_reason"] is None
    assert rows[1]["embedding"] is None and "no face detected" in rows[1]["reject_reason"]
    from avtrain import load_model

    assert np.allclose(rows[0]["embedding"], load_model(setup["run"]).embed_voice(voice), atol=0)


def test_commands_in_help_and_cli_doc():
    out = _avtrain(["--help"]).output
    doc = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    for cmd in ("embed", "match", "score", "export"):
        assert cmd in out
        assert f"### avtrain {cmd}" in doc
