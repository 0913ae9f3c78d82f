"""metrics.json read back: headline scalars for TensorBoard and the plain-text table."""

from __future__ import annotations

import contextlib
from pathlib import Path


def headline(m: dict) -> dict[str, float]:
    """The metrics worth a TensorBoard scalar: matching accuracy per direction and k,
    verification AUC/EER per list, retrieval mAP and R@10 per split and direction."""
    out = {}
    for d, ks in m["matching"].items():
        for k, e in ks.items():
            out[f"eval/matching_{d}_{k}"] = e["value"]
    for name, e in m["verification"].items():
        out[f"eval/verification_{name}_auc"] = e["auc"]["value"]
        out[f"eval/verification_{name}_eer"] = e["eer"]["value"]
    for split, dirs in m["retrieval"].items():
        for d, e in dirs.items():
            for key in ("mAP", "R@10"):
                if e.get(key):
                    out[f"eval/retrieval_{split}_{d}_{key.replace('@', '_at_')}"] = e[key]["value"]
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
    lines = [f"{m['run']} (epoch {m['checkpoint_epoch']}; score -L2; %, 95% bootstrap CI)"]
    if m["matching"]:
        lines.append(f"matching, split {m['matching_split']}:")
        ks = sorted({int(k[1:]) for d in m["matching"].values() for k in d})
        lines.append(f"  {'k':>3}  {'a2v':<20} {'v2a':<20}")
        for k in ks:
            row = [_fmt(m["matching"].get(d, {}).get(f"k{k}")) for d in ("a2v", "v2a")]
            lines.append(f"  {k:>3}  {row[0]:<20} {row[1]:<20}")
    for name, e in m.get("matching_other", {}).items():
        lines.append(f"matching {name}: {_fmt(e)}")
    for name, e in m["verification"].items():
        lines.append(f"verification {name}: AUC {_fmt(e['auc'])}  EER {_fmt(e['eer'])}  (n={e['n']})")
    for split, dirs in m["retrieval"].items():
        for d, e in dirs.items():
            vals = "  ".join(f"{k} {_fmt(e[k])}" for k in ("R@1", "R@5", "R@10", "mAP"))
            lines.append(f"retrieval {split} {d}: {vals}  (queries={e['n']})")
    pd_ = m["pair_distance"]
    if pd_.get("before"):
        lines.append(
            "same-identity audio-face distance (raw / normalised by different-identity): "
            f"before G {pd_['before']['same']:.3f} / {pd_['before']['normalised']:.3f}, "
            f"after G {pd_['after']['same']:.3f} / {pd_['after']['normalised']:.3f}"
        )
    return "\n".join(lines)
