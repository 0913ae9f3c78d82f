"""make-tuples / check-tuples / import-veriflist on the synthetic corpus and real list files."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import make_tuples_args

from avdata.cli import main
from avdata.extract import Sample
from avdata.io import add_tar_member
from avdata.reader import iter_samples
from avdata.shards import _encode
from avdata.synth import synth_corpus
from avdata.tuples import check_tuples, label_balance_problems

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PINS = DATA / "protocols" / "voxceleb1" / "learnable_pins"


def cli(*args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Synthetic corpus (12 identities) -> matching shards and pins shards."""
    root = tmp_path_factory.mktemp("tuples")
    corpus = root / "corpus"
    synth_corpus(corpus, identities=12, clips_per_identity=3, faces_per_identity=3, seed=2)
    for protocol in ("matching", "pins"):
        extra = ["--pins-splits", corpus / "identity_splits.txt"] if protocol == "pins" else []
        cli(
            "build-shards",
            "--audio",
            corpus / "wav",
            "--faces",
            corpus / "faces",
            "--meta",
            corpus / "vox1_meta.csv",
            "--protocol",
            protocol,
            "--out",
            root / protocol,
            "--no-progress",
            *extra,
        )
    return root


def read_index(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines()]


def test_matching_tuples_follow_the_protocol(shards, tmp_path):
    out = tmp_path / "t"
    res = cli(*make_tuples_args(shards / "matching", out, "--sets-per-identity", "6", k="2,5"))
    assert "all tuple checks passed" in res.output
    train_ids = {
        l.split(",")[1]
        for l in (shards / "matching" / "splits.csv").read_text().splitlines()[1:]
        if l.split(",")[2] == "train"
    }
    binary = read_index(out / "index" / "matching_train_a2v_k2.jsonl")
    per_id = {}
    for t in binary:
        per_id.setdefault(t["query_identity"], []).append(t)
    assert all(len(v) == 15 for v in per_id.values()) and set(per_id) <= train_ids
    for tuples in per_id.values():  # one positive pair, 15 negatives per positive
        assert len({(t["query"], t["gallery"][t["label"]]) for t in tuples}) == 1
    five = read_index(out / "index" / "matching_train_v2a_k5.jsonl")
    assert len(five) == 6 * len(per_id)
    for t in five:
        assert len(t["gallery"]) == 5 and len(set(t["gallery_identities"])) == 5
        assert t["gallery_identities"][t["label"]] == t["query_identity"]
        assert t["query"].endswith("-jpg") and all("-wav_w" in g for g in t["gallery"])
    # tuple shards carry every member's arrays, read back with the safe decoders
    sizes = json.loads((out / "sizes.json").read_text())
    urls = sorted(str(out / k) for k in sizes if "k5" in k and "v2a" in k)
    samples = list(iter_samples(urls))
    assert len(samples) == len(five)
    s = samples[0]
    assert s["q.jpg"].shape == (224, 224, 3) and all(s[f"g{i}.npy"].shape == (224, 125) for i in range(5))
    assert s["cls"] == s["json"]["label"]


def test_deterministic_and_seeded(shards, tmp_path):
    def make(out, *extra):
        cli(
            *make_tuples_args(
                shards / "matching", out, "--sets-per-identity", "4", "--no-tuple-shards", *extra, k="3"
            )
        )

    make(tmp_path / "a")
    make(tmp_path / "b")
    make(tmp_path / "c", "--seed", "7")
    a = (tmp_path / "a" / "index" / "matching_train_a2v_k3.jsonl").read_bytes()
    assert a == (tmp_path / "b" / "index" / "matching_train_a2v_k3.jsonl").read_bytes()
    assert a != (tmp_path / "c" / "index" / "matching_train_a2v_k3.jsonl").read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()


def test_constraints_hold(shards, tmp_path):
    out = tmp_path / "t"
    cli(*make_tuples_args(shards / "matching", out, "--constrain", "gender", "--no-tuple-shards"))
    splits = {
        l.split(",")[1]: l.split(",")[3]
        for l in (shards / "matching" / "splits.csv").read_text().splitlines()[1:]
    }
    tuples = read_index(out / "index" / "matching_train_a2v_k2_gender.jsonl")
    assert tuples
    for t in tuples:
        assert all(splits[g] == splits[t["query_identity"]] for g in t["gallery_identities"])


