"""avtrain compare: train several methods on the same tuple directory with the same seeds, evaluate
every run on the same lists, and write one table: every metric in both directions with its 95% CI
(one seed) or mean ± sd (several), and a paired-bootstrap p-value of each method against the
reference method (AML) on the same items.

    OUT/runs/METHOD-seedS/      one fit + evaluate each (metrics.json, outcomes.npz)
    OUT/compare.json            the table's numbers
    OUT/compare.md              the table (markdown)
    OUT/compare.html            the same table as a report section

A run that is already complete is not trained again (fit resumes it: nothing left to do), so an
interrupted comparison goes on where it stopped. Paired tests resample the items (tuples, pairs,
queries) of a list with one seeded RNG, the same indices for both methods; the p-value is two-sided,
(1 + #resamples on the other side of 0) / (1 + n) doubled, capped at 1.

Runs scored on different subsets of the same list (a run on frozen encoder features leaves out the
rows that name an item its encoder rejected) are paired on the rows both scored, found by the row
positions of outcomes.npz; each run's own figure stays on its own rows, and the table says how many
rows the test used (:func:`common_rows`). Different lists (another tuple directory or a changed
list: the list's sha256 in metrics.json), or retrieval galleries of different sizes, get no p-value
and a line saying why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from avdata.errors import AvmatchError
from avdata.io import atomic_write_text
from avtrain.evaluation import metrics as M
from avtrain.evaluation.outcomes import OUTCOMES_FILE, ROW, load_outcomes
from avtrain.evaluation.results import MetricRow, metric_rows, not_scored, score_name

REFERENCE = "aml"


class CompareError(AvmatchError):
    """A comparison that cannot run (settings, methods): one line for the CLI."""


@dataclass
class Plan:
    methods: list[str]
    seeds: list[int]
    sets: dict[str, list[str]]  # method -> its --set values (shared ones included)


def plan_runs(methods: list[str], seeds: int, sets: list[str]) -> Plan:
    """``sets``: KEY=VALUE for every method, or METHOD:KEY=VALUE for one."""
    from avtrain.methods import method_names

    if not methods:
        raise CompareError("--methods: name at least one method")
    unknown = [m for m in methods if m not in method_names()]
    if unknown:
        raise CompareError(
            f"--methods: unknown method(s) {', '.join(unknown)}; known: {', '.join(method_names())}"
        )
    if len(set(methods)) != len(methods):
        raise CompareError("--methods: a method is named twice")
    if seeds < 1:
        raise CompareError("--seeds must be >= 1")
    per = {m: [] for m in methods}
    for item in sets:
        head, _, rest = item.partition(":")
        if rest and "=" in rest and "=" not in head:
            if head not in per:
                raise CompareError(f"--set {item!r}: {head} is not one of the compared methods")
            per[head].append(rest)
        else:
            for m in methods:
                per[m].append(item)
    return Plan(list(methods), list(range(seeds)), per)


def row_key(r: MetricRow) -> str:
    """The name of one reported number, the same in metrics.json rows and outcomes.npz."""
    if r.task == "matching":
        return f"matching/{r.direction}/k{r.k}"
    if r.task == "matching_other":
        return f"matching_other/{r.name}"
    if r.task == "verification":
        return f"verification/{r.name}/{r.measure}"
    return f"retrieval/{r.split}/{r.direction}/{r.measure}"


def _statistic(key: str) -> tuple[str, Callable[[dict, np.ndarray], float]] | None:
    """(outcome array prefix, statistic over a resample of item indices) for a row key."""
    parts = key.split("/")
    if parts[0] in ("matching", "matching_other"):
        return key, lambda o, idx: float(o["correct"][idx].mean())
    if parts[0] == "verification" and parts[-1] in ("auc", "eer"):
        fn = M.roc_auc if parts[-1] == "auc" else M.equal_error_rate
        return "/".join(parts[:2]), lambda o, idx: float(fn(o["scores"][idx], o["labels"][idx]))
    if parts[0] == "retrieval":
        field = {"R@1": "hit@1", "R@5": "hit@5", "R@10": "hit@10", "mAP": "ap"}.get(parts[-1])
        if field is None:
            return None
        return "/".join(parts[:3]), lambda o, idx: float(o[field][idx].mean())
    return None


def paired_p_value(
    a: list[dict], b: list[dict], statistic: Callable, n_boot: int = 1000, seed: int = 0
) -> float | None:
    """Two-sided paired-bootstrap p-value of mean(statistic(a_s)) - mean(statistic(b_s)) over seeds s:
    the items of a list are resampled with one index draw shared by every run."""
    n = len(next(iter(a[0].values())))
    if n < 2 or any(len(next(iter(o.values()))) != n for o in (*a, *b)):
        return None
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        try:
            diffs.append(np.mean([statistic(x, idx) - statistic(y, idx) for x, y in zip(a, b)]))
        except ValueError:  # a resample with one class only (AUC undefined): skipped
            continue
    if 2 * len(diffs) < n_boot:
        return None
    d = np.asarray(diffs)
    low, high = (1 + np.sum(d <= 0)) / (1 + d.size), (1 + np.sum(d >= 0)) / (1 + d.size)
    return float(min(1.0, 2 * min(low, high)))


@dataclass
class Pairing:
    """What a paired test of one list can use: every run's outcomes restricted to the rows all of
    them scored (in list order), how many those are, and how many rows any run scored."""

    runs: list[dict[str, np.ndarray]]
    common: int
    scored: int


def common_rows(runs: list[dict[str, np.ndarray]]) -> Pairing | str:
    """The outcome sets of one list (one dict of arrays per run, as :func:`outcome_sets` gives)
    restricted to the rows that every run scored, matched by their ``row`` positions; or why they
    cannot be paired (one line). Outcomes without row positions (written before them) pair only
    when every run has the same number of rows, taken as the same rows in the same order."""
    sizes = []
    for o in runs:
        lengths = {len(v) for v in o.values()}
        if len(lengths) != 1:
            return "a run's outcome arrays of this list differ in length"
        sizes.append(lengths.pop())
    if not all(ROW in o for o in runs):
        if len(set(sizes)) != 1:
            return (
                f"the runs scored different numbers of rows ({' vs '.join(map(str, sorted(set(sizes))))}) "
                "and outcomes.npz has no row positions to pair them by (evaluate again)"
            )
        return Pairing(list(runs), sizes[0], sizes[0])
    positions = [o[ROW].astype(np.int64) for o in runs]
    common = positions[0]
    for p in positions[1:]:
        common = np.intersect1d(common, p, assume_unique=True)
    scored = np.unique(np.concatenate(positions)).size
    kept = []
    for o, p in zip(runs, positions):
        take = np.searchsorted(p, common)  # p is increasing (load_outcomes checks it)
        kept.append({k: v[take] for k, v in o.items()})
    return Pairing(kept, int(common.size), int(scored))


def _list_mismatch(entries: list[dict]) -> str | None:
    """Why runs' metrics.json entries of one list name different lists (None: the same list)."""
    shas = {e.get("list_sha256") for e in entries} - {None, ""}
    if len(shas) > 1:
        return "different lists (list sha256 " + " vs ".join(sorted(s[:12] + "…" for s in shas)) + ")"
    galleries = {e["gallery"] for e in entries if "gallery" in e}
    if len(galleries) > 1:  # retrieval: per-query hits against galleries of other items
        return (
            "retrieval galleries of different sizes (" + " vs ".join(map(str, sorted(galleries))) + " items)"
        )
    return None


