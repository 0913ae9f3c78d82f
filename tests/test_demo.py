"""The demo learns for real: `make demo` end to end, thresholds on unseen identities.

Slow (about 10 minutes on 2 cores): run with `make test-slow`.
"""

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_make_demo_learns_on_unseen_identities(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run(["make", "demo", f"DEMO={out}"], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((out / "runs" / "aml" / "metrics.json").read_text())
    assert metrics["matching_split"] == "test"  # C-E identities, never seen in training
    for direction in ("a2v", "v2a"):
        assert metrics["matching"][direction]["k2"]["value"] >= 0.80, (direction, metrics["matching"][direction]["k2"])
        assert metrics["matching"][direction]["k10"]["value"] >= 0.30, (direction, metrics["matching"][direction]["k10"])
    html = (out / "runs" / "aml" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
