"""avtrain report: one self-contained HTML page for a run (and, with --compare, several).

Every plot is drawn with matplotlib's Agg canvas (``matplotlib.figure.Figure``, no
pyplot state) and embedded as a base64 PNG, so the page is a single file that can be
mailed or archived. Inputs: ``RUN/metrics.json`` (from ``avtrain evaluate``),
``RUN/log.jsonl`` (training losses), ``RUN/embeddings.npz`` (the embedding sample).

Sections (the paper's figures in brackets): metrics table beside the paper's VoxCeleb1
numbers (clearly marked as a different dataset); matching accuracy against k with 95%
CIs [Fig. 5]; verification ROC curves; L_total and L_dis against steps [Fig. 10];
t-SNE of audio and face embeddings before and after the generator [Fig. 3]; mean
same-identity audio-face distance before/after the generator [Fig. 8]; and, with
--compare, a side-by-side table of runs labelled by their distinguishing settings.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import math
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from avdata.errors import AvmatchError
from avdata.io import atomic_write_text
from avdata.tasks import DIRECTIONS  # the only direction keys of matching and retrieval in metrics.json
from avdata.untrusted import open_inside, read_inside, read_regular
from avtrain.evaluation.diagnostics import TSNE_MAX_ITEMS
from avtrain.evaluation.results import (
    RETRIEVAL_MEASURES,
    SCORE_NAMES,
    metric_rows,
    not_scored,
    score_kind,
    score_name,
)

SECTIONS = {
    "metrics": "Metrics",
    "paper": "Paper's reported numbers (VoxCeleb1 + VGGFace; not comparable)",
    "accuracy_k": "Matching accuracy against k (Fig. 5)",
    "roc": "Verification ROC curves",
    "losses": "Training losses (Fig. 10)",
    "tsne": "t-SNE of embeddings before and after the generator (Fig. 3)",
    "distance": "Same-identity audio-face distance before and after the generator (Fig. 8)",
    "compare": "Run comparison",
}

# docs/aml-spec.md, "Headline results" (VoxCeleb1 + VGGFace, %)
PAPER_ROWS = [
    ("matching k=2", "92.72", "93.33"),
    ("matching k=10", "43.45", "39.35"),
    ("verification AUC seen-heard / unseen-unheard", "92.30 / 80.60", ""),
    ("retrieval R@10 seen-heard / unseen-unheard (PINs split)", "47.83 / 11.39", "55.75 / 16.03"),
    ("peers, matching k=2 A→V", "SVHF-Net 81.0, PINs 84.0, DIMNet 84.12, SSNet 78.0", ""),
    ("ablation V→A k=2", "", "neither 83.13, AL only 86.23, ML only 85.18, both 93.33"),
]
# settings that tell ablation runs apart (Tables VII-IX); other differing settings are added
ABLATION_KEYS = ("adversarial", "metric", "adversarial_kind", "metric_kind")
RUNTIME_KEYS = {
    "device",
    "workers",
    "threads",
    "log_every",
    "record_batches",
    "amp",
    "channels_last",
    "shuffle_buffer",
    "cudnn_benchmark",
    "items",
    "tuples",
    "val_every",
    "keep_last",
}


def flat_config(cfg: dict) -> dict:
    """A run's config with its model/loss sections lifted to the top level (the flat names of
    older configs: adversarial, metric_kind, clip_value, ...)."""
    out = {k: v for k, v in cfg.items() if not (k in ("model", "loss") and isinstance(v, dict))}
    for section in ("model", "loss"):
        if isinstance(cfg.get(section), dict):
            out.update(cfg[section])
    return out


MARKERS = "os^vD<>ph*Xd+x"
MAX_K = 1000  # gallery sizes the report plots (make-tuples builds 2..10); a larger k is refused
MAX_METRICS_BYTES = 64 << 20  # metrics.json of avtrain evaluate: tens of kB per list
MAX_EMBEDDINGS_BYTES = 64 << 20  # embeddings.npz, uncompressed: 400 items x (3200 + 128) float32 = 5.3 MB
# RUN/log.jsonl: one line a step (log_every=1) of ~250 bytes, so 1M steps; a paper-scale run is ~100k
MAX_LOG_BYTES = 256 << 20
MAX_LOG_LINE_BYTES = 64 << 10  # one log line (a step's losses, a validation line's scores: < 1 kB)


class ReportError(AvmatchError, ValueError):
    """A report's input (metrics.json, embeddings.npz) that cannot be used: one line naming the file."""