def outcome_sets(outcomes: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """One list's arrays of an outcomes.npz (``PREFIX/NAME``), named without the prefix."""
    return {k[len(prefix) + 1 :]: v for k, v in outcomes.items() if k.startswith(prefix + "/")}


def summarise_runs(runs: dict[str, list[Path]], n_boot: int = 1000, seed: int = 0) -> dict:
    """Per method (its runs, one per seed, in seed order): every metric row's value(s) and, against
    the reference method, a paired p-value. Returns the compare.json structure."""
    table: dict = {"methods": list(runs), "seeds": len(next(iter(runs.values()))), "rows": {}}
    metrics = {m: [json.loads((r / "metrics.json").read_text()) for r in rs] for m, rs in runs.items()}
    outcomes = {m: [load_outcomes(r / OUTCOMES_FILE) for r in rs] for m, rs in runs.items()}
    table["scoring"] = {m: score_name(ms[0]) for m, ms in metrics.items()}
    table["not_scored"] = {m: not_scored(ms[0]) for m, ms in metrics.items() if not_scored(ms[0])}
    order: list[str] = []
    # key -> method -> per seed (the row's list entry, its rows left out for rejected items)
    lists: dict[str, dict[str, list[tuple[dict, dict]]]] = {}
    for method, ms in metrics.items():
        for i, m in enumerate(ms):
            skipped = m.get("features", {}).get("skipped_rows", {})
            for r in metric_rows(m):
                key = row_key(r)
                if key not in order:
                    order.append(key)
                lists.setdefault(key, {}).setdefault(method, []).append((r.list_entry or {}, skipped))
                cell = table["rows"].setdefault(key, {}).setdefault(method, {"values": [], "ci95": None})
                if r.entry:
                    cell["values"].append(float(r.entry["value"]))
                    if i == 0:
                        cell["ci95"] = r.entry.get("ci95")
    reference = REFERENCE if REFERENCE in runs else None
    for key in order:
        for method, cell in table["rows"][key].items():
            v = np.asarray(cell["values"], dtype=np.float64)
            cell["mean"] = float(v.mean()) if v.size else None
            cell["sd"] = float(v.std(ddof=1)) if v.size > 1 else None
            cell["p_vs_reference"] = None
            stat = _statistic(key)
            if reference and method != reference and stat and reference in table["rows"][key]:
                prefix, fn = stat
                a = [outcome_sets(o, prefix) for o in outcomes[method]]
                b = [outcome_sets(o, prefix) for o in outcomes[reference]]
                if not (all(a) and all(b)):
                    continue
                pair_lists = lists[key][method] + lists[key][reference]
                pairing = _list_mismatch([e for e, _ in pair_lists]) or common_rows(a + b)
                if isinstance(pairing, str):
                    cell["paired"] = {"refused": pairing}
                    continue
                cell["p_vs_reference"] = paired_p_value(
                    pairing.runs[: len(a)], pairing.runs[len(a) :], fn, n_boot, seed
                )
                if pairing.common < pairing.scored:
                    cell["paired"] = {
                        "rows": pairing.common,
                        "of": pairing.scored,
                        "one_run_only": pairing.scored - pairing.common,
                        "rejected_items": any(e.get("list") in skipped for e, skipped in pair_lists),
                    }
    table["order"] = order
    table["reference"] = reference
    return table


def _cell_text(cell: dict | None, seeds: int) -> str:
    if not cell or cell.get("mean") is None:
        return "–"
    if seeds > 1:
        text = f"{100 * cell['mean']:.1f} ± {100 * (cell['sd'] or 0):.1f}"
    else:
        ci = cell.get("ci95")
        text = f"{100 * cell['mean']:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")
    p = cell.get("p_vs_reference")
    if p is not None:
        mark = "†" if cell.get("paired") else ""  # on the rows both runs scored: see pairing_notes
        text += f" (p={p:.3f}{mark})" if p >= 0.001 else f" (p<0.001{mark})"
    return text


