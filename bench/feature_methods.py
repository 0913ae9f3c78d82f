"""AML from scratch against methods on frozen encoder features, on the same tuples: the rows of
docs/evaluation.md, "Methods on frozen encoder features".

Runs on frozen features leave out the evaluation rows that name an item their encoder rejected
(avtrain evaluate: ``features.skipped_rows``). To compare like with like, every run is scored here
on the rows every run scored (the common rows: avtrain.evaluation.compare.common_rows, by the
row positions of RUN/outcomes.npz; runs evaluated before those were recorded: evaluate again).
Per metric: value [95 % bootstrap CI] and the paired-bootstrap p against the reference on the
same rows (avtrain.evaluation.compare.paired_p_value); the reference on all its rows beside it.

    .venv/bin/python bench/feature_methods.py --tuples demo-out/tuples-matching \\
        --reference cmp/demo/runs/aml-seed0 NAME=RUN [NAME=RUN ...]

RUN: a run evaluated by ``avtrain evaluate`` (metrics.json, outcomes.npz). Prints a markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROWS = (
    ("matching/a2v/k2", "matching_test_a2v_k2"),
    ("matching/a2v/k10", "matching_test_a2v_k10"),
    ("matching/v2a/k2", "matching_test_v2a_k2"),
    ("matching/v2a/k10", "matching_test_v2a_k10"),
    ("verification/test/auc", "verification_test"),
)


def main():
    from avtrain.evaluation import metrics as M
    from avtrain.evaluation.compare import _statistic, common_rows, outcome_sets, paired_p_value
    from avtrain.evaluation.outcomes import OUTCOMES_FILE, load_outcomes
    from avtrain.evaluation.tuple_lists import read_tuple_lists

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tuples", required=True, type=Path, help="the tuple directory every run was evaluated on"
    )
    ap.add_argument("--reference", required=True, type=Path, help="the reference run (AML from scratch)")
    ap.add_argument("runs", nargs="+", help="NAME=RUN of each run on frozen features")
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()

    runs = dict(item.split("=", 1) for item in args.runs)
    lists = {tl.name: tl for tl in read_tuple_lists(args.tuples)}
    ref = load_outcomes(args.reference / OUTCOMES_FILE)
    outcomes = {n: load_outcomes(Path(r) / OUTCOMES_FILE) for n, r in runs.items()}

    def value(key, o, idx):
        return _statistic(key)[1](o, idx)

    header = ["metric (%)", "aml scratch, all rows", "aml scratch, common rows", *runs]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for key, name in ROWS:
        prefix = _statistic(key)[0]
        ref_all = outcome_sets(ref, prefix)
        # the rows every run scored, matched by outcomes.npz's row positions (compare's pairing)
        pairing = common_rows([ref_all, *(outcome_sets(outcomes[r], prefix) for r in runs)])
        if isinstance(pairing, str):
            raise SystemExit(f"{name}: {pairing}")
        ref_common, *frozen = pairing.runs
        if len(next(iter(ref_all.values()))) != len(lists[name].rows):
            raise SystemExit(f"{name}: the reference did not score every row of {args.tuples}'s list")
        cells = []
        for o in (ref_all, ref_common, *frozen):
            idx = np.arange(len(next(iter(o.values()))))
            v = value(key, o, idx)
            if prefix.startswith("verification"):
                lo, hi = M.bootstrap_ci_pairs(o["scores"], o["labels"], n_boot=args.bootstrap)
            else:
                lo, hi = M.bootstrap_ci(o["correct"], n_boot=args.bootstrap)
            text = f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
            if o is not ref_all and o is not ref_common:
                p = paired_p_value([o], [ref_common], lambda x, i: value(key, x, i), n_boot=args.bootstrap)
                text += f" (p={p:.3f})" if p is not None else ""
            cells.append(text)
        print(f"| {key} (n {len(lists[name].rows)} / {pairing.common}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
