"""The method seam (avtrain/methods): AML behind it unchanged, and a new method in one folder plus one
registry line, trained, checkpointed, evaluated and served by code that never names it."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from avtrain.methods import METHODS, Method, build_method, get_method
from avtrain.methods.encoders import branch_for, init_weights
from avtrain.run.config import ConfigError, TrainConfig, load_config
from avtrain.train.loop import fit

FIT = ["epochs=1", "batch_size=8", "workers=0", "threads=1", "max_steps_per_epoch=3", "lr_start=0.001"]


def _weights(state_dict) -> dict:
    return {k: v.detach().clone() for k, v in state_dict.items()}


def _hand_batches(tuples_dir, shards, cfg, epoch: int, n: int) -> list[dict]:
    """The first ``n`` batches fit trains on in ``epoch``, built here without the loader: the index
    list's lines in the order of the epoch's permutation (``default_rng([seed, epoch])``, the rule
    docs/training.md states), each item read from the item shards by its offset and decoded."""
    import numpy as np

    from avdata.reader import decode_jpg, decode_npy, index_items, read_member

    rows = [
        json.loads(line) for line in (tuples_dir / "index" / f"{cfg.tuples}.jsonl").read_text().splitlines()
    ]
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(rows))
    where = index_items(shards).set_index("key")

    def item(key):
        it = where.loc[key]
        data = read_member(shards / it["tar"], int(it["data_offset"]), int(it["data_size"]))
        return decode_npy(data) if it["data_ext"] == "npy" else decode_jpg(data)

    batches = []
    for b in range(n):
        chosen = [rows[i] for i in order[b * cfg.batch_size : (b + 1) * cfg.batch_size]]
        batches.append(
            {
                "query": torch.from_numpy(np.stack([item(r["query"]) for r in chosen])),
                "gallery": torch.from_numpy(
                    np.stack([np.stack([item(g) for g in r["gallery"]]) for r in chosen])
                ),
                "label": torch.tensor([r["label"] for r in chosen]),
                "keys": [r["tuple_id"] for r in chosen],
            }
        )
    return batches


def test_aml_through_the_seam_is_algorithm_1_written_out(train_tuples, tmp_path, one_torch_thread):
    """fit (through the seam) and Algorithm 1 written out by hand here from the AML network and
    loss classes (the loop as it was before the seam) give the same per-step losses and the same
    weights, bit for bit, on the same batches: AML moved behind the seam unchanged. The hand loop's
    batches are built here from the index list and the item shards (:func:`_hand_batches`), and
    fit's own record of its batches (record_batches) must name the same tuples."""
    from avtrain.losses import AMLLoss
    from avtrain.methods.aml.model import AML
    from avtrain.train.data import to_model_inputs
    from avtrain.train.loop import lr_at

    shards = train_tuples.parent / "shards"
    cfg = load_config(None, sets=[*FIT, "record_batches=true"])
    fit(cfg, train_tuples, tmp_path / "run", progress=False, items=shards)
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    recorded = [
        json.loads(line)["keys"]
        for line in (tmp_path / "run" / "batches-rank0.jsonl").read_text().splitlines()
    ]
    batches = _hand_batches(train_tuples, shards, cfg, epoch=0, n=3)
    assert recorded == [b["keys"] for b in batches]

    torch.manual_seed(cfg.seed)
    model = AML(cfg.model)
    loss_fn = AMLLoss(cfg.loss)
    opt_g = torch.optim.Adam(model.encoder_parameters(), lr=cfg.lr_start, weight_decay=cfg.weight_decay)
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=cfg.lr_dis, weight_decay=cfg.weight_decay)
    plan = [[0, cfg.lr_start, 3]]
    flips = torch.Generator().manual_seed(cfg.seed * 100003)
    model.train()  # (fit's loader draws nothing from torch's global RNG: only dropout does)
    for step, batch in enumerate(batches):
        for group in opt_g.param_groups:
            group["lr"] = lr_at(step, plan, cfg.lr_start, cfg.lr_end)
        q, g, y = to_model_inputs(batch, "a2v", torch.device("cpu"), train=True, flip_generator=flips)
        out = model(q, g, "a2v")
        d = loss_fn.discriminator_loss(out, model.discriminator)
        opt_d.zero_grad()
        d["L_dis"].backward()
        opt_d.step()
        model.discriminator.clip_weights(cfg.model.clip_value)
        e = loss_fn.encoder_loss(out, y, model.discriminator)
        opt_g.zero_grad()
        e["objective"].backward()
        opt_g.step()
        for term in ("L_total", "L_dis", "L_metric", "L_cls", "L_adv"):
            assert logged[step][term] == float(e[term].detach()), (step, term)
        assert logged[step]["L_dis_step"] == float(d["L_dis"].detach())
    mine = model.state_dict()
    assert set(mine) == set(saved)
    assert all(torch.equal(mine[k], saved[k]) for k in mine)