# --------------------------------------------------------------------------- helpers


class _Html(str):
    """Markup the report wrote itself from fixed text and formatted numbers. Every other table
    cell and header is HTML-escaped by :func:`_table`, the one place table text enters the page."""


def _plain_text(plot):
    """Run a figure-drawing function with matplotlib's mathtext off: run, list and split names
    come from metrics.json, and ``$...$`` in one would be parsed (and raise) rather than shown."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
            return plot(*args, **kwargs)

    return wrapper


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return (
        '<img alt="plot" src="data:image/png;base64,'
        + base64.b64encode(buf.getvalue()).decode("ascii")
        + '">'
    )


def _figure(w: float = 6.0, h: float = 4.0):
    from matplotlib.figure import (
        Figure,  # the Agg canvas is attached by savefig; no pyplot, no global backend
    )

    return Figure(figsize=(w, h))


def _esc(x) -> str:
    return html.escape(str(x))


def _pct(e: dict | None, ci: bool = True) -> _Html:
    """A checked entry's value (and CI) in %: numbers only, so markup of the report's own."""
    if not e or e.get("value") is None:
        return _Html("–")
    s = f"{100 * float(e['value']):.2f}"
    if ci and e.get("ci95"):
        lo, hi = e["ci95"]
        s += f" <small>[{100 * float(lo):.1f}, {100 * float(hi):.1f}]</small>"
    return _Html(s)


def _cell(x) -> str:
    return x if isinstance(x, _Html) else html.escape(str(x))


def _table(header: list, rows: list[list], cls: str = "") -> str:
    """An HTML table; every header and cell is escaped unless it is :class:`_Html`."""
    head = "".join(f"<th>{_cell(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{_cell(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _is_number(x) -> bool:
    """A JSON number (not a bool) that is finite as a float: NaN, infinities and integers beyond
    float range (JSON has no limit on digits) are not."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer like 10**400
        return False


def load_metrics(path: str | Path, inside: bool = False) -> dict:
    """metrics.json, checked against the layout the report reads (:func:`check_metrics`): a regular
    file of at most MAX_METRICS_BYTES (a FIFO or a device is refused, never read). ``inside``: the
    file of a run directory (RUN/metrics.json), read only if it stays inside it
    (:func:`avdata.untrusted.read_inside`); else a path the user named."""
    path = Path(path)
    missing = "no metrics file; run avtrain evaluate first"
    try:
        if inside:
            raw = read_inside(path.parent, path.name, max_bytes=MAX_METRICS_BYTES, missing=missing)
        else:
            raw = read_regular(path, MAX_METRICS_BYTES, missing)
        text = raw.decode("utf-8")
    except AvmatchError as exc:
        raise ReportError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path}: cannot read ({exc})") from None
    try:
        m = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits; nesting too deep
        raise ReportError(f"{path}: not usable JSON ({type(exc).__name__}: {exc})") from None
    check_metrics(m, path)
    return m