def pairing_notes(table: dict) -> list[str]:
    """One line per method and list whose paired test did not use every row either run scored
    († in the table), or that got no p-value because the runs' lists differ."""
    notes: list[str] = []
    for key in table["order"]:
        stat = _statistic(key)
        for method, cell in table["rows"][key].items():
            paired = cell.get("paired")
            if not paired or not stat:
                continue
            head = f"{method} vs {table['reference']}, {stat[0]}: "
            if "refused" in paired:
                line = head + f"no p-value: {paired['refused']}"
            else:
                why = " (rows naming items a frozen encoder rejected)" if paired["rejected_items"] else ""
                how = "† paired on" if cell["p_vs_reference"] is not None else "no p-value on the"
                line = (
                    head + f"{how} {paired['rows']} of {paired['of']} rows: "
                    f"{paired['one_run_only']} rows scored by one run only{why}; each run's value is on its own rows"
                )
            if line not in notes:
                notes.append(line)
    return notes


def table_rows(table: dict) -> tuple[list[str], list[list[str]]]:
    header = ["metric (%)"] + [f"{m} ({table['scoring'][m]})" for m in table["methods"]]
    rows = [
        [key] + [_cell_text(table["rows"][key].get(m), table["seeds"]) for m in table["methods"]]
        for key in table["order"]
    ]
    return header, rows


