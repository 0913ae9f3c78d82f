"""The demo learns for real: `make demo` end to end, thresholds on unseen identities.

Slow (about 10 and 11 minutes on 2 cores): run with `make test-slow`.
"""

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_make_demo_learns_on_unseen_identities(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run(
        ["make", "demo", f"DEMO={out}"], cwd=REPO, capture_output=True, text=True, timeout=1800
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((out / "runs" / "aml" / "metrics.json").read_text())
    assert metrics["matching_split"] == "test"  # C-E identities, never seen in training
    for direction in ("a2v", "v2a"):
        assert metrics["matching"][direction]["k2"]["value"] >= 0.80, (
            direction,
            metrics["matching"][direction]["k2"],
        )
        assert metrics["matching"][direction]["k10"]["value"] >= 0.30, (
            direction,
            metrics["matching"][direction]["k10"],
        )
    html = (out / "runs" / "aml" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5


@pytest.mark.slow
def test_make_demo_pins_verifies_seen_heard_and_unseen_unheard(tmp_path):
    """The Learnable-PINs half: trained on pins train identities, verified on both test sets."""
    out = tmp_path / "demo"
    res = subprocess.run(
        ["make", "demo-pins", f"DEMO={out}"], cwd=REPO, capture_output=True, text=True, timeout=1800
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((out / "runs" / "aml-pins" / "metrics.json").read_text())
    assert set(metrics["verification"]) == {"seen_heard", "unseen_unheard"}
    for split, entry in metrics["verification"].items():
        assert entry["n_pos"] == entry["n_neg"] > 0
        assert entry["auc"]["value"] >= 0.75, (split, entry["auc"])  # chance is 0.5
    # tuples-pins is untouched by the training tuples: still what manifests/demo describes
    res = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "avdata"),
            "manifest",
            "verify",
            str(out / "tuples-pins"),
            "--against",
            str(REPO / "manifests" / "demo" / "tuples-pins.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert (out / "runs" / "aml-pins" / "report.html").read_text().count("data:image/png;base64,") >= 4