def check_metrics(m, path: str | Path) -> None:
    """Check the parts of metrics.json the report reads (as ``avtrain evaluate`` writes them), so
    that a hand-edited or foreign file is one :class:`ReportError` naming it and the first
    problem, not a KeyError half-way through the page. Sections may be absent."""

    def bad(what: str) -> ReportError:
        return ReportError(f"{path}: not a metrics file of avtrain evaluate ({what})")

    def obj(x, where: str) -> dict:
        if not isinstance(x, dict):
            raise bad(f"{where} is not a JSON object")
        return x

    def key(d: dict, k: str, where: str):
        if k not in d:
            raise bad(f"{where} has no key {k!r}")
        return d[k]

    def num(x, where: str) -> None:
        if not _is_number(x):
            raise bad(f"{where} is not a finite number")

    def fraction(x, where: str) -> None:  # every metric value is a fraction (docs/evaluation.md)
        num(x, where)
        if not 0 <= x <= 1:
            raise bad(f"{where} is not a fraction in [0, 1]")

    def count(d: dict, k: str, where: str) -> None:  # absent, null or a non-negative integer
        x = d.get(k)
        if x is not None and not (isinstance(x, int) and not isinstance(x, bool) and x >= 0):
            raise bad(f"{where}.{k} is not a count")

    def direction(d: str, where: str) -> None:
        if d not in DIRECTIONS:
            raise bad(f"{where} key {d!r} is not a direction (a2v or v2a)")

    def entry(e, where: str, value_required: bool = True) -> None:  # {"value", "ci95"?, "n"?}
        obj(e, where)
        if value_required or e.get("value") is not None:
            fraction(key(e, "value", where), f"{where}.value")
        ci = e.get("ci95")
        if ci:
            if not isinstance(ci, list) or len(ci) != 2:
                raise bad(f"{where}.ci95 is not [low, high]")
            for x in ci:
                fraction(x, f"{where}.ci95")
        count(e, "n", where)

    obj(m, "the top level")
    for k in ("config", "items", "bootstrap", "pair_distance", "scoring", "not_scored"):
        if m.get(k) is not None:
            obj(m[k], k)
    kind = score_kind(m)
    if not isinstance(kind, str) or kind not in SCORE_NAMES:
        raise bad(f"scoring.kind is not one of {', '.join(SCORE_NAMES)}")
    for name, why in (m.get("not_scored") or {}).items():
        if not isinstance(why, str):
            raise bad(f"not_scored.{name} is not a reason (a string)")
    for k in ("checkpoint_epoch", "checkpoint_step"):
        count(m, k, "the top level")
    for k in ("audio", "face"):
        count(m.get("items") or {}, k, "items")
    count(m.get("bootstrap") or {}, "n", "bootstrap")
    seed = (m.get("bootstrap") or {}).get("seed")
    if seed is not None and not isinstance(seed, int):
        raise bad("bootstrap.seed is not an integer")
    if m.get("matching_split") is not None and not isinstance(m["matching_split"], str):
        raise bad("matching_split is not a split name")
    for d, ks in obj(m.get("matching", {}), "matching").items():
        direction(d, "matching")
        for kname, e in obj(ks, f"matching.{d}").items():
            if not re.fullmatch(r"k[1-9][0-9]{0,5}", kname) or int(kname[1:]) > MAX_K:
                raise bad(f"matching.{d} key {kname!r} is not k<gallery size> with a size of 1..{MAX_K}")
            entry(e, f"matching.{d}.{kname}")
            if e.get("head"):
                entry(e["head"], f"matching.{d}.{kname}.head", value_required=False)
    for name, e in obj(m.get("matching_other", {}), "matching_other").items():
        entry(e, f"matching_other.{name}", value_required=False)
    for name, e in obj(m.get("verification", {}), "verification").items():
        where = f"verification.{name}"
        obj(e, where)
        count(e, "n", where)
        entry(key(e, "auc", where), f"{where}.auc")
        entry(key(e, "eer", where), f"{where}.eer", value_required=False)
        if e.get("head_auc"):
            entry(e["head_auc"], f"{where}.head_auc", value_required=False)
        roc = obj(key(e, "roc", where), f"{where}.roc")
        fpr, tpr = key(roc, "fpr", f"{where}.roc"), key(roc, "tpr", f"{where}.roc")
        if not (isinstance(fpr, list) and isinstance(tpr, list) and len(fpr) == len(tpr)):
            raise bad(f"{where}.roc fpr and tpr are not two lists of one length")
        for x in fpr + tpr:
            fraction(x, f"{where}.roc")
    for split, dirs in obj(m.get("retrieval", {}), "retrieval").items():
        for d, e in obj(dirs, f"retrieval.{split}").items():
            direction(d, f"retrieval.{split}")
            obj(e, f"retrieval.{split}.{d}")
            count(e, "n", f"retrieval.{split}.{d}")
            for measure in RETRIEVAL_MEASURES:
                if e.get(measure) is not None:
                    entry(e[measure], f"retrieval.{split}.{d}.{measure}", value_required=False)
    pd_ = m.get("pair_distance") or {}
    if pd_.get("before") and pd_.get("after"):
        for k in ("n_audio", "n_face", "n_identities_both"):
            key(pd_, k, "pair_distance")
            count(pd_, k, "pair_distance")
        for space in ("before", "after"):
            where = f"pair_distance.{space}"
            sp = obj(pd_[space], where)
            num(key(sp, "same", where), f"{where}.same")
            if key(sp, "normalised", where) is not None:
                num(sp["normalised"], f"{where}.normalised")