def test_verification_pins_both_test_sets_balanced(shards, tmp_path):
    out = tmp_path / "t"
    res = cli(
        *make_tuples_args(shards / "pins", out, task="verification", split=("seen_heard", "unseen_unheard"))
    )
    for split in ("seen_heard", "unseen_unheard"):
        pairs = read_index(out / "index" / f"verification_{split}.jsonl")
        assert pairs and sum(p["label"] for p in pairs) * 2 == len(pairs)
        for p in pairs:
            assert (p["query_identity"] == p["gallery_identities"][0]) == (p["label"] == 1)
    assert "all tuple checks passed" in res.output


def test_retrieval_lists_cover_the_split(shards, tmp_path):
    out = tmp_path / "t"
    cli(*make_tuples_args(shards / "matching", out, task="retrieval", split="test"))
    for d, (qm, gm) in {"a2v": ("wav", "jpg"), "v2a": ("jpg", "wav")}.items():
        queries = read_index(out / "index" / f"retrieval_test_{d}_queries.jsonl")
        gallery = read_index(out / "index" / f"retrieval_test_{d}_gallery.jsonl")
        assert (
            queries
            and gallery
            and all(qm in q["query"] for q in queries)
            and all(gm in g["key"] for g in gallery)
        )
        by_id = {}
        for g in gallery:
            by_id[g["identity"]] = by_id.get(g["identity"], 0) + 1
        assert all(q["relevant"] == by_id.get(q["query_identity"], 0) for q in queries)


# ---- every rule of check-tuples, each broken on purpose


