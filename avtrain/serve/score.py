"""``avtrain score``: every pair of a list scored from raw files, resumably through
``OUT.partial``; the scores file, the rejects and, for labelled lists, AUC/EER with bootstrap CIs
(:func:`score_pairs`, :func:`format_score_summary`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np

from avdata.errors import UnsafeInputError
from avtrain.evaluation.evaluate import SCORE_KIND  # the one scoring rule (-L2)
from avtrain.serve.errors import InferenceError
from avtrain.serve.journal import (
    JOURNAL_SUFFIX,
    Batcher,
    Journal,
    decode_embeddings,
    encode_embeddings,
    journal_settings,
    note_journal,
    progress_bar,
)
from avtrain.serve.model import FaceVoiceModel
from avtrain.serve.pairs import Pair, read_pair_list, safe_join

__all__ = ["MISSING", "format_score_summary", "score_pairs"]

MISSING = "nan"  # the score written for a pair that could not be scored


class _ScorePlan:
    """The distinct files of a pair list per modality, in order of first use: their list paths,
    the last pair using each (its embedding is dropped after it), and for each list path its
    file's index or, for a refused path, the reason (never opened). About 300 bytes a pair
    beside the pairs themselves (the list paths are the pairs' own strings)."""

    def __init__(self, pairs: list[Pair], roots: dict[str, Path]):
        from array import array

        self.roots = roots
        self.rels: dict[str, list[str]] = {"voice": [], "face": []}
        self.last: dict[str, array] = {"voice": array("q"), "face": array("q")}
        self.index: dict[str, dict[str, int | str]] = {"voice": {}, "face": {}}
        for mod in ("voice", "face"):
            by_path: dict[str, int] = {}  # two spellings of one file ('a//b', 'a/b') are one file
            index, rels, last = self.index[mod], self.rels[mod], self.last[mod]
            for i, p in enumerate(pairs):
                rel = p.voice if mod == "voice" else p.face
                idx = index.get(rel)
                if idx is None:
                    try:
                        path = str(safe_join(roots[mod], rel))
                    except UnsafeInputError as exc:
                        index[rel] = f"unsafe path refused: {exc}"
                        continue
                    idx = index[rel] = by_path.setdefault(path, len(rels))
                    if idx == len(rels):
                        rels.append(rel)
                        last.append(i)
                if isinstance(idx, int):
                    last[idx] = i

    def path(self, mod: str, idx: int) -> str:
        """The file's path, as safe_join gave it when the plan checked it."""
        return str(self.roots[mod] / PurePosixPath(self.rels[mod][idx]))


def _score_stream(
    model: FaceVoiceModel,
    pairs: list[Pair],
    plan: _ScorePlan,
    journal: Journal,
    values: str,
    batch_size: int,
    progress: bool,
) -> None:
    """Score the pairs in list order into the journal ('p' records: [line, -L2 or None, reject
    or None] per pair), preprocessing each distinct file once, in order of first use, and
    embedding a batch at a time (the batches embedding every file at once would make). Memory
    holds one batch of arrays per modality and the embeddings of files a later pair still uses."""
    from avtrain.evaluation import metrics as M

    cache: dict[str, dict[int, np.ndarray | str]] = {"voice": {}, "face": {}}  # embedding or reason
    cursor = {"voice": 0, "face": 0}  # next file to preprocess
    done = 0
    if journal.resumed:
        try:
            done = sum(len(rec["p"]) for rec in journal.records() if "p" in rec)
            for rec in journal.records():
                if "m" not in rec:
                    continue
                mod, live = rec["m"], cache[rec["m"]]
                h = decode_embeddings(rec["h"], model.embed_dim)
                if len(rec["g"]) != h.shape[0]:
                    raise ValueError("batch record")
                for idx, reason in rec["r"]:
                    if plan.last[mod][idx] >= done:
                        live[idx] = str(reason)
                for idx, row in zip(rec["g"], h):
                    if plan.last[mod][idx] >= done:
                        live[idx] = row.astype(np.float64)
                cursor[mod] = int(rec["next"])
            if done > len(pairs):
                raise ValueError("more pairs than the list")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise journal.replay_error(exc) from None

    def on_batch(mod: str):
        def record(batch: list, h: np.ndarray) -> None:
            good = [idx for idx, it in batch if it.array is not None]
            for idx, row in zip(good, h):
                cache[mod][idx] = row.astype(np.float64)
            rejected = [[idx, it.reason] for idx, it in batch if it.array is None]
            journal.write(
                {"m": mod, "next": cursor[mod], "g": good, "h": encode_embeddings(h), "r": rejected}
            )

        return record

    batchers = {mod: Batcher(model, mod, batch_size, on_batch(mod)) for mod in ("voice", "face")}

    def outcome(mod: str, rel: str) -> np.ndarray | str:
        idx = plan.index[mod][rel]
        if isinstance(idx, str):
            return idx  # a refused path
        live = cache[mod]
        while idx not in live:  # preprocess on, filling the batch that will hold idx
            if cursor[mod] < len(plan.rels[mod]):
                j = cursor[mod]
                cursor[mod] += 1
                it = model.extract_items(plan.path(mod, j), "audio" if mod == "voice" else "face")[0]
                if it.array is None:
                    live[j] = it.reason
                batchers[mod].add(j, it)
            elif batchers[mod].pending:
                batchers[mod].flush()
            else:  # only a journal edited by hand can claim a file it never held
                raise journal.replay_error(KeyError(f"{mod} file {idx}"))
        return live[idx]

    block: list[list] = []
    for i in progress_bar(
        range(done, len(pairs)), progress, "score", unit="pair", initial=done, total=len(pairs)
    ):
        p = pairs[i]
        got = [(m, r, outcome(m, r)) for m, r in (("voice", p.voice), ("face", p.face))]
        bad = [(m, r, why) for m, r, why in got if isinstance(why, str)]
        if bad:
            reject = {
                "id": p.id,
                "line": p.line,
                "voice": p.voice,
                "face": p.face,
                "reasons": [{"modality": m, "path": r, "reason": why} for m, r, why in bad],
            }
            block.append([f"{p.id} {MISSING}", None, reject])
        else:
            hv, hf = got[0][2], got[1][2]
            s = M.gather_scores(
                hv[None], hf[None], np.zeros(1, np.intp), np.zeros((1, 1), np.intp), kind=SCORE_KIND
            )[0, 0]
            line = f"{p.id} {((-s if values == 'l2' else s) + 0.0):.6f}"  # + 0.0: never '-0.000000'
            block.append([line, float(s), None])
        for m, r in (("voice", p.voice), ("face", p.face)):
            idx = plan.index[m][r]
            if isinstance(idx, int) and plan.last[m][idx] == i:
                cache[m].pop(idx, None)
        if len(block) == batch_size or i == len(pairs) - 1:
            journal.write({"p": block})
            block = []


def score_pairs(
    model: FaceVoiceModel,
    list_path: str | Path,
    root: str | Path,
    out: str | Path,
    fmt: str = "auto",
    values: str = "auto",
    voice_root: str | Path | None = None,
    face_root: str | Path | None = None,
    rejects_path: str | Path | None = None,
    batch_size: int = 64,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
) -> dict:
    """Score every pair of a list; write OUT (``ID SCORE`` per pair, in list order), the rejects
    (OUT.rejects.jsonl unless given) and, for labelled lists, AUC/EER with bootstrap CIs
    (OUT.metrics.json, computed on the scored pairs as ``avtrain evaluate`` does).

    ``values``: ``l2`` writes the L2 distance (lower = same person; the FAME challenge's
    convention), ``neg_l2`` writes -L2 (higher = same person; avtrain's score); ``auto``: l2
    for FAME lists, neg_l2 otherwise. A pair that cannot be scored gets the literal ``nan``.

    Pairs are scored as their files are embedded, a batch at a time, into OUT.partial (memory
    stays flat in the number of pairs); OUT and the rejects are written from it at the end,
    atomically. A run stopped half-way and started again with the same list, roots, model and
    settings goes on from OUT.partial, giving the same files as one run.
    """
    from array import array

    from avdata.io import atomic_output, sha256_file, write_json

    fmt, pairs = read_pair_list(list_path, fmt)
    if values == "auto":
        values = "l2" if fmt == "fame" else "neg_l2"
    if values not in ("l2", "neg_l2"):
        raise InferenceError(f"--values must be auto, l2 or neg_l2, got {values!r}")
    out = Path(out)
    rejects_path = Path(rejects_path) if rejects_path else out.with_name(out.name + ".rejects.jsonl")
    roots = {"voice": Path(voice_root or root), "face": Path(face_root or root)}
    plan = _ScorePlan(pairs, roots)
    settings = journal_settings(model, batch_size) | {
        "list_sha256": sha256_file(list_path),
        "format": fmt,
        "values": values,
        "roots": {m: os.path.realpath(r) for m, r in roots.items()},
    }
    journal = Journal(out.with_name(out.name + JOURNAL_SUFFIX), "avtrain score", settings).open()
    try:
        note_journal(journal, echo)
        _score_stream(model, pairs, plan, journal, values, batch_size, progress)
        scores, labels, n, n_rejected = array("d"), array("b"), 0, 0
        with atomic_output(out) as f_out, atomic_output(rejects_path) as f_rej:
            try:
                for rec in journal.records():
                    for line, s, reject in rec.get("p", ()):
                        f_out.write(f"{line}\n".encode())
                        if reject is not None:
                            f_rej.write((json.dumps(reject, sort_keys=True) + "\n").encode())
                            n_rejected += 1
                        else:
                            scores.append(s)
                            labels.append(pairs[n].label or 0)
                        n += 1
                if n != len(pairs):
                    raise ValueError(f"{n} pairs for a list of {len(pairs)}")
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                raise journal.replay_error(exc) from None
        summary = {
            "list": str(list_path),
            "format": fmt,
            "pairs": len(pairs),
            "scored": len(scores),
            "rejected": n_rejected,
            "values": values,
            "values_rule": (
                f"L2 distance between {model.embed_dim}-d embeddings (lower = same person)"
                if values == "l2"
                else f"-L2 distance between {model.embed_dim}-d embeddings (higher = same person)"
            ),
            "missing_marker": MISSING,
            "scores": str(out),
            "rejects": str(rejects_path),
        }
        if fmt != "fame" and scores:
            _add_metrics(
                summary, np.array(scores, dtype=np.float64), np.array(labels, dtype=np.intp), n_boot, seed
            )
            summary["metrics_file"] = str(out.with_name(out.name + ".metrics.json"))
            write_json(summary["metrics_file"], summary)
    except BaseException:
        journal.close()
        raise
    journal.close(remove=True)
    if echo:
        echo(format_score_summary(summary))
    return summary


def _add_metrics(summary: dict, s: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> None:
    """AUC/EER with bootstrap CIs of the scored pairs (s: always -L2, whatever the file holds)."""
    if y.min() == y.max():
        summary["metrics"] = None
        summary["metrics_note"] = "the scored pairs are all of one label: no AUC/EER"
        return
    from avtrain.evaluation.evaluate import verification_metrics

    summary["metrics"] = verification_metrics(s, y, n_boot, seed) | {
        "bootstrap": {"n": int(n_boot), "seed": int(seed), "ci": 0.95, "method": "percentile"},
        "score": SCORE_KIND,
    }


def _pct(e: dict) -> str:
    ci = e.get("ci95")
    return f"{100 * e['value']:.2f}" + (f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else "")


def format_score_summary(s: dict) -> str:
    head = (
        f"{s['scores']}: {s['scored']}/{s['pairs']} pairs scored ({s['format']} list); "
        f"values = {s['values_rule']}; unscorable pairs = {s['missing_marker']}"
    )
    lines = [head]
    if s["rejected"]:
        lines.append(f"{s['rejected']} pair(s) rejected, reasons in {s['rejects']}")
    m = s.get("metrics")
    if m:
        lines.append(
            f"verification (n={m['n']}): AUC {_pct(m['auc'])}  EER {_pct(m['eer'])}  (%, 95% bootstrap CI)"
        )
    elif s.get("metrics_note"):
        lines.append(s["metrics_note"])
    return "\n".join(lines)