def read_log(path: Path) -> list[dict]:
    """The JSON-object lines of RUN/log.jsonl (``path``), or [] if there is none. Read as a regular
    file inside RUN of at most MAX_LOG_BYTES (:func:`avdata.untrusted.open_inside`: a FIFO, a
    device or a link out is one ReportError, never read), line by line: any other line (cut by a
    killed run, not JSON, not text, an integer JSON cannot hand back, nested too deep, longer
    than MAX_LOG_LINE_BYTES: skipped unread) is left out."""
    if not os.path.lexists(path):
        return []
    rows, total = [], 0
    try:
        with open_inside(path.parent, path.name, max_bytes=MAX_LOG_BYTES) as f:
            while line := f.readline(MAX_LOG_LINE_BYTES + 1):
                total += len(line)
                too_long = len(line) > MAX_LOG_LINE_BYTES
                while too_long and line and not line.endswith(b"\n") and total <= MAX_LOG_BYTES:
                    line = f.readline(MAX_LOG_LINE_BYTES + 1)  # the rest of it, read and dropped
                    total += len(line)
                if total > MAX_LOG_BYTES:  # grown while read (a run still training)
                    raise ReportError(
                        f"{path}: refusing a file above the {MAX_LOG_BYTES >> 20} MiB cap for it"
                    )
                if too_long or not line.strip():
                    continue
                try:
                    row = json.loads(line.decode("utf-8", errors="replace"))
                except (ValueError, RecursionError):
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except AvmatchError as exc:
        raise ReportError(str(exc)) from None
    return rows


# --------------------------------------------------------------------------- sections


def _arrow(direction: str) -> str:
    return direction.upper().replace("2", "→")


def metrics_table(m: dict) -> str:
    rows = []
    for r in metric_rows(m):
        n = "" if r.n is None else r.n
        if r.task == "matching":
            value = _Html(_pct(r.entry) + (f"; head {_pct(r.head)}" if r.head else ""))
            rows.append([f"matching {r.split} {_arrow(r.direction)} k={r.k}", value, n])
        elif r.task == "matching_other":
            rows.append([f"matching {r.name}", _pct(r.entry), n])
        elif r.task == "verification":
            label = {"auc": "AUC", "eer": "EER", "head_auc": "AUC (learned head)"}[r.measure]
            rows.append([f"verification {r.name} {label}", _pct(r.entry), n])
        else:
            rows.append([f"retrieval {r.split} {_arrow(r.direction)} {r.measure}", _pct(r.entry), n])
    rows += [[f"{name}: not scored ({why})", "–", ""] for name, why in not_scored(m).items()]
    if not rows:
        return "<p>No metrics.</p>"
    return _table([f"metric (this run; score {_rule_name(m)})", "% [95% CI]", "n"], rows, "metrics")


def _rule_name(m: dict) -> str:
    """The rule that scored a metrics.json as the page writes it (−L2, cosine, learned head)."""
    return score_name(m).replace("-", "−")


def paper_table() -> str:
    note = (
        '<p class="warn"><b>Different dataset — not comparable.</b> These are the numbers the paper '
        "reports on VoxCeleb1 + VGGFace (docs/aml-spec.md, “Headline results”). This run was evaluated on "
        "whatever shards and tuple lists were given (possibly synthetic or a subset), with other identities, "
        "tuple draws and training length; shown for orientation only.</p>"
    )
    return note + _table(
        ["task (paper, VoxCeleb1 + VGGFace)", "A→V %", "V→A %"],
        [list(row) for row in PAPER_ROWS],
        "paper",
    )