def _break(out: Path, name: str, edit):
    path = out / "index" / name
    rows = read_index(path)
    edit(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def good(shards, tmp_path):
    out = tmp_path / "t"
    matching = shards / "matching"
    cli(
        *make_tuples_args(
            matching, out, "--sets-per-identity", "5", "--no-tuple-shards", k="3", direction="a2v"
        )
    )
    cli(*make_tuples_args(matching, out, "--constrain", "gender", "--no-tuple-shards", direction="a2v"))
    assert check_tuples(out, matching) == []
    return out


def _other_split_face(shards):
    from avdata.reader import index_items

    items = index_items(shards / "matching")
    row = items[(items.split == "test") & (items.modality == "face")].iloc[0]
    return row.key, row.vox_id


@pytest.mark.parametrize(
    "rule",
    [
        "missing_key",
        "repeat_identity",
        "positive_identity",
        "negative_identity",
        "cross_split",
        "constraint",
        "balance",
        "edited",
    ],
)
def test_check_tuples_catches(rule, good, shards):
    name = "matching_train_a2v_k3.jsonl"
    if rule == "missing_key":
        _break(good, name, lambda r: r[0].update(query="id00000__nope-wav_w0"))
        want = "not in the shards"
    elif rule == "repeat_identity":

        def edit(rows):
            t = rows[0]
            j = (t["label"] + 1) % 3
            other = [i for i in range(3) if i not in (t["label"], j)][0]
            t["gallery"][j], t["gallery_identities"][j] = t["gallery"][other], t["gallery_identities"][other]

        _break(good, name, edit)
        want = "repeats inside the tuple"
    elif rule == "positive_identity":
        _break(good, name, lambda r: r[0].update(label=(r[0]["label"] + 1) % 3))
        want = "positive does not share"
    elif rule == "negative_identity":

        def edit(rows):
            t = rows[0]
            # replace the whole gallery by the query's own faces-identity at a negative slot
            j = (t["label"] + 1) % 3
            t["gallery_identities"][j] = t["query_identity"]

        _break(good, name, edit)
        want = "a negative shares the query's identity"
    elif rule == "cross_split":
        key, vox = _other_split_face(shards)

        def edit(rows):
            t = rows[0]
            j = (t["label"] + 1) % 3
            t["gallery"][j], t["gallery_identities"][j] = key, vox

        _break(good, name, edit)
        want = "crosses splits"
    elif rule == "constraint":
        name = "matching_train_a2v_k2_gender.jsonl"
        splits = {
            l.split(",")[1]: l.split(",")[3]
            for l in (shards / "matching" / "splits.csv").read_text().splitlines()[1:]
        }
        from avdata.reader import index_items

        items = index_items(shards / "matching")
        faces = items[(items.split == "train") & (items.modality == "face")]

        def edit(rows):
            t = rows[0]
            g = splits[t["query_identity"]]
            row = faces[faces.vox_id.map(splits) != g].iloc[0]
            j = 1 - t["label"]
            t["gallery"][j], t["gallery_identities"][j] = row.key, row.vox_id

        _break(good, name, edit)
        want = "breaks the gender constraint"
    elif rule == "balance":

        def edit(rows):
            for t in rows:  # move every positive to position 0
                p = t["label"]
                t["gallery"].insert(0, t["gallery"].pop(p))
                t["gallery_identities"].insert(0, t["gallery_identities"].pop(p))
                t["label"] = 0

        _break(good, name, edit)
        want = "label position"
    else:
        _break(good, name, lambda r: None)  # rewritten with other JSON spacing: bytes differ
        want = "sha256 differs"
    res = cli("check-tuples", good, "--shards", shards / "matching", ok=False)
    assert res.exit_code == 1
    assert want in res.output, res.output


def test_label_balance_rule_by_hand():
    assert label_balance_problems([0, 1] * 50, "matching", 2) == []
    assert label_balance_problems([0] * 80 + [1] * 20, "matching", 2)  # 0.8 vs 0.5 +- 0.2
    assert label_balance_problems([1, 0, 1, 0], "verification", 1) == []
    assert label_balance_problems([1, 1, 0], "verification", 1)


# ---- official list import


def test_import_synthetic_list_in_official_format(shards, tmp_path):
    from avdata.reader import index_items

    items = index_items(shards / "pins")
    sh = items[items.split == "seen_heard"]
    voices = sh[sh.modality == "audio"]
    faces = sh[sh.modality == "face"]
    lines = ["id,voice-speaker-id,face-speaker-id,label,voice-path,face-path"]
    n = 0
    for v in voices.itertuples():
        ytid, clip = v.source.split("/")[1], int(Path(v.source).stem)
        for f in faces.itertuples():
            n += 1
            lines.append(f"{n},1,2,{int(v.vox_id == f.vox_id)},{v.name}/{ytid}_{clip:07d}.wav,{f.source}")
    lines.append(f"{n + 1},1,2,1,{voices.iloc[0]['name']}/NOSUCHVIDEO_0000001.wav,{faces.iloc[0]['source']}")
    lst = tmp_path / "veriflist_test_random_seenheard.txt"
    lst.write_text("\n".join(lines) + "\n")
    out = tmp_path / "t"
    res = cli("import-veriflist", lst, "--shards", shards / "pins", "--out", out)
    assert f"mapped {n} of {n + 1} pairs" in res.output and "voice clip not in shards" in res.output
    pairs = read_index(out / "index" / "verification_imported_veriflist_test_random_seenheard.jsonl")
    assert len(pairs) == n and {p["split"] for p in pairs} == {"seen_heard"}
    assert check_tuples(out, shards / "pins") == []


def test_import_real_list_against_synthetic_shards(shards, tmp_path):
    res = cli(
        "import-veriflist",
        PINS / "veriflist_test_random_seenheard.txt",
        "--shards",
        shards / "pins",
        "--out",
        tmp_path / "t",
    )
    assert "mapped 0 of 18020 pairs" in res.output
    assert "unmapped 18020: voice identity not in shards" in res.output


# ---- Table II arithmetic through the CLI


def _fake_shards(root: Path, groups: dict[str, int]):
    """Tiny real webdataset shards (1x1 arrays) with the identity counts of the paper's
    split, to check tuple arithmetic at full scale without 1,000 identities of media."""
    letters = {"train": "F", "test": "C", "val": "A"}
    rows = ["name,vox_id,split,gender,nationality"]
    sizes = {}
    vid = 10001
    for split, n in groups.items():
        for modality, ext_arr in (
            ("audio", np.zeros((1, 1), np.float32)),
            ("face", np.zeros((1, 1, 3), np.uint8)),
        ):
            path = root / split / f"{modality}-000000.tar"
            path.parent.mkdir(parents=True, exist_ok=True)
            import tarfile

            with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
                for i in range(n):
                    vox = f"id{vid + i}"
                    meta = {
                        "name": f"{letters[split]}{i:04d}",
                        "vox_id": vox,
                        "source": f"{vox}/yt/00001.x",
                        "source_id": "yt",
                        "source_modality": modality,
                    }
                    key = f"{vox}__yt__00001-" + ("wav_w0" if modality == "audio" else "jpg")
                    for ext, data in _encode(Sample(key, modality, ext_arr, meta), i, 90):
                        add_tar_member(tar, f"{key}.{ext}", data)
            sizes[f"{split}/{modality}-000000.tar"] = n
        rows += [f"{letters[split]}{i:04d},id{vid + i},{split},m,USA" for i in range(n)]
        vid += n
    (root / "sizes.json").write_text(json.dumps(sizes))
    (root / "splits.csv").write_text("\n".join(rows) + "\n")
    (root / "manifest.json").write_text("{}")


def test_table_ii_counts_through_the_cli(tmp_path):
    _fake_shards(tmp_path / "s", {"train": 942, "test": 153})
    res = cli(*make_tuples_args(tmp_path / "s", tmp_path / "t", "--no-tuple-shards", direction="a2v"))
    assert "matching_train_a2v_k2: tuples=14130, identities=942" in res.output
    res = cli(*make_tuples_args(tmp_path / "s", tmp_path / "t", split="test", k="10", direction="a2v"))
    assert "matching_test_a2v_k10: tuples=7650, identities=153" in res.output


def test_positives_per_identity_multiplies_binary_tuples(shards, tmp_path):
    out = tmp_path / "t"
    res = cli(
        *make_tuples_args(
            shards / "matching",
            out,
            "--positives-per-identity",
            "3",
            "--negatives-per-positive",
            "4",
            "--no-tuple-shards",
            direction="a2v",
        )
    )
    tuples = read_index(out / "index" / "matching_train_a2v_k2.jsonl")
    ids = {t["query_identity"] for t in tuples}
    assert len(tuples) == len(ids) * 3 * 4 and "all tuple checks passed" in res.output


# ---- verification training pairs of the Learnable-PINs protocol (AML's Table IV: 423,004)


def test_pairs_spread_the_pins_training_count_over_901_identities():
    """--pairs 423004 over 901 identities: 211,502 positive pairs = 901 x 234 + 668, so 668
    identities (a seeded draw) get 235 positive pairs and 233 get 234, each with as many negatives."""
    from avdata.tuples import TupleConfig, _positive_pairs

    ids = [f"id{10001 + i}" for i in range(901)]
    per = _positive_pairs(TupleConfig(task="verification", split="train", pairs=423004), ids)
    assert 2 * sum(per.values()) == 423004 and 901 * 234 + 668 == 211502
    assert sorted(set(per.values())) == [234, 235] and sum(v == 235 for v in per.values()) == 668
    again = _positive_pairs(TupleConfig(task="verification", split="train", pairs=423004), ids)
    other = _positive_pairs(TupleConfig(task="verification", split="train", pairs=423004, seed=1), ids)
    assert again == per and other != per
    default = _positive_pairs(TupleConfig(task="verification", split="train"), ids)
    assert set(default.values()) == {10}  # --pairs-per-identity (default 10) without --pairs


def test_pairs_through_the_cli(tmp_path):
    """--pairs N on 10 identities: N pairs, exactly balanced, 2 or 1 positive pairs per
    identity (13 = 10 + 3), through every tuple check; recorded in the manifest only when given;
    an odd N or another task is one line."""
    _fake_shards(tmp_path / "s", {"train": 10})
    res = cli(*make_tuples_args(tmp_path / "s", tmp_path / "t", "--pairs", "26", task="verification"))
    assert (
        "verification_train: tuples=26, identities=10" in res.output
        and "all tuple checks passed" in res.output
    )
    pairs = read_index(tmp_path / "t" / "index" / "verification_train.jsonl")
    assert sum(p["label"] for p in pairs) == 13
    positives = {}
    for p in pairs:
        positives[p["query_identity"]] = positives.get(p["query_identity"], 0) + p["label"]
    assert sorted(positives.values()) == [1] * 7 + [2] * 3
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["files"]["index/verification_train.jsonl"]["config"]["pairs"] == 26
    cli(*make_tuples_args(tmp_path / "s", tmp_path / "u", "--no-tuple-shards", task="verification"))
    manifest = json.loads((tmp_path / "u" / "manifest.json").read_text())
    assert "pairs" not in manifest["files"]["index/verification_train.jsonl"]["config"]
    for extra, task, message in (
        (("--pairs", "25"), "verification", "--pairs: an even number >= 2"),
        (("--pairs", "26"), "matching", "--pairs: a verification option"),
    ):
        res = cli(*make_tuples_args(tmp_path / "s", tmp_path / "v", *extra, task=task), ok=False)
        assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output
