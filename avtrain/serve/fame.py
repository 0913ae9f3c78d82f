"""The FAME challenge's submission format (face-voice association in multilingual environments,
MAV-Celeb; docs/fame.md): the score files of one model (:func:`fame_score`), their checks
against a test list or a key, each file's EER and the challenge's overall score, the mean of the
four EERs (:func:`fame_summary`).

What the challenge asks, from its public baseline repository (github.com/mavceleb/mavceleb_baseline)
and the FAME 2026 evaluation plan (arXiv 2508.04592):

* a model trained on one language (the *heard* one) scores the test list of its language
  (``HEARD_test.txt``) and of the other (``UNHEARD_test.txt``); each test list is
  ``ID voices/LANG/NNNNN.wav faces/LANG/NNNNN.jpg`` per line;
* each score file holds ``ID SCORE`` per line, the list's IDs in the list's order, SCORE the L2
  distance between the face and the voice embedding (lower = same person), written ``'%s %f'``;
* the files are named as the baseline's ``computeScore.py`` names them,
  ``sub_score_{VERSION}_{HEARD}_heard.txt`` and ``sub_score_{VERSION}_{HEARD}_unheard.txt`` (the
  heard language in both names; the README's example says ``sub_scores_English_heard.txt``
  without the version: see docs/fame.md);
* the metric is the EER of each file; the overall score is the mean of the four EERs of the two
  models (one per language of the version), each on its heard and its unheard list.

The hidden ground truth is, as the baseline's ``test.py`` reads it, ``ID LABEL`` per line of
``LANG_test.txt`` (LABEL 1 = same person), in the list's order; the synthetic MAV-Celeb corpus
writes it as ``lists/keys/LANG_test.txt``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avtrain.serve.errors import InferenceError

__all__ = [
    "CONDITIONS",
    "FameFile",
    "fame_score",
    "fame_summary",
    "file_eer",
    "format_fame_summary",
    "read_key",
    "read_submission",
    "submission_name",
    "write_submission",
]

CONDITIONS = ("heard", "unheard")
_NAME = re.compile(r"^sub_score_(v\d+)_([A-Za-z]+)_(heard|unheard)\.txt$")
_VERSION = re.compile(r"^v\d+$")
_LANGUAGE = re.compile(r"^[A-Za-z]+$")


def submission_name(version: str, heard: str, condition: str) -> str:
    """``sub_score_{version}_{heard}_{condition}.txt``: the name computeScore.py gives the file of the
    model trained on ``heard``, scored on the heard or the unheard language's test list."""
    if not _VERSION.match(version):
        raise InferenceError(f"--mav-version: the MAV-Celeb version as vN (v1, v2, v3), got {version!r}")
    if not _LANGUAGE.match(heard):
        raise InferenceError(f"language {heard!r}: letters only, as the release names it (English, Urdu)")
    if condition not in CONDITIONS:
        raise InferenceError(f"condition {condition!r}: heard or unheard")
    return f"sub_score_{version}_{heard}_{condition}.txt"


def _inside(folder: str | Path, name: str) -> Path:
    """``FOLDER/name``, a file avmatch looks up in a folder it did not write (keys, lists, score
    files): refused in one line if a symlink leads it outside the folder
    (:func:`avdata.untrusted.resolve_inside`); then read as a capped regular file by :func:`_lines`."""
    from avdata.untrusted import resolve_inside

    return resolve_inside(Path(folder), name, str(folder))