@_plain_text
def accuracy_vs_k(m: dict) -> str | None:
    matching = m.get("matching", {})
    if not matching:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    all_k = set()
    for i, d in enumerate(("a2v", "v2a")):
        entries = sorted(((int(k[1:]), e) for k, e in matching.get(d, {}).items()), key=lambda t: t[0])
        if not entries:
            continue
        ks = np.array([k for k, _ in entries])
        all_k.update(ks.tolist())
        v = np.array([e["value"] for _, e in entries]) * 100
        lo = np.array([e["ci95"][0] if e.get("ci95") else e["value"] for _, e in entries]) * 100
        hi = np.array([e["ci95"][1] if e.get("ci95") else e["value"] for _, e in entries]) * 100
        ax.errorbar(
            ks + (i - 0.5) * 0.08,
            v,
            yerr=[v - lo, hi - v],
            marker="os"[i],
            capsize=3,
            label=d.upper().replace("2", "→"),
        )
    ks = np.array(sorted(all_k))
    ax.plot(ks, 100.0 / ks, "k:", label="chance (1/k)")
    ax.set_xlabel("k (gallery size)")
    ax.set_ylabel(f"accuracy % (score {_rule_name(m)}, 95% CI)")
    ax.set_xticks(ks)
    ax.set_xlim(ks.min() - 0.5, ks.max() + 0.5)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"Matching accuracy vs k (split {m.get('matching_split')})")
    return _png(fig)


@_plain_text
def roc_plot(m: dict) -> str | None:
    ver = m.get("verification", {})
    if not ver:
        return None
    fig = _figure(5, 5)
    ax = fig.add_subplot()
    for name, e in ver.items():
        ax.plot(e["roc"]["fpr"], e["roc"]["tpr"], label=f"{name} (AUC {100 * e['auc']['value']:.1f}%)")
    ax.plot([0, 1], [0, 1], "k:", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"Verification ROC (score {_rule_name(m)})")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize="small")
    return _png(fig)


