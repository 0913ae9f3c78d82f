"""avtrain fit on the synthetic corpus: learning, resume, unsafe shards, DDP on 2 CPU processes."""

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from avtrain.cli import main
from avtrain.config import TrainConfig, load_config
from avtrain.data import batches_per_rank, epoch_shards, split_for
from avtrain.train import CHECKPOINT, fit, load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def small_cfg(**kw) -> TrainConfig:
    base = dict(task="matching", k=2, direction="a2v", epochs=2, batch_size=8, workers=1, seed=3)
    return TrainConfig(**(base | kw))


def test_short_run_lowers_losses(train_tuples, tmp_path):
    cfg = small_cfg(epochs=8, workers=2)
    fit(cfg, train_tuples, tmp_path / "run", progress=False)
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) >= 40
    first, last = log[: len(log) // 4], log[-len(log) // 4:]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)
    assert mean(last, "L_total") < 0.9 * mean(first, "L_total")
    assert mean(last, "L_metric") < 0.9 * mean(first, "L_metric")
    # the LR decays log-linearly from 5e-3 to 5e-5 over the run
    assert log[0]["lr"] < 5e-3 and abs(log[-1]["lr"] - 5e-5) < 1e-9
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert state["config"] == cfg.to_dict() and state["epoch"] == cfg.epochs


def test_killed_run_resumes_to_identical_weights(train_tuples, tmp_path):
    args = ["-m", "avtrain", "fit", "--shards", str(train_tuples), "--epochs", "4", "--no-progress",
            "--set", "batch_size=8", "--set", "workers=1", "--seed", "11"]
    clean = tmp_path / "clean"
    subprocess.run([sys.executable, *args, "--out", str(clean)], check=True, cwd=REPO, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, *args, "--out", str(killed)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        ck = killed / CHECKPOINT
        if ck.is_file() and load_checkpoint(ck)["epoch"] >= 1:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(killed / CHECKPOINT)["epoch"] < 4, "the run finished before it could be killed"
    subprocess.run([sys.executable, *args, "--out", str(killed), "--resume"], check=True, cwd=REPO, capture_output=True)
    a, b = load_checkpoint(clean / CHECKPOINT), load_checkpoint(killed / CHECKPOINT)
    assert a["epoch"] == b["epoch"] == 4
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


class Boom:
    """Unpickling this writes a marker file: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled!"))


def test_malicious_shard_is_refused(train_tuples, tmp_path):
    evil = tmp_path / "evil"
    (evil / "shards").mkdir(parents=True)
    marker = tmp_path / "pwned"
    src = sorted((train_tuples / "shards").glob("*.tar"))[0]
    dst = evil / "shards" / src.name
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin:
            tout.addfile(m, tin.extractfile(m))
        payload = pickle.dumps(Boom(str(marker)))
        info = tarfile.TarInfo(f"{m.name.split('.')[0]}.extra.pyd")
        info.size = len(payload)
        tout.addfile(info, io.BytesIO(payload))
    (evil / "sizes.json").write_text(json.dumps({f"shards/{src.name}": 16}))
    res = CliRunner().invoke(main, ["fit", "--shards", str(evil), "--out", str(tmp_path / "run"), "--epochs", "1",
                                    "--set", "batch_size=4", "--set", "workers=0", "--no-progress"])
    assert res.exit_code != 0
    assert "refusing a pickle-type member" in str(res.output) + str(res.exception)
    assert not marker.exists()


def test_epoch_plan_is_disjoint_and_even():
    urls = [f"s{i}.tar" for i in range(7)]
    sizes = {u: 16 - i for i, u in enumerate(urls)}
    order = epoch_shards(urls, seed=1, epoch=0)
    assert sorted(order) == sorted(urls) and order != epoch_shards(urls, seed=1, epoch=1)
    parts = [split_for(order, r, 2) for r in range(2)]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == sorted(urls)
    n = batches_per_rank(urls, sizes, 4, seed=1, epoch=0, world=2, workers=2)
    assert n == min(sum(sum(sizes[u] for u in split_for(p, w, 2)) // 4 for w in range(2)) for p in parts)


def test_config_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("task: retrieval\nk: 5\nadversarial: false\n")
    cfg = load_config(f, {"epochs": 3}, ["metric_kind=triplet", "lr_start=0.001", "clip_value=none"])
    assert (cfg.task, cfg.k, cfg.adversarial, cfg.epochs, cfg.metric_kind, cfg.lr_start, cfg.clip_value) == \
        ("retrieval", 5, False, 3, "triplet", 0.001, None)
    assert TrainConfig(task="verification").epochs == 20 and TrainConfig().epochs == 50
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        load_config(None, {}, ["nope=1"])


def test_ddp_two_cpu_processes(train_tuples, tmp_path):
    run = tmp_path / "ddp"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
                          "-m", "avtrain", "fit", "--shards", str(train_tuples), "--out", str(run), "--epochs", "2",
                          "--device", "cpu", "--set", "batch_size=4", "--set", "workers=1", "--set", "record_batches=true",
                          "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    seen = {}
    for rank in (0, 1):
        rows = [json.loads(l) for l in (run / f"batches-rank{rank}.jsonl").read_text().splitlines()]
        seen[rank] = rows
    for epoch in (0, 1):
        keys = [set(k for r in seen[rank] if r["epoch"] == epoch for k in r["keys"]) for rank in (0, 1)]
        counts = [sum(1 for r in seen[rank] if r["epoch"] == epoch) for rank in (0, 1)]
        assert counts[0] == counts[1] > 0
        assert not keys[0] & keys[1]
    assert load_checkpoint(run / CHECKPOINT)["epoch"] == 2
