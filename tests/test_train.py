"""avtrain fit on the synthetic corpus: learning, resume, unsafe shards, DDP on 2 CPU processes."""

import io
import itertools
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import make_tuples_args, tiny_fit_sets

from avtrain.cli import main
from avtrain.run.checkpoint import LAST as CHECKPOINT
from avtrain.run.checkpoint import CheckpointError, UnsafeCheckpointError, load_checkpoint
from avtrain.run.config import ConfigError, TrainConfig, load_config, save_config
from avtrain.train.data import batches_per_rank, epoch_shards, split_for
from avtrain.train.loop import fit

REPO = Path(__file__).resolve().parents[1]


def small_cfg(**kw) -> TrainConfig:
    base = dict(task="matching", k=2, direction="a2v", epochs=2, batch_size=8, workers=1, seed=3)
    return TrainConfig(**(base | kw))


def test_short_run_lowers_losses(train_tuples, tmp_path):
    cfg = small_cfg(epochs=8, workers=2)
    fit(cfg, train_tuples, tmp_path / "run", progress=False)
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) >= 40
    first, last = log[: len(log) // 4], log[-len(log) // 4 :]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)
    assert mean(last, "L_total") < 0.9 * mean(first, "L_total")
    assert mean(last, "L_metric") < 0.9 * mean(first, "L_metric")
    # the LR decays log-linearly from 5e-3 to 5e-5 over the run
    assert log[0]["lr"] < 5e-3 and abs(log[-1]["lr"] - 5e-5) < 1e-9
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    # the saved config is the run's, with the tuple directory it trained on recorded
    assert (
        state["config"] == cfg.to_dict() | {"tuples_dir": str(train_tuples)} and state["epoch"] == cfg.epochs
    )
    assert cfg.tuples_dir is None  # the caller's config is left as it was


def test_killed_run_resumes_to_identical_weights(train_tuples, tmp_path):
    args = [
        "-m",
        "avtrain",
        "fit",
        "--shards",
        str(train_tuples),
        "--epochs",
        "4",
        "--no-progress",
        "--set",
        "batch_size=8",
        "--set",
        "workers=1",
        "--seed",
        "11",
    ]
    clean = tmp_path / "clean"
    subprocess.run([sys.executable, *args, "--out", str(clean)], check=True, cwd=REPO, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, *args, "--out", str(killed)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        ck = killed / CHECKPOINT
        try:
            if ck.is_file() and load_checkpoint(ck)["epoch"] >= 1:
                break
        except (CheckpointError, UnsafeCheckpointError):  # read while the trainer swapped files
            pass
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(killed / CHECKPOINT)["epoch"] < 4, "the run finished before it could be killed"
    subprocess.run(
        [sys.executable, *args, "--out", str(killed), "--resume"], check=True, cwd=REPO, capture_output=True
    )
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
    res = CliRunner().invoke(
        main,
        [
            "fit",
            "--shards",
            str(evil),
            "--tuple-shards",  # a directory of tuple shards only (no manifest): streamed
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--set",
            "batch_size=4",
            "--set",
            "workers=0",
            "--no-progress",
        ],
    )
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
    assert (
        cfg.task,
        cfg.k,
        cfg.loss.adversarial,
        cfg.epochs,
        cfg.loss.metric_kind,
        cfg.lr_start,
        cfg.model.clip_value,
    ) == ("retrieval", 5, False, 3, "triplet", 0.001, None)
    assert TrainConfig(task="verification").epochs == 20 and TrainConfig().epochs == 50
    with pytest.raises(ConfigError, match="unknown setting 'nope'"):
        load_config(None, {}, ["nope=1"])


def test_ddp_two_cpu_processes(train_tuples, tmp_path):
    run = tmp_path / "ddp"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    import socket

    with socket.socket() as s:  # a free port: a fixed one collides with any other run on the machine
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            port,
            "-m",
            "avtrain",
            "fit",
            "--shards",
            str(train_tuples),
            "--out",
            str(run),
            "--epochs",
            "2",
            "--device",
            "cpu",
            "--set",
            "batch_size=4",
            "--set",
            "workers=1",
            "--set",
            "record_batches=true",
            "--no-progress",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
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


# --------------------------------------------------------------------------- settings checked before the run exists


def test_yaml_numbers_are_coerced_and_bad_values_name_their_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "lr_start: 1e-3\nbatch_size: 16\nloss:\n  triplet_margin: 0.5\nmodel:\n  generator_dropout: 0.2\n"
    )
    cfg = load_config(f)  # YAML reads 1e-3 as a string; it must arrive as a float
    assert type(cfg.lr_start) is float and cfg.lr_start == 1e-3
    assert (cfg.loss.triplet_margin, cfg.model.generator_dropout) == (0.5, 0.2)
    save_config(cfg, tmp_path / "saved.yaml")
    assert "lr_start: 0.001\n" in (tmp_path / "saved.yaml").read_text()
    assert load_config(tmp_path / "saved.yaml") == cfg
    f.write_text("batch_size: fifty\n")
    with pytest.raises(ConfigError, match=r"^batch_size: expected an integer, got 'fifty'$"):
        load_config(f)
    cases = {
        "batch_size=0": "batch_size: must be >= 1",
        "lr_start=0": "lr_start: must be > 0",
        "lr_dis=-1": "lr_dis: must be > 0",
        "model.discriminator_dropout=1": "must be in [0, 1)",
        "loss.triplet_margin=fifty": "loss.triplet_margin: expected a number",
        "loss.tripletmargin=1": "did you mean loss.triplet_margin",
        "lr_strat=1": "did you mean lr_start",
        "amp=maybe": "amp: expected true or false",
        "direction=a2b": "direction: expected one of a2v, v2a",
    }
    for item, message in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(None, {}, [item])
    # every loss and model setting is reachable, nested or by its old flat name
    cfg = load_config(
        None,
        {},
        [
            "loss.rll_alpha=1.0",
            "model.head_dropout=0.3",
            "loss.triplet_margin=0.5",
            "rll_margin=0.2",
            "shared_generator=false",
        ],
    )
    assert (
        cfg.loss.rll_alpha,
        cfg.model.head_dropout,
        cfg.loss.triplet_margin,
        cfg.loss.rll_margin,
        cfg.model.shared_generator,
    ) == (1.0, 0.3, 0.5, 0.2, False)
    assert cfg.loss_config().rll_alpha == 1.0 and cfg.model_config().head_dropout == 0.3


@pytest.mark.parametrize(
    "sets, message",
    [
        (["batch_size=0"], "batch_size: must be >= 1, got 0"),
        (["lr_start=fifty"], "lr_start: expected a number, got 'fifty'"),
        (["loss.trplet_margin=1"], "did you mean loss.triplet_margin"),
        (["batch_size=100000"], "give no full batch of 100000"),
        (["device=cuda"], "CUDA is not available"),
    ],
)
def test_failed_start_is_one_line_and_leaves_no_run_dir(train_tuples, tmp_path, sets, message):
    if sets == ["device=cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    args = ["fit", "--shards", str(train_tuples), "--out", str(out), "--epochs", "1", "--no-progress"]
    res = CliRunner().invoke(main, args + [a for s in sets for a in ("--set", s)])
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: ") and res.output.count("\n") == 1 and message in res.output, (
        res.output
    )
    assert not out.exists()


def test_resume_names_each_difference_and_epochs_may_grow(train_tuples, tmp_path):
    run = tmp_path / "run"
    base = [
        "fit",
        "--shards",
        str(train_tuples),
        "--out",
        str(run),
        "--no-progress",
        *tiny_fit_sets(3),
    ]
    res = CliRunner().invoke(main, base + ["--epochs", "1"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(
        main,
        base + ["--epochs", "1", "--resume", "--set", "lr_start=1e-3", "--set", "loss.triplet_margin=0.5"],
    )
    assert res.exit_code == 1 and res.output.count("\n") == 1
    assert "lr_start: 0.005 -> 0.001" in res.output and "loss.triplet_margin: 1.0 -> 0.5" in res.output
    assert "Resume with the saved settings" in res.output
    res = CliRunner().invoke(main, base + ["--epochs", "2", "--resume"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(run / CHECKPOINT)["epoch"] == 2
    log = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    lrs = [r["lr"] for r in log]
    # the schedule stays defined: never rises, ends at lr_end; the finished 1-epoch run was at lr_end
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(lrs)) and lrs[-1] == pytest.approx(5e-5)


def test_lr_schedule_continues_from_the_current_lr_when_epochs_grow():
    from avtrain.train.loop import lr_at

    plan = [[0, 5e-3, 10]]
    old = [lr_at(s, plan, 5e-3, 5e-5) for s in range(11)]
    assert old[0] == 5e-3 and old[9] == pytest.approx(5e-5) and old[10] == pytest.approx(5e-5)
    grown = plan + [[4, lr_at(4, plan, 5e-3, 5e-5), 20]]  # resumed at step 4 with 20 steps in all
    new = [lr_at(s, grown, 5e-3, 5e-5) for s in range(20)]
    assert new[:5] == old[:5]  # the steps already taken keep their LR
    assert all(b < a for a, b in itertools.pairwise(new[4:]))  # continuous, decaying
    assert new[19] == pytest.approx(5e-5)


# --------------------------------------------------------------------------- the adversarial step


def _step_setup(clip_value=0.01, d_steps=1, seed=0):
    from avtrain.methods import build_method

    cfg = TrainConfig.from_dict({"batch_size": 4, "d_steps": d_steps, "model": {"clip_value": clip_value}})
    torch.manual_seed(seed)
    model = build_method(cfg)
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(4, 1, 224, 125, generator=g)
    gallery = torch.rand(4, 2, 3, 224, 224, generator=g) * 2 - 1
    labels = torch.tensor([0, 1, 1, 0])
    return cfg, model, (query, gallery, labels)


def _adam(cfg, model):
    return (
        torch.optim.Adam(model.encoder_parameters(), lr=cfg.lr_start),
        torch.optim.Adam(model.discriminator.parameters(), lr=cfg.lr_dis),
    )


def _step(model, opt_g, opt_d, q, g, y, d_steps=1):
    """One step of the method through the seam, as fit takes it (no DDP, no autocast)."""
    from avtrain.methods import Batch, StepContext

    return model.train_step(
        Batch(q, g, y, "a2v"), {"opt_g": opt_g, "opt_d": opt_d}, StepContext(model, d_steps=d_steps)
    )


def test_discriminator_weights_are_clipped_after_real_steps(one_torch_thread):
    for clip in (0.01, None):
        cfg, model, (q, g, y) = _step_setup(clip_value=clip)
        opt_g, opt_d = _adam(cfg, model)
        model.train()
        for _ in range(3):
            _step(model, opt_g, opt_d, q, g, y, cfg.d_steps)
        biggest = max(p.detach().abs().max().item() for p in model.discriminator.parameters())
        if clip:
            assert biggest <= 0.01
        else:
            assert biggest > 0.01  # Xavier init of Linear(128, 2) reaches ~0.2: nothing clipped it


def test_d_steps_discriminator_steps_per_batch(one_torch_thread):
    cfg, model, (q, g, y) = _step_setup(d_steps=2)
    opt_g, opt_d = _adam(cfg, model)
    model.train()
    for _ in range(3):
        _step(model, opt_g, opt_d, q, g, y, cfg.d_steps)
    d_state = opt_d.state_dict()["state"]
    g_state = opt_g.state_dict()["state"]
    assert {int(s["step"]) for s in d_state.values()} == {6}  # exactly 2 per batch
    assert {int(s["step"]) for s in g_state.values()} == {3}


def test_first_encoder_update_is_the_gradient_of_the_aml_objective(one_torch_thread):
    """One train_step with SGD on a fixed batch moves every encoder/generator/head weight by
    -lr times the gradient of beta*L_metric + gamma*L_cls - L_dis, computed here from the loss
    functions on a copy of the model holding the discriminator the D step left behind."""
    import copy

    import torch.nn.functional as F
    from torch.func import functional_call

    from avtrain.losses import (
        lifted_structured_loss,
        modality_loss,
        split_gallery,
        split_modalities,
    )

    cfg, model, (q, g, y) = _step_setup(clip_value=0.01)
    model.eval()  # no dropout: the batch and the weights alone decide the gradient
    before = copy.deepcopy(model)
    lr = 0.1
    opt_g = torch.optim.SGD(model.encoder_parameters(), lr=lr)
    opt_d = torch.optim.SGD(model.discriminator.parameters(), lr=0.5)
    _step(model, opt_g, opt_d, q, g, y, d_steps=1)
    d_after = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    assert any(not torch.equal(d_after[k], v) for k, v in before.discriminator.state_dict().items())

    ref = copy.deepcopy(before)
    ref.discriminator.load_state_dict(d_after)  # the encoder step sees D after its own step
    out = ref(q, g, "a2v")
    beta, gamma, lam = cfg.loss.beta, cfg.loss.gamma, cfg.loss.lambda_margin
    h_pos, h_neg = split_gallery(out["h_gallery"], y)
    L_metric = lifted_structured_loss(out["h_query"], h_pos, h_neg, lam, True)["loss"]
    L_cls = F.cross_entropy(out["logits"], y)
    h_audio, h_face = split_modalities(out)
    frozen = {n: p.detach() for n, p in ref.discriminator.named_parameters()}
    L_dis = modality_loss(
        functional_call(ref.discriminator, frozen, (h_audio,)),
        functional_call(ref.discriminator, frozen, (h_face,)),
        "gan",
        q.shape[0],
    )["loss"]
    assert L_metric.item() > 0 and L_cls.item() > 0 and L_dis.item() > 0
    params = ref.encoder_parameters()
    grads = torch.autograd.grad(beta * L_metric + gamma * L_cls - L_dis, params, allow_unused=True)
    names = {id(p): n for n, p in ref.named_parameters()}
    after = dict(model.named_parameters())
    moved = 0
    for p, grad in zip(params, grads):
        name = names[id(p)]
        expected = p.detach() - lr * (grad if grad is not None else torch.zeros_like(p))
        assert torch.allclose(after[name].detach(), expected, rtol=1e-4, atol=1e-6), name
        moved += int(grad is not None and grad.abs().sum() > 0)
    assert moved > 10


# --------------------------------------------------------------------------- validation during fit


@pytest.fixture(scope="module")
def val_tuples(train_tuples, tmp_path_factory):
    """A-B (val) lists of the fixture corpus: matching k=2 a2v and verification."""
    from avdata.cli import main as avdata_main

    out = tmp_path_factory.mktemp("val") / "tuples-val"
    shards = train_tuples.parent / "shards"
    for kw in ({"task": "matching", "direction": "a2v"}, {"task": "verification"}):
        res = CliRunner().invoke(avdata_main, make_tuples_args(shards, out, split="val", **kw))
        assert res.exit_code == 0, res.output
    return out


def test_validation_keeps_best_and_last_n(train_tuples, val_tuples, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from avtrain.run.checkpoint import checksum_path

    run = tmp_path / "run"
    shards = train_tuples.parent / "shards"
    cfg = small_cfg(epochs=3, workers=0, threads=1, max_steps_per_epoch=3, keep_last=2)
    summary = fit(cfg, train_tuples, run, progress=False, val_tuples=val_tuples, val_shards=shards)
    log = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    vals = [r for r in log if "val" in r]
    assert len(vals) == 3 and set(vals[0]["val"]) == {"val_matching_a2v_k2", "val_verification_auc"}
    values = [r["val"]["val_matching_a2v_k2"] for r in vals]
    best_epoch = values.index(max(values)) + 1  # first epoch reaching the maximum
    assert summary["best"] == {"metric": "val_matching_a2v_k2", "value": max(values), "epoch": best_epoch}
    assert (
        load_checkpoint(run / "best.pt")["epoch"] == best_epoch and checksum_path(run / "best.pt").is_file()
    )
    assert sorted(p.name for p in run.glob("epoch-*.pt")) == ["epoch-0002.pt", "epoch-0003.pt"]
    assert not (run / "epoch-0001.pt.sha256").exists()
    # validation draws no random numbers: the same run without it trains to the same weights
    fit(cfg, train_tuples, tmp_path / "plain", progress=False)
    a, b = (
        load_checkpoint(run / CHECKPOINT)["model"],
        load_checkpoint(tmp_path / "plain" / CHECKPOINT)["model"],
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    # TensorBoard: every loss term, lr, tuples/s, val metrics per epoch
    tags = set()
    for events in (run / "tb").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {
        "loss/L_total",
        "loss/L_dis",
        "loss/L_metric",
        "loss/L_cls",
        "loss/L_adv",
        "train/lr",
        "train/tuples_per_s",
        "val/val_matching_a2v_k2",
        "val/val_verification_auc",
    } <= tags
    # evaluate picks best.pt with --checkpoint best
    res = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--run",
            str(run),
            "--checkpoint",
            "best",
            "--shards",
            str(shards),
            "--tuples",
            str(val_tuples),
            "--bootstrap",
            "20",
            "--out",
            str(tmp_path / "m.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["checkpoint_epoch"] == best_epoch and m["checkpoint"] == "best"
    # the same -L2 rule and code: evaluate's val accuracy of best.pt is the one fit logged
    assert m["matching"]["a2v"]["k2"]["value"] == pytest.approx(max(values))
    # ... and its headline metrics land in the run's TensorBoard directory
    tags = set()
    for events in (run / "tb").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"eval/matching_a2v_k2", "eval/verification_val_auc"} <= tags


def test_patience_stops_a_run_that_no_longer_improves(train_tuples, val_tuples, tmp_path):
    run = tmp_path / "run"
    # a learning rate so small that the val metric cannot change: the 2nd validation is no better
    res = CliRunner().invoke(
        main,
        [
            "fit",
            "--shards",
            str(train_tuples),
            "--out",
            str(run),
            "--epochs",
            "5",
            "--no-progress",
            "--val-tuples",
            str(val_tuples),
            "--val-shards",
            str(train_tuples.parent / "shards"),
            "--patience",
            "1",
            *tiny_fit_sets(2, "lr_start=1e-12"),
            "--set",
            "lr_end=1e-13",
            "--set",
            "lr_dis=1e-12",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "stopped early" in res.output and "at epoch 1 -> best.pt" in res.output
    assert load_checkpoint(run / CHECKPOINT)["epoch"] == 2
    # --val-tuples alone finds its item shards through its manifest (tests/test_settings_travel.py):
    # the selection metric is then checked against its lists
    res = CliRunner().invoke(
        main,
        [
            "fit",
            "--shards",
            str(train_tuples),
            "--out",
            str(tmp_path / "x"),
            "--val-tuples",
            str(val_tuples),
            "--select",
            "val_matching_v2a_k3",
        ],
    )
    assert res.exit_code == 1 and "val_matching_v2a_k3" in res.output and not (tmp_path / "x").exists()


def test_bench_and_fit_run_the_same_train_step(train_tuples, tmp_path, monkeypatch, one_torch_thread):
    """bench/train_step.py and fit both go through the method's train_step (a spy that delegates
    to the real step counts the calls), so the benchmark times the step fit runs."""
    import importlib.util

    import torch

    import avtrain.train.loop as T
    from avtrain.methods.aml.model import AML

    real, calls = AML.train_step, []

    def spy(self, batch, optimizers, ctx):
        calls.append(ctx.d_steps)
        return real(self, batch, optimizers, ctx)

    monkeypatch.setattr(AML, "train_step", spy)
    spec = importlib.util.spec_from_file_location("bench_train_step", REPO / "bench" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rate = bench.run("matching", 2, 2, 1, torch.device("cpu"), adversarial=True, amp=False)
    assert rate > 0 and len(calls) == 3  # 2 warm-up steps + 1 timed step, all through train_step
    from avtrain.run.config import load_config

    cfg = load_config(
        None, {"epochs": 1, "device": "cpu"}, ["batch_size=4", "workers=0", "max_steps_per_epoch=2"]
    )
    T.fit(cfg, train_tuples, tmp_path / "run", progress=False)
    assert len(calls) == 3 + 2 and calls[-1] == cfg.d_steps


# --------------------------------------------------------------------------- #20: hostile runs


def _fit_args(train_tuples, run, *extra) -> list[str]:
    return ["fit", "--shards", str(train_tuples), "--out", str(run), "--no-progress", *map(str, extra)]


def _fit_process(train_tuples, run, *extra, **popen) -> subprocess.Popen:
    """`avtrain fit` in its own process (to be killed or to hold the run directory)."""
    args = [sys.executable, "-m", "avtrain", *_fit_args(train_tuples, run, *extra)]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.Popen(args, cwd=REPO, env=env, **popen)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended first"
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _one_line(res) -> str:
    assert res.exit_code == 1 and res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
    return res.output


def test_second_fit_into_a_run_directory_stops_naming_it(train_tuples, tmp_path):
    """#20 item 7: a fit holds RUN/.lock; a second fit (fresh or --resume) into RUN stops at once."""
    run = tmp_path / "run"
    first = _fit_process(
        train_tuples,
        run,
        "--epochs",
        "50",
        *tiny_fit_sets(1000),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(lambda: (run / "log.jsonl").is_file(), first)
        for extra in ([], ["--resume"]):
            args = _fit_args(train_tuples, run, "--epochs", "1", *tiny_fit_sets(1), *extra)
            line = _one_line(CliRunner().invoke(main, args))
            assert f"{run} is being written by another avtrain fit (pid {first.pid})" in line, line
        assert first.poll() is None, first.stderr.read()
    finally:
        first.kill()
        first.wait()
    assert (run / "config.yaml").is_file() and not (run / CHECKPOINT).exists()  # the first run's own files


def test_fit_removes_temp_files_of_killed_saves(train_tuples, tmp_path):
    """#20 item 22: a save killed between writing its temp file and renaming it leaves
    .checkpoint.pt.tmpPID; the next fit into RUN removes it once it holds the lock (a live
    writer's temp file, e.g. evaluate's metrics.json, is kept)."""
    run = tmp_path / "run"
    res = CliRunner().invoke(main, _fit_args(train_tuples, run, "--epochs", "1", *tiny_fit_sets(1)))
    assert res.exit_code == 0, res.output
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    orphan = run / f".checkpoint.pt.tmp{int(dead.stdout)}"
    orphan.write_bytes((run / CHECKPOINT).read_bytes()[:1000])
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kept = run / f".metrics.json.tmp{live.pid}"
        kept.write_text("{")
        res = CliRunner().invoke(
            main, _fit_args(train_tuples, run, "--epochs", "2", "--resume", *tiny_fit_sets(1))
        )
        assert res.exit_code == 0, res.output
        assert not orphan.exists() and kept.exists()
    finally:
        live.kill()
        live.wait()


# kill -9 of `avtrain fit` at its first best.pt save, i.e. right after that epoch's checkpoint.pt
KILL_BEFORE_BEST = """
import os, signal, sys
import avtrain.train.loop as train
save = train.save_checkpoint
def save_or_die(path, state):
    if path.name == "best.pt":
        os.kill(os.getpid(), signal.SIGKILL)
    return save(path, state)
train.save_checkpoint = save_or_die
from avtrain.cli import main
main(sys.argv[1:], prog_name="avtrain")
"""


def test_kill_between_checkpoint_and_best_saves_is_repaired_on_resume(train_tuples, val_tuples, tmp_path):
    """#20 item 9: checkpoint.pt records the best epoch; a resume rebuilds best.pt from it when the
    kill came between the two saves, so best.pt is the epoch fit reports."""
    run = tmp_path / "run"
    val = ["--val-shards", train_tuples.parent / "shards", "--val-tuples", val_tuples]
    args = _fit_args(train_tuples, run, "--epochs", "1", *val, *tiny_fit_sets(2))
    env = os.environ | {"PYTHONPATH": str(REPO)}
    killed = subprocess.run(
        [sys.executable, "-c", KILL_BEFORE_BEST, *args], env=env, capture_output=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_checkpoint(run / CHECKPOINT)["best"]["epoch"] == 1 and not (run / "best.pt").exists()
    res = CliRunner().invoke(main, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert (
        "at epoch 1 -> best.pt" in res.output and "best.pt: rebuilt from checkpoint.pt (epoch 1" in res.output
    )
    assert load_checkpoint(run / "best.pt")["epoch"] == 1


def test_best_pt_an_epoch_behind_is_repaired_or_refused(train_tuples, val_tuples, tmp_path):
    """#20 item 9: best.pt left at epoch 1 while checkpoint.pt (epoch 2) records the best at epoch 2
    is rebuilt from checkpoint.pt; a best.pt that no checkpoint can rebuild is refused in one line."""
    from avtrain.run.checkpoint import save_checkpoint

    done = tmp_path / "done"
    val = ["--val-shards", train_tuples.parent / "shards", "--val-tuples", val_tuples]
    args = _fit_args(train_tuples, done, "--epochs", "2", "--keep-last", "2", *val, *tiny_fit_sets(2))
    assert CliRunner().invoke(main, args).exit_code == 0
    first, second = load_checkpoint(done / "epoch-0001.pt"), load_checkpoint(done / "epoch-0002.pt")
    # the files of a run killed between its epoch-2 checkpoint.pt and best.pt saves, had epoch 2 improved
    run = tmp_path / "run"
    run.mkdir()
    best_at_2 = second["best"] | {"value": 2.0, "epoch": 2}
    save_checkpoint(run / CHECKPOINT, second | {"best": best_at_2})
    save_checkpoint(run / "best.pt", first)
    resume = _fit_args(train_tuples, run, "--epochs", "2", "--resume", *val, *tiny_fit_sets(2))
    res = CliRunner().invoke(main, resume)
    assert res.exit_code == 0 and "at epoch 2 -> best.pt" in res.output, res.output
    assert load_checkpoint(run / "best.pt")["epoch"] == 2
    # best at epoch 1 but best.pt gone: checkpoint.pt (epoch 2) cannot stand in for it
    save_checkpoint(run / CHECKPOINT, second | {"best": second["best"] | {"epoch": 1}})
    (run / "best.pt").unlink()
    line = _one_line(CliRunner().invoke(main, resume))
    assert (
        f"{run / 'best.pt'}: missing, but checkpoint.pt records the best val_matching_a2v_k2 at epoch 1"
        in line
    )


def test_resume_after_a_mid_epoch_kill_logs_each_step_once(train_tuples, tmp_path):
    """#20 item 15: the records a killed run wrote after its last checkpoint (and a line the kill
    cut short) are dropped before the resume appends, so log.jsonl has each step once, in order."""
    run = tmp_path / "run"
    # 3 epochs of 30 small steps: a wide window between the first checkpoint and the run's end
    # (the index loader is fast: 6 steps an epoch ended before a busy machine's poll caught one)
    extra = ["--epochs", "3", "--seed", "4", *tiny_fit_sets(30, "batch_size=2")]
    first = _fit_process(train_tuples, run, *extra, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def past_checkpoint() -> bool:  # a step logged after a checkpoint: mid-epoch
        try:
            saved = load_checkpoint(run / CHECKPOINT)["step"]
            steps = [json.loads(l)["step"] for l in (run / "log.jsonl").read_text().splitlines()]
        except (OSError, ValueError):  # not there yet, or read mid-write
            return False
        return saved < 90 and any(s > saved for s in steps)

    try:
        _wait_for(past_checkpoint, first)
    finally:
        first.kill()
        first.wait()
    with open(run / "log.jsonl", "a") as f:
        f.write('{"epoch": 1, "step": 9, "L_to')  # a record cut short by the kill
    res = CliRunner().invoke(main, _fit_args(train_tuples, run, *extra, "--resume"))
    assert res.exit_code == 0, res.output
    steps = [json.loads(l)["step"] for l in (run / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 91)), steps


def _with_row(val_tuples: Path, dest: Path, name: str, change) -> Path:
    """A copy of the val tuple directory whose list NAME has its last row changed (``change(row)``
    -> new row, or a list of rows -> all rows), with manifest.json's sha256 to match."""
    import hashlib
    import shutil

    shutil.copytree(val_tuples, dest)
    path = dest / "index" / f"{name}.jsonl"
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    new = change(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in new))
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["files"][f"index/{name}.jsonl"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def _last(change):
    return lambda rows: rows[:-1] + [change(rows[-1])]


MATCHING, VERIFICATION = "matching_val_a2v_k2", "verification_val"
# The first check a row fails speaks: avdata.tuples.row_problem as the list is read (FILE:LINE:),
# then tuple_lists.check_rows for what the list's own settings (k, task) require.
BAD_VAL_ROWS = {
    "not_an_object": (MATCHING, _last(lambda r: [1, 2]), "matching_val_a2v_k2.jsonl:30: not a JSON object"),
    "label_out_of_range": (
        MATCHING,
        _last(lambda r: r | {"label": 5}),
        ":30: label 5 is not a gallery position 0..1",
    ),
    "label_text": (MATCHING, _last(lambda r: r | {"label": "x"}), ":30: missing or malformed field(s) label"),
    "no_label": (
        MATCHING,
        _last(lambda r: {k: v for k, v in r.items() if k != "label"}),
        ":30: missing or malformed field(s) label",
    ),
    "gallery_text": (
        MATCHING,
        _last(lambda r: r | {"gallery": "ab"}),
        ":30: missing or malformed field(s) gallery",
    ),
    "query_list": (
        MATCHING,
        _last(lambda r: r | {"query": ["a"]}),
        ":30: missing or malformed field(s) query",
    ),
    "direction": (MATCHING, _last(lambda r: r | {"direction": "zz"}), "direction 'zz' is not a2v or v2a"),
    "gallery_of_three": (
        MATCHING,
        _last(lambda r: r | {"gallery": r["gallery"] * 2, "gallery_identities": r["gallery_identities"] * 2}),
        "row 30",
    ),
    "pair_without_face": (VERIFICATION, _last(lambda r: r | {"gallery": []}), ":40: 0 gallery items but 1"),
    "pair_label": (
        VERIFICATION,
        _last(lambda r: r | {"label": 7}),
        ":40: not one gallery item labelled 0 or 1",
    ),
    "pairs_of_one_class": (
        VERIFICATION,
        lambda rows: [r | {"label": 1} for r in rows],
        "verification_val: verification needs both positive and negative pairs",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_VAL_ROWS))
def test_malformed_val_rows_are_one_line_before_training(train_tuples, val_tuples, tmp_path, case):
    """#20 item 11: the val lists are checked row by row (and for both classes of pairs) before
    anything is trained or written; several of these were tracebacks after the first epoch."""
    name, change, phrase = BAD_VAL_ROWS[case]
    bad = _with_row(val_tuples, tmp_path / "val", name, change)
    run = tmp_path / "run"
    args = _fit_args(train_tuples, run, "--epochs", "1", *tiny_fit_sets(1))
    args += ["--val-shards", str(train_tuples.parent / "shards"), "--val-tuples", str(bad)]
    line = _one_line(CliRunner().invoke(main, args))
    assert "Error: validation: " in line and phrase in line, line
    assert not run.exists()


def _fit_sub(train_tuples, run, *extra) -> subprocess.CompletedProcess:
    """`avtrain fit` in its own process (stderr as a user sees it, writer threads included)."""
    args = [sys.executable, "-m", "avtrain", *_fit_args(train_tuples, run, *extra)]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("full", ["log", "tb"])
def test_full_disk_while_writing_the_log_or_tensorboard_is_one_line(
    train_tuples, tmp_path, small_tmpfs, full
):
    """#20 item 14: a full disk under log.jsonl (RUN on a tmpfs with room for its lock and
    config.yaml only) or under RUN/tb (a tmpfs of one page there; TensorBoard writes from a
    background thread) is the one-line error naming the file, with no traceback from any thread."""
    if full == "log":
        run = small_tmpfs("8k") / "run"
        small_tmpfs("1m", at=run / "tb")
        where = run / "log.jsonl"
    else:
        run = tmp_path / "run"
        small_tmpfs("4k", at=run / "tb")
        where = run / "tb"
    res = _fit_sub(train_tuples, run, "--epochs", "2", *tiny_fit_sets(1000))
    assert res.returncode == 1 and "Traceback" not in res.stderr and "Exception" not in res.stderr, res.stderr
    assert res.stderr.splitlines()[-1] == f"Error: no space left on device while writing {where}", res.stderr