@_plain_text
def loss_plot(log: list[dict]) -> str | None:
    rows = [r for r in log if _is_number(r.get("step")) and _is_number(r.get("L_total"))]
    if not rows:
        return None
    steps = np.array([float(r["step"]) for r in rows])
    fig = _figure(9, 3.5)
    for i, key in enumerate(("L_total", "L_dis")):
        ax = fig.add_subplot(1, 2, i + 1)
        y = np.array([float(r[key]) if _is_number(r.get(key)) else np.nan for r in rows])
        ax.plot(steps, y, lw=0.8, alpha=0.5, label=key)
        if y.size >= 10:  # moving average over ~2% of the run
            w = max(2, y.size // 50)
            ax.plot(
                steps[w - 1 :],
                np.convolve(y, np.ones(w) / w, mode="valid"),
                lw=1.5,
                label=f"{key} (mean of {w})",
            )
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _png(fig)


def _tsne(x: np.ndarray) -> np.ndarray:
    """2-d t-SNE map of the rows of x. The rows are centred and scaled to a largest deviation of
    1 first (t-SNE is blind to both): sklearn's PCA init divides by the spread of the data, and
    rows that were all equal, or spread by less than float precision or by more than float range,
    made it crash the process (a segmentation fault). Rows that are all equal map to one point."""
    from sklearn.manifold import TSNE

    n = x.shape[0]
    x = x.astype(np.float64)
    for centre in (False, True):  # scale first, so that neither the mean nor the scale overflows
        if centre:
            x -= x.mean(axis=0)
        scale = np.abs(x).max()
        if not scale > 0:  # every row the same
            return np.zeros((n, 2))
        x /= scale
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    perplexity = min(perplexity, n - 1.0 - 1e-6)
    return TSNE(
        n_components=2, perplexity=perplexity, random_state=0, init="pca", learning_rate="auto"
    ).fit_transform(x)


def load_embedding_sample(path: Path) -> dict[str, np.ndarray]:
    """RUN/embeddings.npz (as ``avtrain evaluate`` writes it), checked: per modality the ids
    (strings) and the embeddings before and after the generator (finite real numbers, one row
    per id, as many columns as the other modality's), at most TSNE_MAX_ITEMS items and
    MAX_EMBEDDINGS_BYTES, as a file (a regular file inside RUN: :func:`avdata.untrusted.read_inside`)
    and uncompressed. Else one ReportError."""
    try:
        raw = read_inside(path.parent, path.name, max_bytes=MAX_EMBEDDINGS_BYTES)
        z = np.load(io.BytesIO(raw), allow_pickle=False)
        if isinstance(z, np.lib.npyio.NpzFile):
            with z:
                if sum(info.file_size for info in z.zip.infolist()) > MAX_EMBEDDINGS_BYTES:
                    raise ReportError(
                        f"{path}: its arrays unpack to more than {MAX_EMBEDDINGS_BYTES >> 20} MiB, "
                        "larger than any embedding sample"
                    )
                d = {k: z[k] for k in z.files}
        else:
            d = None  # a single .npy array
    except ReportError:
        raise
    except AvmatchError as exc:  # refused by read_inside
        raise ReportError(str(exc)) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ReportError(f"{path}: not a readable embedding sample ({exc})") from None
    if d is None:
        raise ReportError(f"{path}: a single array, not an .npz archive of arrays")
    for m in ("audio", "face"):
        for k in (f"{m}_ids", f"{m}_before", f"{m}_after"):
            if k not in d:
                raise ReportError(f"{path}: no array {k!r}; not an embedding sample of avtrain evaluate")
        if d[f"{m}_ids"].ndim != 1 or d[f"{m}_ids"].dtype.kind != "U":
            raise ReportError(f"{path}: {m}_ids is not a list of ids (strings)")
        n = len(d[f"{m}_ids"])
        for k in (f"{m}_before", f"{m}_after"):
            a = d[k]
            # a method without diagnostic features stores (n, 0) "before" arrays
            if (
                a.ndim != 2
                or a.shape[0] != n
                or a.shape[1] < (k.endswith("_after"))
                or a.dtype.kind not in "fiu"
            ):
                raise ReportError(f"{path}: {k} is not {n} rows of real numbers, one per {m}_ids entry")
            if not np.isfinite(a).all():
                raise ReportError(f"{path}: {k} holds NaN or infinite values")
    if len(d["audio_ids"]) + len(d["face_ids"]) > TSNE_MAX_ITEMS:
        raise ReportError(f"{path}: more than the {TSNE_MAX_ITEMS} items of an embedding sample")
    for space in ("before", "after"):
        if d[f"audio_{space}"].shape[1] != d[f"face_{space}"].shape[1]:
            raise ReportError(f"{path}: audio_{space} and face_{space} have different widths")
    return d


@_plain_text
def tsne_plot(npz_path: Path) -> tuple[str | None, str]:
    if not os.path.lexists(npz_path):  # whatever else is there is load_embedding_sample's to refuse
        return None, f"{npz_path.name} not found (run avtrain evaluate)"
    d = load_embedding_sample(npz_path)
    na, nf = len(d["audio_ids"]), len(d["face_ids"])
    if na + nf < 5:
        return None, f"only {na + nf} embedded items in {npz_path.name}: too few for t-SNE"
    ids = np.concatenate([d["audio_ids"], d["face_ids"]])
    uniq = sorted(set(ids.tolist()))
    fig = _figure(11, 5)
    same = []
    spaces = [s for s in ("before", "after") if d[f"audio_{s}"].shape[1] > 0]
    for i, space in enumerate(spaces):
        ax = fig.add_subplot(1, len(spaces), i + 1)
        y = _tsne(np.concatenate([d[f"audio_{space}"], d[f"face_{space}"]]))
        if not y.any():
            same.append(f"all embeddings {space} the generator are equal (one point)")
        for j, ident in enumerate(uniq):
            for mod, sl, colour in (
                ("audio", slice(0, na), "tab:blue"),
                ("face", slice(na, na + nf), "tab:orange"),
            ):
                sel = np.flatnonzero(ids[sl] == ident) + sl.start
                if sel.size:
                    ax.scatter(
                        y[sel, 0],
                        y[sel, 1],
                        c=colour,
                        marker=MARKERS[j % len(MARKERS)],
                        s=22,
                        alpha=0.8,
                        label=mod if j == 0 else None,
                    )
        ax.set_title(f"{space} the generator ({d[f'audio_{space}'].shape[1]}-d)")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize="small")
    perplexity = min(30.0, max(2.0, (na + nf - 1) / 3.0))
    return _png(fig), (
        f"{na} voices and {nf} faces of {len(uniq)} identities; colour = modality, marker = identity; "
        f"sklearn TSNE, perplexity {perplexity:.1f}, random_state 0, PCA init."
        + "".join(f" Note: {s}." for s in same)
    )