def markdown(table: dict, command: str = "") -> str:
    header, rows = table_rows(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    what = (
        f"{table['seeds']} seed(s): mean ± sd over seeds"
        if table["seeds"] > 1
        else "one seed: value [95% bootstrap CI]"
    )
    ref = (
        f"; p: paired bootstrap against {table['reference']} on the same items" if table["reference"] else ""
    )
    foot = f"\n{what}{ref}; scoring rule per method in the header; – : not scored.\n"
    for method, lists in table.get("not_scored", {}).items():
        foot += f"{method}: {len(lists)} list(s) not scored ({next(iter(lists.values()))}).\n"
    foot += "".join(f"{line}.\n" for line in pairing_notes(table))
    return (f"`{command}`\n\n" if command else "") + "\n".join(lines) + "\n" + foot


def html(table: dict, command: str = "") -> str:
    from avtrain.evaluation.report import CSS, _esc, _table

    header, rows = table_rows(table)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>avtrain compare</title>"
        f"<style>{CSS}</style></head><body><h1>Methods compared on the same tuples</h1>"
        + (f"<p><code>{_esc(command)}</code></p>" if command else "")
        + _table(header, rows, "compare")
        + "".join(f"<p>{_esc(line)}.</p>" for line in pairing_notes(table))
        + "</body></html>\n"
    )


def compare(
    methods: list[str],
    tuples_dir: str | Path,
    shards: str | Path,
    out: str | Path,
    seeds: int = 1,
    config: str | Path | None = None,
    sets: list[str] = (),
    val_tuples: str | Path | None = None,
    val_shards: str | Path | None = None,
    n_boot: int = 1000,
    progress: bool = False,
    echo: Callable[[str], None] | None = print,
    command: str = "",
    store: str | Path | None = None,
    features: list[str | Path] | tuple = (),
) -> dict:
    """Train and evaluate every method x seed, then write OUT/compare.{json,md,html}. Training reads
    the tuples' items from ``store`` (a decoded item store, avdata cache) or else from ``shards``,
    by index; evaluation reads ``shards``. ``features``: the feature stores of the runs whose
    settings freeze a modality (``model.voice_encoder`` / ``face_encoder``; fit --features)."""
    from avdata.io import check_output_dir, make_output_dir
    from avtrain.evaluation.evaluate import evaluate
    from avtrain.methods.encoders import frozen_encoders
    from avtrain.run.config import load_config
    from avtrain.train.loop import fit

    plan = plan_runs(methods, seeds, list(sets))
    out = check_output_dir(out)
    configs = {  # every setting checked before anything trains
        (m, s): load_config(config, {"seed": s}, [*plan.sets[m], f"method={m}"])
        for m in plan.methods
        for s in plan.seeds
    }
    make_output_dir(out)
    runs: dict[str, list[Path]] = {m: [] for m in plan.methods}
    for (m, s), cfg in configs.items():
        run = out / "runs" / f"{m}-seed{s}"
        if echo:
            echo(f"{m} seed {s}: fit -> {run}")
        fit(
            cfg,
            tuples_dir,
            run,
            resume=run.exists(),
            progress=progress,
            val_tuples=val_tuples,
            val_shards=val_shards,
            items=store or shards,
            features=features if frozen_encoders(cfg.model) else (),
        )
        evaluate(
            run,
            shards,
            tuples_dir,
            n_boot=n_boot,
            echo=None,
            checkpoint="best" if (val_shards or val_tuples) else "last",
        )
        runs[m].append(run)
    table = summarise_runs(runs, n_boot=n_boot)
    table["command"] = command
    atomic_write_text(out / "compare.json", json.dumps(table, sort_keys=True, indent=1) + "\n")
    atomic_write_text(out / "compare.md", markdown(table, command))
    atomic_write_text(out / "compare.html", html(table, command))
    if echo:
        echo(markdown(table, command))
        echo(f"wrote {out / 'compare.md'}")
    return table
