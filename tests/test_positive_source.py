"""make-tuples --positive-source / --negative-source other-video: positives (and, if asked, negatives)
never from the query's source video; recorded in the manifest and checked by check-tuples."""

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import make_tuples_args

from avdata.cli import main
from avdata.reader import index_items
from avdata.tuples import (
    SINGLE_VIDEO,
    Pool,
    TupleConfig,
    TupleError,
    _empty_reason,
    draw_matching,
    draw_verification,
)


def cli(*args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def shards(train_tuples):
    """The session's 12 synthetic identities (conftest.train_tuples), each with 2-3 source videos
    (wav clips and photos spread over them), matching shards."""
    return train_tuples.parent / "shards"


def read_index(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_other_video_lists_keep_positives_off_the_query_video(shards, tmp_path):
    out = tmp_path / "t"
    res = cli(
        *make_tuples_args(shards, out, "--positive-source", "other-video", "--no-tuple-shards", k="2,3"),
    )
    cli(
        *make_tuples_args(
            shards,
            out,
            "--positive-source",
            "other-video",
            "--negative-source",
            "other-video",
            task="verification",
        )
    )
    assert "single_video_identities=0" in res.output
    source = dict(zip(*(index_items(shards)[c] for c in ("key", "source_id"))))
    manifest = json.loads((out / "manifest.json").read_text())
    names = sorted(Path(r).stem for r in manifest["files"])
    assert names == [
        "matching_train_a2v_k2_pos-other-video",
        "matching_train_a2v_k3_pos-other-video",
        "matching_train_v2a_k2_pos-other-video",
        "matching_train_v2a_k3_pos-other-video",
        "verification_train_pos-other-video+neg-other-video",
    ]
    for rel, entry in manifest["files"].items():
        assert entry["config"]["positive_source"] == "other-video"
        assert entry["config"].get("negative_source", "any") == (
            "other-video" if "verification" in rel else "any"
        ), rel
        rows = read_index(out / rel)
        assert len({t["query_identity"] for t in rows}) == 8  # every train identity has two videos
        for t in rows:
            q = source[t["query"]]
            if t["task"] == "matching":
                assert source[t["gallery"][t["label"]]] != q
            elif t["label"] == 1:
                assert source[t["gallery"][0]] != q
            else:
                assert source[t["gallery"][0]] != q  # negative-source other-video
    assert "all tuple checks passed" in cli("check-tuples", out, "--shards", shards).output


def test_any_is_the_default_and_draws_as_before(shards, tmp_path):
    """--positive-source any is the default: the same bytes as without the option, and no source key
    in the manifest (the lists drawn before the option existed stay as their manifests say)."""
    a, b = tmp_path / "a", tmp_path / "b"
    cli(*make_tuples_args(shards, a, "--no-tuple-shards", task="verification"))
    cli(*make_tuples_args(shards, b, "--no-tuple-shards", "--positive-source", "any", task="verification"))
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    config = json.loads((a / "manifest.json").read_text())["files"]["index/verification_train.jsonl"][
        "config"
    ]
    assert "positive_source" not in config and "negative_source" not in config


def test_check_tuples_names_a_positive_from_the_query_video(shards, tmp_path):
    out = tmp_path / "t"
    cli(*make_tuples_args(shards, out, "--positive-source", "other-video", "--no-tuple-shards"))
    items = index_items(shards)
    rel = "index/matching_train_a2v_k2_pos-other-video.jsonl"
    rows = read_index(out / rel)
    t = rows[0]
    query = items.set_index("key").loc[t["query"]]
    same = items[
        (items.modality == "face") & (items.source_id == query.source_id) & (items.vox_id == query.vox_id)
    ]
    assert len(same), "the synthetic identity has a face in the query's video"
    t["gallery"][t["label"]] = same.iloc[0].key
    (out / rel).write_text("".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in rows))
    res = cli("check-tuples", out, "--shards", shards, ok=False)
    assert res.exit_code == 1
    assert (
        f"comes from the query's source video {query.source_id} (positive_source other-video)" in res.output
    )


def _pool(rows) -> Pool:
    """A split's items by hand: (vox_id, modality, source_id, key)."""
    items = pd.DataFrame(rows, columns=["vox_id", "modality", "source_id", "key"]).assign(split="test")
    return Pool(items, {v: {"gender": "", "nationality": ""} for v in items["vox_id"]})


def test_single_video_identities_are_skipped_and_counted():
    pool = _pool(
        [
            ("id1", "audio", "yA", "a1"),
            ("id1", "face", "yA", "f1"),
            ("id1", "face", "yB", "f2"),
            ("id2", "audio", "yC", "a2"),
            ("id2", "face", "yC", "f3"),  # one video: no positive from another
            ("id3", "audio", "yD", "a3"),
            ("id3", "face", "yE", "f4"),
        ]
    )
    cfg = TupleConfig("matching", "test", "a2v", k=2, negatives_per_positive=2, positive_source="other-video")
    tuples, skipped = draw_matching(pool, cfg)
    assert skipped == [{"identity": "id2", "reason": SINGLE_VIDEO}]
    assert {t["query_identity"] for t in tuples} == {"id1", "id3"}
    assert all(t["gallery"][t["label"]] in ("f2", "f4") for t in tuples)  # id1's yB face, id3's yE face
    pairs, skipped = draw_verification(
        pool, TupleConfig("verification", "test", pairs_per_identity=3, positive_source="other-video")
    )
    assert [s["identity"] for s in skipped] == ["id2"]
    assert all(p["gallery"][0] in ("f2", "f4") for p in pairs if p["label"] == 1)


def test_a_split_without_a_two_video_identity_is_one_line():
    pool = _pool(
        [
            ("id1", "audio", "y1", "a1"),
            ("id1", "face", "y1", "f1"),
            ("id2", "audio", "y2", "a2"),
            ("id2", "face", "y2", "f2"),
        ]
    )
    cfg = TupleConfig("matching", "test", "a2v", k=2, positive_source="other-video")
    tuples, skipped = draw_matching(pool, cfg)
    assert tuples == []
    assert _empty_reason(pool, cfg, skipped) == (
        "no identity of split test has audio and face items from two source videos: --positive-source "
        "other-video has no positive to draw (2 single-video identities)"
    )


def test_negatives_off_the_query_video():
    """A video can show two people (an interview): with --negative-source other-video the negative
    face of the other person never comes from the query's video."""
    pool = _pool(
        [
            ("id1", "audio", "interview", "a1"),
            ("id1", "face", "home", "f1"),
            ("id2", "face", "interview", "f2"),  # id2 in id1's voice's video
            ("id2", "face", "studio", "f3"),
            ("id2", "audio", "studio", "a2"),
            ("id1", "face", "interview", "f4"),
        ]
    )
    cfg = TupleConfig(
        "matching",
        "test",
        "a2v",
        k=2,
        negatives_per_positive=20,
        positive_source="other-video",
        negative_source="other-video",
    )
    tuples, _ = draw_matching(pool, cfg)
    id1 = [t for t in tuples if t["query_identity"] == "id1"]
    assert len(id1) == 20
    assert all(t["gallery"][t["label"]] == "f1" and t["gallery"][1 - t["label"]] == "f3" for t in id1)
    plain, _ = draw_matching(pool, TupleConfig("matching", "test", "a2v", k=2, negatives_per_positive=20))
    assert any("f2" in t["gallery"] for t in plain if t["query_identity"] == "id1")  # as drawn before


def test_retrieval_refuses_a_source_constraint():
    with pytest.raises(TupleError, match="matching and verification lists only"):
        TupleConfig("retrieval", "test", positive_source="other-video")