@_plain_text
def distance_plot(m: dict) -> tuple[str | None, str]:
    pd_ = m.get("pair_distance") or {}
    if pd_.get("after") and not pd_.get("before"):
        return None, "this method has no features before its embedding layers to compare with"
    if not pd_.get("before") or not pd_.get("after"):
        return None, "no identity has both voices and faces among the evaluated items"
    fig = _figure(9, 3.5)
    ax = fig.add_subplot(1, 2, 1)
    dims = pd_.get("dims") or {"before": 3200, "after": 128}
    labels = [f"before G ({dims['before']}-d)", f"after G ({dims['after']}-d)"]
    ax.bar(labels, [pd_["before"]["same"], pd_["after"]["same"]], color=["tab:gray", "tab:green"])
    ax.set_title("mean same-identity distance (raw)")
    ax.set_ylabel("Euclidean distance")
    ax = fig.add_subplot(1, 2, 2)
    vals = [pd_["before"]["normalised"], pd_["after"]["normalised"]]
    ax.bar(labels, [v if v is not None else np.nan for v in vals], color=["tab:gray", "tab:green"])
    ax.axhline(1.0, color="k", ls=":", lw=1)
    ax.set_title("same / different identity (normalised)")
    text = (
        f"{pd_['n_audio']} voices, {pd_['n_face']} faces, {pd_['n_identities_both']} identities with both. "
        "Raw distances live in spaces of different dimension and scale, so compare the normalised bars: "
        "mean same-identity distance divided by the mean different-identity distance in the same space "
        "(1 = no better than a random pair; lower = voices closer to their own faces)."
    )
    return _png(fig), text


# --------------------------------------------------------------------------- comparison


def distinguishing(configs: list[dict]) -> list[str]:
    """The ablation keys plus every other (non-runtime) setting that differs between runs."""
    keys = set().union(*configs) if configs else set()
    other = sorted(
        k
        for k in keys - set(ABLATION_KEYS) - RUNTIME_KEYS
        if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1
    )
    return list(ABLATION_KEYS) + other


def run_label(cfg: dict, extra_keys: list[str]) -> str:
    al, ml = cfg.get("adversarial", True), cfg.get("metric", True)
    name = {
        (True, True): "AL+ML",
        (True, False): "AL only",
        (False, True): "ML only",
        (False, False): "neither",
    }[bool(al), bool(ml)]
    parts = []
    if al:
        parts.append(str(cfg.get("adversarial_kind")))
    if ml:
        parts.append(str(cfg.get("metric_kind")))
    parts += [f"{k}={cfg.get(k)}" for k in extra_keys if k not in ABLATION_KEYS]
    return name + (f" ({', '.join(parts)})" if parts else "")


def _main_metrics(m: dict) -> dict[str, dict]:
    out = {}
    for r in metric_rows(m):
        if r.task == "matching":
            out[f"match {_arrow(r.direction)} k={r.k}"] = r.entry
        elif r.task == "verification" and r.measure == "auc":
            out[f"verif AUC {r.name}"] = r.entry
        elif r.task == "retrieval" and r.measure == "R@10":
            out[f"R@10 {r.split} {_arrow(r.direction)}"] = r.entry
    return out


def compare_table(runs: list[tuple[Path, dict]]) -> str:
    configs = [flat_config(m.get("config") or {}) for _, m in runs]
    keys = distinguishing(configs)
    per_run = [_main_metrics(m) for _, m in runs]

    def order(name: str):
        if name.startswith("match"):
            return (0, name[6:9], int(name.split("k=")[1]))
        return (1, name, 0)

    cols = sorted(set().union(*per_run), key=order)
    header = ["run", "label", "score"] + keys + [f"{c} %" for c in cols]
    rows = []
    for (run, m), cfg, mm in zip(runs, configs, per_run):
        rows.append(
            [run, run_label(cfg, keys), _rule_name(m)]
            + [cfg.get(k, "–") for k in keys]
            + [_pct(mm.get(c)) for c in cols]
        )
    return _table(header, rows, "compare")


