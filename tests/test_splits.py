"""Identity splits on the real VoxCeleb1 protocol files in ../shared/data."""

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from avdata.cli import main
from avdata.corpora import ProtocolOptions
from avdata.corpora.voxceleb1 import VOXCELEB1, matching_split, read_meta
from avdata.errors import InputError
from avdata.splits import (
    assign_media_splits,
    check_disjoint,
    seen_heard_sources,
    split_counts,
)

PROTO = Path(__file__).resolve().parents[2] / "shared" / "data" / "protocols" / "voxceleb1"
META = PROTO / "vox1_meta.csv"
PINS = PROTO / "learnable_pins" / "identity_splits.txt"


def identity_splits(meta, protocol, pins_splits=None):
    return VOXCELEB1.identity_splits(meta, protocol, ProtocolOptions(pins_splits=pins_splits))


def test_read_meta_real_file():
    meta = read_meta(META)
    assert len(meta) == 1251
    assert list(meta.columns) == ["vox_id", "name", "gender", "nationality", "set"]
    row = meta[meta.vox_id == "id10001"].iloc[0]
    assert row["name"] == "A.J._Buckley" and row["gender"] == "m" and row["nationality"] == "Ireland"


@pytest.mark.parametrize(
    "name,split",
    [
        ("A.J._Buckley", "val"),
        ("bea", "val"),
        ("Cher", "test"),
        ("Eoin_Macken", "test"),
        ("Fred", "train"),
        ("Zac", "train"),
    ],
)
def test_matching_rule(name, split):
    assert matching_split(name) == split


def test_matching_counts_on_real_meta():
    df = identity_splits(read_meta(META), "matching")
    assert split_counts(df) == {"test": 193, "train": 942, "val": 116}
    assert df.attrs["unplaced"] == []
    check_disjoint(df)


def test_pins_counts_on_real_files():
    df = identity_splits(read_meta(META), "pins", PINS)
    assert split_counts(df) == {"train": 901, "unseen_unheard": 250, "val": 100}
    # every identity appears once: the splits are identity-disjoint by construction
    assert df["name"].is_unique and df["vox_id"].is_unique


def test_check_disjoint_catches_overlap():
    bad = pd.DataFrame({"name": ["a", "a"], "vox_id": ["id1", "id1"], "split": ["train", "test"]})
    with pytest.raises(ValueError, match="more than one split"):
        check_disjoint(bad)


def test_seen_heard_rule_is_seeded_and_video_level():
    videos = [f"yt{i:02d}" for i in range(20)]
    held = seen_heard_sources("Some_Name", videos, seed=0, fraction=0.1)
    assert len(held) == 2 and held <= set(videos)
    assert held == seen_heard_sources("Some_Name", list(reversed(videos)), seed=0, fraction=0.1)
    assert any(seen_heard_sources("Some_Name", videos, seed=s) != held for s in range(1, 6))
    assert seen_heard_sources("One_Video", ["a", "a"], seed=0) == set()


def test_assign_media_splits_never_splits_a_video():
    meta = read_meta(META)
    splits = identity_splits(meta, "pins", PINS)
    train_names = splits[splits.split == "train"]["name"].tolist()[:5]
    rows = []
    for name in train_names:
        for v in range(6):
            for clip in range(3):
                for modality in ("audio", "face"):
                    rows.append(
                        {
                            "modality": modality,
                            "name": name,
                            "source_id": f"{name[:3]}v{v}",
                            "vox_id": "x",
                            "rel_path": f"{v}/{clip}",
                            "path": "",
                        }
                    )
    out = assign_media_splits(pd.DataFrame(rows), splits, "pins", seed=3)
    per_video = out.groupby(["name", "source_id"])["split"].nunique()
    assert (per_video == 1).all()
    assert set(out["split"]) == {"train", "seen_heard"}
    # every identity keeps train media and gives some to seen_heard
    assert (out.groupby("name")["split"].nunique() == 2).all()


def test_cli_splits_writes_csv(tmp_path):
    out = tmp_path / "splits.csv"
    res = CliRunner().invoke(
        main,
        ["splits", "--meta", str(META), "--protocol", "pins", "--pins-splits", str(PINS), "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert list(df.columns) == ["name", "vox_id", "split"] and len(df) == 1251


def test_cli_bad_meta_is_one_line(tmp_path):
    bad = tmp_path / "meta.csv"
    bad.write_text("just,some,csv\n1,2,3\n")
    res = CliRunner().invoke(
        main, ["splits", "--meta", str(bad), "--protocol", "matching", "--out", str(tmp_path / "o.csv")]
    )
    assert res.exit_code != 0
    assert str(bad) in res.output and "lacks columns" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_pins_without_file_is_error():
    with pytest.raises(ValueError, match="pins-splits"):
        identity_splits(read_meta(META), "pins")
    with pytest.raises(InputError, match="not found"):
        identity_splits(read_meta(META), "pins", "/nonexistent/identity_splits.txt")
