"""metrics.json read back: flattened once (:func:`metric_rows`) for the console table, the
TensorBoard scalars and the HTML report."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

RETRIEVAL_MEASURES = ("R@1", "R@5", "R@10", "mAP")

# evaluate --score RULE (avtrain.methods.base.SCORE_RULES) -> metrics.json ``scoring.kind``; a
# metrics.json without ``scoring`` predates the rules and was scored by -L2 ("neg_l2").
SCORE_KIND_OF_RULE = {"l2": "neg_l2", "cosine": "cosine", "head": "head"}
SCORE_RULE_TEXT = {
    "neg_l2": "score = -Euclidean distance between the embeddings",
    "cosine": "score = cosine similarity between the embeddings",
    "head": "score = the method's learned head (head_scores), on every list it has a head for; "
    "the other lists are not scored (not_scored)",
}
SCORE_NAMES = {"neg_l2": "-L2", "cosine": "cosine", "head": "learned head"}  # how tables name a kind


def scoring_block(rule: str) -> dict:
    """metrics.json ``scoring`` of an evaluation under ``rule`` (l2, cosine or head)."""
    kind = SCORE_KIND_OF_RULE[rule]
    return {"kind": kind, "rule": SCORE_RULE_TEXT[kind]}


def score_kind(m: dict) -> str:
    """The scoring kind of a metrics.json: neg_l2, cosine or head (neg_l2 when it has none)."""
    return (m.get("scoring") or {}).get("kind", "neg_l2")


def score_name(m: dict) -> str:
    """How a table names the rule that scored a metrics.json (-L2, cosine, learned head)."""
    return SCORE_NAMES.get(score_kind(m), score_kind(m))


def not_scored(m: dict) -> dict[str, str]:
    """List name -> why it was not scored (``--score head``: the method has no head for it)."""
    return dict(m.get("not_scored") or {})


@dataclass(frozen=True)
class MetricRow:
    """One reported number of metrics.json."""

    task: str  # matching | matching_other | verification | retrieval
    measure: str  # matching: "accuracy"; verification: auc | eer | head_auc; retrieval: R@k | mAP
    entry: dict | None  # {"value", "ci95"?}
    n: int | None = None
    split: str = ""
    direction: str = ""  # a2v | v2a ("" for verification)
    k: int | None = None  # matching gallery size
    name: str = ""  # verification list or matching_other list name
    head: dict | None = None  # matching: the learned head's accuracy, when the run has one
    list_entry: dict | None = None  # the whole metrics.json entry of the row's list (list, list_sha256, ...)


def metric_rows(m: dict) -> list[MetricRow]:
    """metrics.json flattened, in reading order: the one walk over its layout, used by the
    console table, the TensorBoard scalars and the HTML report."""
    rows = []
    for d in ("a2v", "v2a"):
        for kname, e in sorted(m.get("matching", {}).get(d, {}).items(), key=lambda kv: int(kv[0][1:])):
            rows.append(
                MetricRow(
                    "matching",
                    "accuracy",
                    e,
                    e.get("n"),
                    m.get("matching_split", ""),
                    d,
                    int(kname[1:]),
                    head=e.get("head"),
                    list_entry=e,
                )
            )
    for name, e in m.get("matching_other", {}).items():
        rows.append(MetricRow("matching_other", "accuracy", e, e.get("n"), name=name, list_entry=e))
    for name, e in m.get("verification", {}).items():
        for measure in ("auc", "eer", "head_auc"):
            if measure != "head_auc" or e.get(measure):
                rows.append(
                    MetricRow("verification", measure, e[measure], e.get("n"), name=name, list_entry=e)
                )
    for split, dirs in m.get("retrieval", {}).items():
        for d, e in dirs.items():
            for measure in RETRIEVAL_MEASURES:
                rows.append(
                    MetricRow("retrieval", measure, e.get(measure), e.get("n"), split, d, list_entry=e)
                )
    return rows


def headline(m: dict) -> dict[str, float]:
    """The metrics worth a TensorBoard scalar: matching accuracy per direction and k,
    verification AUC/EER per list, retrieval mAP and R@10 per split and direction."""
    out = {}
    for r in metric_rows(m):
        if r.task == "matching":
            out[f"eval/matching_{r.direction}_k{r.k}"] = r.entry["value"]
        elif r.task == "verification" and r.measure in ("auc", "eer"):
            out[f"eval/verification_{r.name}_{r.measure}"] = r.entry["value"]
        elif r.task == "retrieval" and r.measure in ("mAP", "R@10") and r.entry:
            out[f"eval/retrieval_{r.split}_{r.direction}_{r.measure.replace('@', '_at_')}"] = r.entry["value"]
    return dict(sorted(out.items()))


def write_tensorboard(tb_dir: Path, m: dict) -> None:
    """Headline metrics as scalars at the checkpoint's step (skipped without tensorboard)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    with contextlib.closing(SummaryWriter(str(tb_dir))) as tb:
        for tag, value in headline(m).items():
            tb.add_scalar(tag, value, m["checkpoint_step"])


def _fmt(e: dict | None) -> str:
    if not e:
        return "-"
    ci = e.get("ci95")
    return (
        f"{100 * e['value']:.1f} [{100 * ci[0]:.1f},{100 * ci[1]:.1f}]" if ci else f"{100 * e['value']:.1f}"
    )


def format_table(m: dict) -> str:
    """A compact plain-text summary of metrics.json (values in %, 95% CI in brackets)."""
    rows = metric_rows(m)
    lines = [f"{m['run']} (epoch {m['checkpoint_epoch']}; score {score_name(m)}; %, 95% bootstrap CI)"]
    matching = {(r.direction, r.k): r.entry for r in rows if r.task == "matching"}
    if matching:
        lines.append(f"matching, split {m['matching_split']}:")
        lines.append(f"  {'k':>3}  {'a2v':<20} {'v2a':<20}")
        for k in sorted({k for _, k in matching}):
            cells = [_fmt(matching.get((d, k))) for d in ("a2v", "v2a")]
            lines.append(f"  {k:>3}  {cells[0]:<20} {cells[1]:<20}")
    for r in rows:
        if r.task == "matching_other":
            lines.append(f"matching {r.name}: {_fmt(r.entry)}")
    verification = {}
    for r in rows:
        if r.task == "verification":
            verification.setdefault(r.name, {})[r.measure] = r
    for name, by in verification.items():
        lines.append(
            f"verification {name}: AUC {_fmt(by['auc'].entry)}  EER {_fmt(by['eer'].entry)}  (n={by['auc'].n})"
        )
    retrieval = {}
    for r in rows:
        if r.task == "retrieval":
            retrieval.setdefault((r.split, r.direction), []).append(r)
    for (split, d), rs in retrieval.items():
        vals = "  ".join(f"{r.measure} {_fmt(r.entry)}" for r in rs)
        lines.append(f"retrieval {split} {d}: {vals}  (queries={rs[0].n})")
    for name, why in not_scored(m).items():
        lines.append(f"not scored: {name}: {why}")
    pd_ = m["pair_distance"]
    if pd_.get("before"):
        lines.append(
            "same-identity audio-face distance (raw / normalised by different-identity): "
            f"before G {pd_['before']['same']:.3f} / {pd_['before']['normalised']:.3f}, "
            f"after G {pd_['after']['same']:.3f} / {pd_['after']['normalised']:.3f}"
        )
    return "\n".join(lines)