# --------------------------------------------------------------------------- page

_RULE_NOTES = {  # the report's one-line account of each scoring rule (docs/evaluation.md)
    "neg_l2": "−Euclidean distance between the embeddings; a learned head, where the run has one for a "
    "list, is shown beside as “head”",
    "cosine": "cosine similarity of the embeddings; a learned head, where the run has one for a list, "
    "is shown beside as “head”",
    "head": "the method's learned head; lists it has no head for are listed as not scored",
}

CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f2f2f2} .side{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}
.warn{background:#fff4e0;border-left:4px solid #e69500;padding:0.4em 0.7em;max-width:36em}
.paper{background:#fafafa;color:#555} small{color:#666} img{max-width:100%}
"""


def build_report(
    run: str | Path,
    metrics: str | Path | None = None,
    out: str | Path | None = None,
    compare: tuple[str | Path, ...] | list = (),
) -> Path:
    """Write the HTML report of RUN (default RUN/report.html) and return its path."""
    run = Path(run)
    m = load_metrics(metrics) if metrics else load_metrics(run / "metrics.json", inside=True)
    others = [
        (Path(r), load_metrics(Path(r) / "metrics.json", inside=True)) for r in compare
    ]  # before any plot
    out = Path(out) if out else run / "report.html"
    cfg = flat_config(m.get("config") or {})
    items, boot = m.get("items") or {}, m.get("bootstrap") or {}  # either may be null
    parts = [
        f"<h1>AML report: {_esc(run)}</h1>",
        f"<p>checkpoint epoch {_esc(m.get('checkpoint_epoch'))} (step {_esc(m.get('checkpoint_step'))}); "
        f"task {_esc(cfg.get('task'))}, k={_esc(cfg.get('k'))}, direction {_esc(cfg.get('direction'))}; "
        f"label: <b>{_esc(run_label(cfg, []))}</b>. Shards {_esc(m.get('shards'))}, tuples {_esc(m.get('tuples'))}; "
        f"{_esc(items.get('audio'))} voices and {_esc(items.get('face'))} faces embedded once each.</p>",
        f"<p>Scoring rule: <b>{_esc(_rule_name(m))}</b> ({_esc(_RULE_NOTES[score_kind(m)])}). Values in %, "
        f"95% percentile bootstrap CIs ({_esc(boot.get('n'))} resamples, seed "
        f"{_esc(boot.get('seed'))}) in brackets. See docs/evaluation.md.</p>",
    ]

    parts.append('<div class="side"><div>')
    parts.append(f"<h2>{SECTIONS['metrics']}</h2>" + metrics_table(m))
    parts.append("</div><div>")
    parts.append(f"<h2>{SECTIONS['paper']}</h2>" + paper_table())
    parts.append("</div></div>")

    img = accuracy_vs_k(m)
    parts.append(f"<h2>{SECTIONS['accuracy_k']}</h2>" + (img or "<p>No matching lists were evaluated.</p>"))
    img = roc_plot(m)
    parts.append(f"<h2>{SECTIONS['roc']}</h2>" + (img or "<p>No verification lists were evaluated.</p>"))
    img = loss_plot(read_log(run / "log.jsonl"))
    parts.append(
        f"<h2>{SECTIONS['losses']}</h2>" + (img or f"<p>No training log at {_esc(run / 'log.jsonl')}.</p>")
    )
    img, text = tsne_plot(run / "embeddings.npz")
    parts.append(f"<h2>{SECTIONS['tsne']}</h2>" + (img or "") + f"<p>{_esc(text)}</p>")
    img, text = distance_plot(m)
    parts.append(f"<h2>{SECTIONS['distance']}</h2>" + (img or "") + f"<p>{_esc(text)}</p>")

    if compare:
        runs = [(run, m)] + others
        parts.append(
            f"<h2>{SECTIONS['compare']}</h2>"
            "<p>Main metrics of each run (%, 95% CI; the rule that scored it in column “score”), "
            "labelled by its ablation settings "
            "(AL = adversarial learning, ML = metric learning) and any other setting that differs. "
            "Compare runs evaluated on the same tuple lists only.</p>" + compare_table(runs)
        )

    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>AML report: {_esc(run)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
    atomic_write_text(out, page)
    return out