# --------------------------------------------------------------------------- a method in one folder


@dataclass
class TinyOptions:
    width: int = 16  # embedding size
    margin: float = 0.5

    def __post_init__(self):
        if self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")


class TinyMethod(Method):
    """The smallest method: the paper's branches, a linear layer each, a triplet loss on -L2."""

    name = "tiny"
    Options = TinyOptions
    log_terms = ("loss",)

    def __init__(self, cfg, labels=None):
        super().__init__(cfg, labels)
        self.embed_dim = self.options.width
        self.branches = nn.ModuleDict({m: branch_for(m) for m in ("audio", "face")})
        self.project = nn.ModuleDict({m: nn.Linear(3200, self.embed_dim) for m in ("audio", "face")})
        init_weights(self)

    def embed(self, modality, x):
        return self.project[modality](self.branches[modality](x).flatten(1))

    def train_step(self, batch, optimizers, ctx):
        out = ctx.forward(batch.query, batch.gallery, batch.direction)
        d = (out["h_query"].unsqueeze(1) - out["h_gallery"]).norm(dim=-1)  # (B, k)
        positive = d.gather(1, batch.label[:, None])
        loss = (positive - d + self.options.margin).clamp_min(0).mean()
        return self.minimise({"loss": loss}, optimizers)


@pytest.fixture
def tiny_registered(monkeypatch):
    monkeypatch.setitem(METHODS, "tiny", f"{__name__}:TinyMethod")  # the one registry line


def test_a_method_in_one_folder_trains_resumes_evaluates_and_serves(
    tiny_registered, train_tuples, tmp_path, one_torch_thread
):
    from avtrain.run.checkpoint import load_run

    assert get_method("tiny") is TinyMethod
    cfg = load_config(None, sets=[*FIT, "method=tiny", "tiny.width=8"])
    assert cfg.options == TinyOptions(width=8) and cfg.to_dict()["tiny"] == {"width": 8, "margin": 0.5}
    summary = fit(cfg, train_tuples, tmp_path / "run", progress=False)
    assert summary["steps"] == 3 and set(summary["final"]) == {"loss"}
    model, state, saved = load_run(tmp_path / "run")
    assert isinstance(model, TinyMethod) and saved.options.width == 8 and "opt_g" in state
    x = torch.zeros(3, 1, 224, 125)
    assert model.embed("audio", x).shape == (3, 8)
    # resume: epochs grow, the loop continues the same method from its checkpoint
    grown = load_config(None, sets=[*FIT, "method=tiny", "tiny.width=8", "epochs=2"])
    assert fit(grown, train_tuples, tmp_path / "run", resume=True, progress=False)["steps"] == 6


def test_method_settings_are_checked_and_belong_to_their_method(tiny_registered):
    with pytest.raises(ConfigError, match=r"method: expected one of .*got 'tny' \(did you mean tiny\?\)"):
        load_config(None, sets=["method=tny"])
    with pytest.raises(ConfigError, match="tiny.width: a setting of method tiny; this run's method is aml"):
        load_config(None, sets=["tiny.width=8"])
    with pytest.raises(ConfigError, match="width must be >= 1"):
        load_config(None, sets=["method=tiny", "tiny.width=0"])
    with pytest.raises(ConfigError, match="tiny.width: expected an integer"):
        load_config(None, sets=["method=tiny", "tiny.width=wide"])
    cfg = TrainConfig.from_dict({"method": "tiny", "tiny": {"margin": 1.0}})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert isinstance(build_method(cfg), TinyMethod)
