"""How much does a positive from the query's own video inflate a run's numbers? (issue #23)

Reads one run evaluated twice (``avtrain evaluate``): on lists drawn with ``make-tuples
--positive-source any`` (the default, the paper's draw) and on lists drawn with
``--positive-source other-video``. For every matching list it prints the accuracy on the ``any``
list, on its tuples whose positive comes from the query's source video and on those whose
positive does not (the share of same-video positives beside them), then the accuracy on the
``other-video`` list; for verification the same with AUC (each subset of positive pairs against
all negative pairs). 95 % percentile bootstrap intervals (1000 resamples, seed 0), as evaluate's.

    .venv/bin/python bench/positive_source.py --shards DEMO/shards-matching \\
        --any DEMO/tuples-matching --any-metrics DEMO/runs/aml/metrics.json \\
        --other DEMO/tuples-ov --other-metrics DEMO/runs/aml/ov/metrics.json

The outcomes (``outcomes.npz`` beside each metrics file: per tuple, in list order) are what
evaluate decided; nothing is re-embedded here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _positive_same_video(rows: list[dict], source: dict[str, str], task: str) -> np.ndarray:
    """Per tuple: 1 where the positive (verification: a same-identity pair) shares the query's video;
    verification negatives get -1."""
    out = []
    for t in rows:
        if task == "matching":
            out.append(int(source[t["gallery"][t["label"]]] == source[t["query"]]))
        else:
            out.append(int(source[t["gallery"][0]] == source[t["query"]]) if t["label"] == 1 else -1)
    return np.array(out)


def _outcome_key(outcomes: dict, tl, metrics: dict) -> str:
    if tl.task == "matching":
        primary = metrics.get("matching", {}).get(tl.direction, {}).get(f"k{tl.k}", {}).get("list") == tl.name
        return f"matching/{tl.direction}/k{tl.k}/correct" if primary else f"matching_other/{tl.name}/correct"
    return f"verification/{tl.name[len('verification_') :]}"


def _fmt(value: float, ci: tuple[float, float] | None = None) -> str:
    text = f"{100 * value:.1f}"
    return text + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=Path, required=True, help="the item shards both lists were drawn from")
    p.add_argument("--any", type=Path, required=True, help="tuple directory drawn with --positive-source any")
    p.add_argument("--any-metrics", type=Path, required=True, help="evaluate's metrics.json on --any")
    p.add_argument("--other", type=Path, required=True, help="tuple directory drawn with other-video")
    p.add_argument("--other-metrics", type=Path, required=True, help="evaluate's metrics.json on --other")
    p.add_argument("--split", default="test")
    args = p.parse_args()

    from avdata.reader import index_items
    from avdata.tuples import index_lists
    from avtrain.evaluation.metrics import bootstrap_ci, bootstrap_ci_pairs, roc_auc
    from avtrain.evaluation.outcomes import OUTCOMES_FILE, load_outcomes

    items = index_items(args.shards)
    source = dict(zip(items["key"], items["source_id"]))
    runs = {}
    for role, tuples, metrics_path in (
        ("any", args.any, args.any_metrics),
        ("other", args.other, args.other_metrics),
    ):
        metrics = json.loads(metrics_path.read_text())
        outcomes = load_outcomes(metrics_path.with_name(OUTCOMES_FILE))
        for tl in index_lists(tuples):
            if tl.split != args.split or tl.task == "retrieval" or "neg-other-video" in tl.constraint:
                continue
            attrs = tuple(a for a in tl.constraint.split("+") if a and not a.endswith("other-video"))
            if attrs:
                continue
            key = _outcome_key(outcomes, tl, metrics)
            runs[(role, tl.task, tl.direction, tl.k)] = (tl, key, outcomes)

    print(
        "| list | any: all | positive from the query's video (share) | positive from another video | other-video list |"
    )
    print("|---|---|---|---|---|")
    for (role, task, direction, k), (tl, key, outcomes) in sorted(runs.items(), key=lambda kv: kv[0][1:]):
        if role != "any" or (task, direction, k) not in {(t, d, kk) for r, t, d, kk in runs if r == "other"}:
            continue
        other_tl, other_key, other_outcomes = runs[("other", task, direction, k)]
        same = _positive_same_video(_rows(tl.path), source, task)
        if task == "matching":
            correct = outcomes[key]
            cells = [_fmt(correct.mean(), bootstrap_ci(correct))]
            for want in (1, 0):
                sub = correct[same == want]
                share = f" ({100 * (same == want).mean():.0f} %)" if want == 1 else ""
                cells.append((_fmt(sub.mean(), bootstrap_ci(sub)) if len(sub) else "–") + share)
            oc = other_outcomes[other_key]
            cells.append(_fmt(oc.mean(), bootstrap_ci(oc)))
            name = f"matching {direction} k={k} (accuracy)"
        else:
            scores, labels = outcomes[f"{key}/scores"], outcomes[f"{key}/labels"]
            cells = [_fmt(roc_auc(scores, labels), bootstrap_ci_pairs(scores, labels))]
            for want in (1, 0):
                keep = (same == want) | (labels == 0)
                s, y = scores[keep], labels[keep]
                share = f" ({100 * (same[labels == 1] == 1).mean():.0f} %)" if want == 1 else ""
                cells.append((_fmt(roc_auc(s, y), bootstrap_ci_pairs(s, y)) if y.any() else "–") + share)
            os_, oy = other_outcomes[f"{other_key}/scores"], other_outcomes[f"{other_key}/labels"]
            cells.append(_fmt(roc_auc(os_, oy), bootstrap_ci_pairs(os_, oy)))
            name = "verification (AUC)"
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