def _lines(path: Path, what: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-empty line of a small text file; one line for a missing or
    unreadable file."""
    from avdata.untrusted import MAX_INDEX_BYTES, read_regular

    raw = read_regular(path, MAX_INDEX_BYTES, f"{what} not found")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InferenceError(f"{path}: cannot read the {what} ({type(exc).__name__})") from None
    return [(n, ln.split()) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]


def _unique(path: Path, ids: list[tuple[int, str]]) -> None:
    seen: dict[str, int] = {}
    for n, i in ids:
        first = seen.setdefault(i, n)
        if first != n:
            raise InferenceError(f"{path}:{n}: ID {i!r} repeats line {first}")


def read_key(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(IDs, labels) of a FAME key, ``ID LABEL`` per line (LABEL 0/1; further fields ignored, as
    test.py reads only the second), in file order."""
    path = Path(path)
    rows = _lines(path, "key file")
    ids, labels = [], []
    for n, fields in rows:
        if len(fields) < 2 or fields[1] not in ("0", "1"):
            raise InferenceError(
                f"{path}:{n}: expected 'ID LABEL' with LABEL 0 or 1, got {' '.join(fields)!r}"
            )
        ids.append((n, fields[0]))
        labels.append(int(fields[1]))
    _unique(path, ids)
    return [i for _, i in ids], np.array(labels, dtype=np.intp)


def read_submission(path: str | Path, allow_missing: bool = False) -> tuple[list[str], np.ndarray]:
    """(IDs, scores) of a FAME score file, ``ID SCORE`` per line in file order. A score must be a
    finite number (``nan`` only with ``allow_missing``: avtrain score's marker of an unscorable
    pair, never in a submission); IDs are unique."""
    path = Path(path)
    rows = _lines(path, "score file")
    ids, scores = [], []
    for n, fields in rows:
        if len(fields) != 2:
            raise InferenceError(f"{path}:{n}: expected 'ID SCORE', got {len(fields)} field(s)")
        try:
            value = float(fields[1])
        except ValueError:
            raise InferenceError(f"{path}:{n}: score {fields[1]!r} is not a number") from None
        if not math.isfinite(value) and not (allow_missing and math.isnan(value)):
            raise InferenceError(
                f"{path}:{n}: score {fields[1]!r} is not a finite number: not a valid FAME submission"
            )
        ids.append((n, fields[0]))
        scores.append(value)
    _unique(path, ids)
    return [i for _, i in ids], np.array(scores, dtype=np.float64)


def check_ids(
    path: str | Path, ids: list[str], expected: list[str], against: str | Path, what: str = "score line"
) -> None:
    """One line unless ``ids`` are ``expected`` in the same order: a FAME file has one line per ID
    of its list, in the list's order (the baseline's test.py pairs scores and labels by position).
    ``what`` names one of PATH's lines in the message."""
    if len(ids) != len(expected):
        raise InferenceError(f"{path}: {len(ids)} {what}(s), but {against} has {len(expected)} ID(s)")
    for n, (got, want) in enumerate(zip(ids, expected), 1):
        if got != want:
            why = f"{got!r} is not in it" if got not in set(expected) else "the lines are out of its order"
            raise InferenceError(f"{path}: {what} {n} has ID {got!r}, {against} has {want!r} there: {why}")


def file_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """EER of L2 distances (lower = same person): avtrain's EER of -L2, the ROC polyline crossing
    FNR = FPR linearly interpolated (the baseline's test.py finds the same crossing with brentq on
    sklearn's ROC, to its tolerance)."""
    from avtrain.evaluation.metrics import equal_error_rate

    if labels.min() == labels.max():
        raise InferenceError("the key's labels are all of one class: no EER")
    return equal_error_rate(-scores, labels)


def write_submission(scores_path: Path, list_ids: list[str], out: Path) -> dict:
    """Write the FAME file OUT from avtrain score's file SCORES_PATH (``ID L2`` or ``ID nan``): the
    same IDs in the list's order; an unscorable pair gets the largest L2 distance of the file's scored
    pairs (a failure to acquire counts as a non-match, as ISO/IEC 19795-1 counts it), so the file
    stays a valid submission. Returns the failed IDs and that fill value."""
    from avdata.io import atomic_write_text

    ids, scores = read_submission(scores_path, allow_missing=True)
    check_ids(scores_path, ids, list_ids, "its test list")
    failed = np.isnan(scores)
    if failed.all():
        raise InferenceError(
            f"{scores_path}: no pair of the list could be scored (reasons in its .rejects.jsonl): no submission"
        )
    fill = float(scores[~failed].max()) if failed.any() else None
    values = np.where(failed, fill if fill is not None else 0.0, scores)
    atomic_write_text(out, "".join(f"{i} {v:f}\n" for i, v in zip(ids, values)))
    return {"failed": [i for i, f in zip(ids, failed) if f], "fill": fill}


@dataclass(frozen=True)
class FameFile:
    """One FAME score file: the model's training (heard) language, heard or unheard, the language
    of its test list."""

    path: Path
    version: str
    heard: str
    condition: str
    test_language: str

    @property
    def label(self) -> str:
        return f"{self.heard}-trained, {self.condition} ({self.test_language})"


def fame_score(
    model,
    lists: str | Path,
    root: str | Path,
    out: str | Path,
    heard: str,
    unheard: str,
    version: str,
    keys: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
) -> dict:
    """Score a model trained on HEARD on ``LISTS/HEARD_test.txt`` and ``LISTS/UNHEARD_test.txt``
    (paths inside ROOT) and write the challenge's two files into OUT. avtrain score's own files
    (``nan`` for an unscorable pair, its rejects, its resumable OUT.partial) stay in OUT/scores/.
    With KEYS (``KEYS/LANG_test.txt``, ``ID LABEL``) each file's EER is computed."""
    from avdata.io import make_output_dir
    from avtrain.serve.pairs import read_pair_list
    from avtrain.serve.score import score_pairs

    if heard == unheard:
        raise InferenceError(f"--heard and --unheard must be two languages, got {heard!r} twice")
    names = {c: submission_name(version, heard, c) for c in CONDITIONS}
    submission_name(version, unheard, "heard")  # checks the unheard language's spelling
    lists, out = Path(lists), Path(out)
    plan = {}  # both lists (and keys) read before any scoring: a missing one costs nothing
    for condition, language in zip(CONDITIONS, (heard, unheard)):
        list_path = _inside(lists, f"{language}_test.txt")
        ids = [p.id for p in read_pair_list(list_path, "fame")[1]]
        key_path = _inside(keys, f"{language}_test.txt") if keys is not None else None
        if key_path is not None:
            check_ids(list_path, ids, read_key(key_path)[0], key_path, "pair")
        plan[condition] = (language, list_path, ids, key_path)
    make_output_dir(out)
    work = out / "scores"
    work.mkdir(exist_ok=True)
    result = {"version": version, "heard": heard, "unheard": unheard, "files": {}}
    for condition, (language, list_path, ids, key_path) in plan.items():
        raw = work / f"{heard}_model.{language}_test.txt"
        summary = score_pairs(
            model, list_path, root, raw, fmt="fame", values="l2", batch_size=batch_size, progress=progress
        )
        sub = out / names[condition]
        written = write_submission(raw, ids, sub)
        entry = {
            "file": str(sub),
            "list": str(list_path),
            "test_language": language,
            "pairs": len(ids),
            "failed": written["failed"],
            "fill": written["fill"],
            "rejects": summary["rejects"],
        }
        if key_path is not None:
            entry["eer"] = submission_eer(sub, key_path)
        result["files"][condition] = entry
        if echo:
            echo(_format_file(entry, heard, condition))
    return result


def _format_file(entry: dict, heard: str, condition: str) -> str:
    line = f"{entry['file']}: {entry['pairs']} pairs of {entry['list']} ({heard}-trained, {condition})"
    if "eer" in entry:
        line += f"; EER {100 * entry['eer']:.2f}%"
    if entry["failed"]:
        shown = ", ".join(entry["failed"][:10]) + (", ..." if len(entry["failed"]) > 10 else "")
        line += (
            f"\n  {len(entry['failed'])} pair(s) could not be scored ({shown}; reasons in {entry['rejects']}): "
            f"written with the largest scored distance {entry['fill']:f} (counted as a non-match)"
        )
    return line


def submission_eer(path: str | Path, key_path: str | Path, list_path: str | Path | None = None) -> float:
    """EER of one FAME file against its key (and, when given, its IDs checked against the list)."""
    ids, scores = read_submission(path)
    key_ids, labels = read_key(key_path)
    check_ids(path, ids, key_ids, key_path)
    if list_path is not None:
        from avtrain.serve.pairs import read_pair_list

        _, pairs = read_pair_list(list_path, "fame")
        check_ids(path, ids, [p.id for p in pairs], list_path)
    try:
        return file_eer(scores, labels)
    except InferenceError as exc:
        raise InferenceError(f"{key_path}: {exc}") from None


def find_files(paths: list[str | Path]) -> list[FameFile]:
    """The four FAME files among PATHS (files, or folders searched for ``sub_score_*.txt``): one
    version, two training languages, each with its heard and unheard file. One line otherwise."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(_inside(p, q.name) for q in p.iterdir() if _NAME.match(q.name))
        elif not p.exists():
            raise InferenceError(f"{p}: score file not found")
        else:
            found.append(p)
    parsed = []
    for p in found:
        m = _NAME.match(p.name)
        if not m:
            raise InferenceError(f"{p}: not a FAME score file name sub_score_vN_LANGUAGE_heard|unheard.txt")
        parsed.append((p, *m.groups()))
    versions = sorted({v for _, v, _, _ in parsed})
    if len(versions) > 1:
        raise InferenceError(
            f"score files of several versions ({', '.join(versions)}): give one version's four"
        )
    languages = sorted({h for _, _, h, _ in parsed})
    cells = {(h, c): p for p, _, h, c in parsed}
    if len(parsed) != len(cells):
        raise InferenceError("the same score file (language and condition) given twice")
    want = [(h, c) for h in languages for c in CONDITIONS]
    if len(languages) != 2 or len(cells) != 4:
        missing = (
            [submission_name(versions[0], h, c) for h, c in want if (h, c) not in cells] if versions else []
        )
        raise InferenceError(
            "FAME's overall score needs four files, the heard and the unheard file of a model per language "
            f"of the version; got {len(cells)} file(s) for the language(s) {', '.join(languages) or 'none'}"
            + (f"; missing {', '.join(missing)}" if missing and len(languages) == 2 else "")
        )
    other = {languages[0]: languages[1], languages[1]: languages[0]}
    return [FameFile(cells[(h, c)], versions[0], h, c, h if c == "heard" else other[h]) for h, c in want]


def fame_summary(paths: list[str | Path], keys: str | Path, lists: str | Path | None = None) -> dict:
    """The four EERs of the FAME files among PATHS against ``KEYS/LANG_test.txt`` (IDs and line
    count checked against the key and, with LISTS, against ``LISTS/LANG_test.txt``) and the
    challenge's overall score, their mean."""
    files = find_files(paths)
    rows = []
    for f in files:
        key = _inside(keys, f"{f.test_language}_test.txt")
        lst = _inside(lists, f"{f.test_language}_test.txt") if lists is not None else None
        rows.append(
            {
                "file": str(f.path),
                "heard": f.heard,
                "condition": f.condition,
                "test_language": f.test_language,
                "key": str(key),
                "eer": submission_eer(f.path, key, lst),
            }
        )
    return {
        "version": files[0].version,
        "files": rows,
        "overall_eer": float(sum(r["eer"] for r in rows) / len(rows)),
        "rule": "overall score = mean of the four EERs (FAME 2026 evaluation plan: sum of EERs / 4)",
    }


def format_fame_summary(s: dict) -> str:
    lines = [f"FAME {s['version']}: EER (%) per score file"]
    cells = [(f"{r['heard']}-trained", f"{r['condition']} ({r['test_language']} test)") for r in s["files"]]
    w0, w1 = (max(len(c[i]) for c in cells) for i in (0, 1))
    for (model, test), r in zip(cells, s["files"]):
        lines.append(f"  {model:<{w0}s}  {test:<{w1}s}  {100 * r['eer']:6.2f}  {r['file']}")
    lines.append(f"overall score (mean of the four EERs): {100 * s['overall_eer']:.2f}")
    return "\n".join(lines)
