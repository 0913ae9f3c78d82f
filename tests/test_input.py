"""Training input read by index (issue #22): the training list by its exact name, items by key from
an item store, the item shards or the tuple shards (the same arrays from each), and every epoch a
seeded permutation of all tuples, the same batches for any number of loader workers and after a
resume; well-mixed batches, their identities logged."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import make_tuples_args

from avdata.cli import main as avdata_main
from avtrain.run.config import load_config
from avtrain.train.data import IndexedBatches, TrainingInput, TrainingList, epoch_order, load_sizes
from avtrain.train.loop import fit

K2 = "matching_train_a2v_k2"
TINY = ["batch_size=8", "threads=1", "max_steps_per_epoch=2", "lr_start=0.001", "record_batches=true"]


@pytest.fixture(scope="module")
def store(train_tuples, tmp_path_factory):
    """The decoded item store of the session's item shards (avdata cache)."""
    out = tmp_path_factory.mktemp("store") / "items"
    res = CliRunner().invoke(
        avdata_main, ["cache", "--shards", str(train_tuples.parent / "shards"), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    return out


def _batches(tuples_dir, items, workers: int, epochs=(0, 1), n=None) -> list[dict]:
    data = TrainingInput(tuples_dir, K2, "matching", 2, "a2v", 8, seed=3, workers=workers, items=items)
    out = []
    for epoch in epochs:
        for j, batch in enumerate(data.loader(epoch)):
            out.append(batch)
            if n is not None and j + 1 == n:
                break
    return out


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["keys"] == y["keys"]
        and torch.equal(x["query"], y["query"])
        and torch.equal(x["gallery"], y["gallery"])
        and torch.equal(x["label"], y["label"])
        and x["query_identities"] == y["query_identities"]
        and x["gallery_identities"] == y["gallery_identities"]
        for x, y in zip(a, b)
    )


@pytest.mark.parametrize("source", ["item shards", "store"])
def test_the_same_batches_for_0_1_and_2_workers(source, train_tuples, store):
    """Item shards: 0, 1 or 2 DataLoader worker processes; the store: its loader thread with 2, 2
    or 4 batches ahead."""
    items = train_tuples.parent / "shards" if source == "item shards" else store
    by_workers = [_batches(train_tuples, items, w) for w in (0, 1, 2)]
    rows = [json.loads(line) for line in (train_tuples / "index" / f"{K2}.jsonl").read_text().splitlines()]
    assert len(by_workers[0]) == 2 * (len(rows) // 8)  # every full batch of both epochs
    assert _same(by_workers[0], by_workers[1]) and _same(by_workers[0], by_workers[2])
    # epoch 0 is the first len//8 runs of 8 of the (seed, epoch) permutation, epoch 1 another one
    order = epoch_order(len(rows), 3, 0)
    assert by_workers[0][0]["keys"] == [rows[i]["tuple_id"] for i in order[:8]]
    assert by_workers[0][0]["keys"] != by_workers[0][len(rows) // 8]["keys"]
    seen = [k for b in by_workers[0][: len(rows) // 8] for k in b["keys"]]
    assert len(set(seen)) == len(seen)  # an epoch takes each tuple at most once


def test_store_item_shards_and_tuple_shards_give_the_same_batches(train_tuples, store):
    """A batch does not depend on where its items are read: decoded once into the store, decoded
    from the item shards by offset, or from the tuple shards by offset."""
    from_store = _batches(train_tuples, store, 0, epochs=(0,), n=3)
    assert _same(from_store, _batches(train_tuples, train_tuples.parent / "shards", 0, epochs=(0,), n=3))
    assert _same(from_store, _batches(train_tuples, None, 0, epochs=(0,), n=3))
    # and an item is its key's: the first batch's first query is that tuple's query spectrogram
    from avdata.reader import decode_npy, index_items, read_member

    shards = train_tuples.parent / "shards"
    rows = map(json.loads, (train_tuples / "index" / f"{K2}.jsonl").read_text().splitlines())
    first = next(r for r in rows if r["tuple_id"] == from_store[0]["keys"][0])
    it = index_items(shards).set_index("key").loc[first["query"]]
    want = decode_npy(read_member(shards / it["tar"], int(it["data_offset"]), int(it["data_size"])))
    assert np.array_equal(from_store[0]["query"][0].numpy(), want)


def test_batches_after_a_resume_are_the_batches_of_an_unbroken_run(train_tuples, store, tmp_path):
    """A run stopped after epoch 1 (its epoch-1 checkpoint, log and batch record) and resumed with
    another number of loader workers (read by index, a resumable change) trains the same epoch-2
    batches as the unbroken run and ends with the same weights."""
    from avtrain.run.checkpoint import LAST, epoch_name, load_checkpoint, save_checkpoint

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    sets = [*TINY, "epochs=2", "keep_last=2"]
    fit(load_config(None, sets=[*sets, "workers=0"]), train_tuples, whole, progress=False, items=store)
    parts.mkdir()
    save_checkpoint(parts / LAST, load_checkpoint(whole / epoch_name(1)))
    for name in ("log.jsonl", "batches-rank0.jsonl"):
        (parts / name).write_text("".join((whole / name).read_text().splitlines(True)[:2]))
    fit(
        load_config(None, sets=[*sets, "workers=2"]),
        train_tuples,
        parts,
        resume=True,
        progress=False,
        items=store,
    )
    assert (whole / "batches-rank0.jsonl").read_text() == (parts / "batches-rank0.jsonl").read_text()
    a = torch.load(whole / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(parts / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # log.jsonl records each batch's distinct query identities
    rows = {
        r["tuple_id"]: r
        for r in map(json.loads, (train_tuples / "index" / f"{K2}.jsonl").read_text().splitlines())
    }
    steps = [json.loads(line) for line in (whole / "log.jsonl").read_text().splitlines()]
    batches = [json.loads(line)["keys"] for line in (whole / "batches-rank0.jsonl").read_text().splitlines()]
    assert [s["batch_identities"] for s in steps] == [
        len({rows[k]["query_identity"] for k in keys}) for keys in batches
    ]


def _identity_order_list(identities: int, per_identity: int, k: int) -> TrainingList:
    """A list laid out as make-tuples writes it: all tuples of one identity, then the next."""
    n = identities * per_identity
    q_id = np.repeat(np.arange(identities, dtype=np.int32), per_identity)
    return TrainingList(
        name="x",
        path=None,
        direction="a2v",
        k=k,
        tuple_ids=np.arange(n).astype(str),
        query=np.zeros(n, np.int32),
        gallery=np.zeros((n, k), np.int32),
        label=np.zeros(n, np.int64),
        query_identity=q_id,
        gallery_identities=np.zeros((n, k), np.int32),
        keys=["k"],
        identities=[str(i) for i in range(identities)],
    )


@pytest.mark.parametrize("per_identity, k, floor", [(15, 2, 45), (50, 10, 45)])
def test_batches_of_50_mix_the_identities(per_identity, k, floor):
    """942 identities (VoxCeleb1's train split) with their tuples written identity by identity:
    a batch of 50 drawn from the epoch's permutation holds about 48.7 distinct query identities
    (942·(1 − (1 − 50/N)^per_identity) expected); the stream's 200-tuple shuffle buffer held 27."""
    from avtrain.train.data import LocatedList

    tl = _identity_order_list(942, per_identity, k)
    batches = IndexedBatches(LocatedList(tl, None, tl.query, tl.gallery), 50, seed=0)
    distinct = [len(set(tl.query_identity[batches.tuples_of(j)])) for j in range(len(batches))]
    assert np.mean(distinct) >= floor and min(distinct) >= 40, (np.mean(distinct), min(distinct))
    # ranks share out one permutation: disjoint batches, as many each
    ranks = [IndexedBatches(LocatedList(tl, None, tl.query, tl.gallery), 50, 0, r, 2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(tl) // 100
    taken = np.concatenate([r.tuples_of(j) for r in ranks for j in range(len(r))])
    assert len(np.unique(taken)) == len(taken)


@pytest.fixture
def two_lists(train_tuples, tmp_path):
    """The session's tuple directory with a second list beside the first whose name starts with
    it: matching_train_a2v_k2_gender (negatives of the query's gender), with its tuple shards."""
    dst = tmp_path / "tuples"
    shutil.copytree(train_tuples, dst)
    args = make_tuples_args(
        train_tuples.parent / "shards",
        dst,
        "--constrain",
        "gender",
        "--tuples-per-shard",
        "16",
        direction="a2v",
    )
    res = CliRunner().invoke(avdata_main, args)
    assert res.exit_code == 0, res.output
    assert any(f"{K2}_gender-" in name for name in json.loads((dst / "sizes.json").read_text()))
    return dst


@pytest.mark.parametrize("mode", ["index", "tuple shards"])
def test_a_list_whose_name_extends_the_trained_one_is_never_trained_on(two_lists, mode, tmp_path):
    """The old prefix rule picked matching_train_a2v_k2_gender-*.tar too when training on
    matching_train_a2v_k2; the list is now picked by its exact name."""
    sets = [*TINY, "epochs=1", "workers=0", "max_steps_per_epoch=50"] + (
        ["tuple_shards=true"] if mode != "index" else []
    )
    fit(load_config(None, sets=sets), two_lists, tmp_path / "run", progress=False)
    keys = [
        k
        for line in (tmp_path / "run" / "batches-rank0.jsonl").read_text().splitlines()
        for k in json.loads(line)["keys"]
    ]
    plain = {
        json.loads(line)["tuple_id"]
        for line in (two_lists / "index" / f"{K2}.jsonl").read_text().splitlines()
    }
    assert keys and set(keys) <= plain and not any("_gender" in k for k in keys)
    assert all(f"{K2}_gender" not in p for p in load_sizes(two_lists, K2)[0])


def test_a_directory_without_tuple_shards_trains_with_items_and_says_what_to_pass_without(
    train_tuples, store, tmp_path
):
    """Tuple shards are optional: a directory of index lists (make-tuples --no-tuple-shards, a
    few kB) trains with --items; without --items it is one line saying what to pass."""
    from avtrain.cli import main as avtrain_main

    lean = tmp_path / "lean"
    res = CliRunner().invoke(
        avdata_main,
        make_tuples_args(train_tuples.parent / "shards", lean, "--no-tuple-shards", direction="a2v"),
    )
    assert res.exit_code == 0, res.output
    assert not (lean / "shards").exists()
    base = ["fit", "--shards", str(lean), "--out", str(tmp_path / "run"), "--epochs", "1", "--no-progress"]
    tiny = [
        a for s in ["batch_size=8", "workers=0", "threads=1", "max_steps_per_epoch=1"] for a in ("--set", s)
    ]
    res = CliRunner().invoke(avtrain_main, [*base, *tiny])
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert "pass --items SHARDS" in res.output and not (tmp_path / "run").exists()
    res = CliRunner().invoke(avtrain_main, [*base, *tiny, "--items", str(store)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_validation_decodes_its_items_once(train_tuples, tmp_path):
    """fit's ValidationSet keeps the decoded val items: the second validation reads nothing from
    the shards (here they are gone) and scores the same model the same."""
    from avtrain.evaluation.evaluate import ValidationSet
    from avtrain.methods import build_method

    shards = tmp_path / "shards"
    shutil.copytree(train_tuples.parent / "shards", shards)
    val = tmp_path / "val"
    for task, k in (("matching", "2"), ("verification", None)):
        res = CliRunner().invoke(
            avdata_main,
            make_tuples_args(shards, val, task=task, split="val", k=k, direction="a2v" if k else None),
        )
        assert res.exit_code == 0, res.output
    vs = ValidationSet(val, shards, "matching", 2, "a2v", "val_matching_a2v_k2")
    cfg = load_config(None)
    torch.manual_seed(0)
    model = build_method(cfg)
    first = vs.score(model, torch.device("cpu"))
    for tar in shards.rglob("*.tar"):
        tar.unlink()
    assert vs.score(model, torch.device("cpu")) == first
