"""Scale benchmark at VoxCeleb1 size: how each pipeline stage grows from 10% to 100% of the
1,251 identities, and an extrapolation to the paper's corpus.

The tree is VoxCeleb1-shaped: the real ``../shared/data/protocols/voxceleb1/vox1_meta.csv``
(1,251 identities, the real names, so the real matching split), ``wav/idNNNNN/YTID/NNNNN.wav``
and ``faces/NAME/YTID/NNNNNNN.png``, every file a symlink into ``../shared/data/media`` (10 real
VoxCeleb1 utterances, 5 real 160 px aligned face photos), so the disk stays small; with
``--face-photos web`` the faces link instead to 22 VGGFace-sized (250-800 px) JPEGs made from
the real photos in the temp dir (bench/faces.py's web portraits). A fraction f takes the first
f of one fixed permutation of the identities (10% is a subset of 50%, of 100%). Every stage
starts after an ``os.sync()``, so the shards the previous one wrote are not being written
back while it runs.

Each stage runs in a fresh subprocess (imports outside the timed region), which reports its
wall time and its peak RSS (``ru_maxrss``; build workers: the largest child):

  scan, splits, plan   avdata.ingest.scan_all, the corpus's identity_splits + assign_media_splits, plan_shards
                       (one process; RSS is the peak so far after each)
  extract+write        build_shards -j J minus the scan/splits/plan it repeats
  shard-index          avdata.reader.index_items of the shards (the first step of every make-tuples)
  tuples-*             make-tuples: train k=2 a2v (+ tuple shards), test k=2-10, verification, retrieval
                       (also the MB each writes)
  evaluate             avtrain evaluate of a randomly initialised AML run on the test k=2-10 lists
                       (embedding + scoring + bootstrap)
  loader               one epoch of the training loader (TupleStream + DataLoader, 2 workers)

    .venv/bin/python bench/scale.py [--clips 2] [--faces 1] [--sets-per-identity 10] [--fractions 0.1,0.5,1] [-j 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
META = SHARED / "protocols" / "voxceleb1" / "vox1_meta.csv"
WAVS = sorted((SHARED / "media" / "voice" / "voxceleb1_named").glob("*.wav"))
FACES = sorted((SHARED / "media" / "faces" / "facenet_pytorch" / "test_images_aligned").glob("*/*.png"))

PRELUDE = r"""
import json, resource, sys, time
def rss_mb(who=resource.RUSAGE_SELF):
    return resource.getrusage(who).ru_maxrss / 1024
args = json.loads(sys.argv[1])
out = {}
"""

STAGES = {
    "prep": r"""
from avdata.ingest import scan_all
from avdata.shards import plan_shards
from avdata.corpora import ProtocolOptions, get_corpus
vox1 = get_corpus("voxceleb1")
t = time.perf_counter(); meta = vox1.read_meta(args["meta"])
scan = scan_all(meta, audio=args["audio"], faces=args["faces"])
out["scan"] = {"s": time.perf_counter() - t, "rss_mb": rss_mb(), "items": len(scan.media)}
t = time.perf_counter()
splits = vox1.identity_splits(meta, "matching", ProtocolOptions())
media = vox1.assign_media_splits(scan.media, splits, "matching", ProtocolOptions())
out["splits"] = {"s": time.perf_counter() - t, "rss_mb": rss_mb(), "items": len(media)}
t = time.perf_counter(); specs = plan_shards(media, args["shard_size"])
out["plan"] = {"s": time.perf_counter() - t, "rss_mb": rss_mb(), "items": len(media), "shards": len(specs)}
""",
    "build": r"""
from avdata.shards import BuildConfig, build_shards
t = time.perf_counter()
m = build_shards(args["out"], args["meta"], audio=args.get("audio"), faces=args.get("faces"),
                 config=BuildConfig(shard_size=args["shard_size"]), jobs=args["jobs"],
                 distributor=args.get("distributor", "multiprocessing"))
out["build"] = {"s": time.perf_counter() - t, "rss_mb": rss_mb(), "rss_worker_mb": rss_mb(resource.RUSAGE_CHILDREN),
                "items": sum(m["inputs"]["files"].values()), "rejects": m["rejects"],
                "samples": sum(v["samples"] for v in m["shards"].values())}
""",
    "index": r"""
from avdata.reader import index_items
t = time.perf_counter(); items = index_items(args["shards"])
out["shard-index"] = {"s": time.perf_counter() - t, "rss_mb": rss_mb(), "items": len(items)}
""",
    "tuples": r"""
from pathlib import Path
from avdata.cli import main
t = time.perf_counter()
main(args["argv"], standalone_mode=False)
written = sum(p.stat().st_size for p in Path(args["out"]).rglob("*") if p.is_file())
out[args["name"]] = {"s": time.perf_counter() - t, "rss_mb": rss_mb(), "mb_written": written / 1e6}
""",
    "evaluate": r"""
import torch
torch.set_num_threads(1)
from pathlib import Path
from avtrain.run.config import TrainConfig
from avtrain.evaluation.evaluate import evaluate
from avtrain.run.checkpoint import LAST as CHECKPOINT
from avtrain.methods import build_method
from avtrain.run.checkpoint import save_checkpoint
cfg = TrainConfig()
torch.manual_seed(0)
run = Path(args["run"]); run.mkdir(parents=True, exist_ok=True)
save_checkpoint(run / CHECKPOINT, {"config": cfg.to_dict(), "model": build_method(cfg).state_dict(), "epoch": 0, "step": 0})
t = time.perf_counter()
m = evaluate(run, args["shards"], args["tuples"], n_boot=args["n_boot"], echo=None)
out["evaluate"] = {"s": time.perf_counter() - t, "rss_mb": rss_mb(), "items": m["items"]["audio"] + m["items"]["face"]}
""",
    "loader": r"""
import torch
torch.set_num_threads(1)
from avtrain.train.data import TupleStream, load_sizes, make_loader
urls, sizes = load_sizes(args["tuples"], "matching_train_a2v_k2")
loader = make_loader(TupleStream(urls, 32, seed=0), workers=2, pin_memory=False)
t = time.perf_counter(); n = 0
for b in loader:
    n += len(b["label"])
out["loader"] = {"s": time.perf_counter() - t, "rss_mb": rss_mb(), "rss_worker_mb": rss_mb(resource.RUSAGE_CHILDREN),
                 "items": n}
""",
}


def run_stage(stage: str, **args) -> dict:
    # the previous stage's dirty pages (GBs of shards) are written back first, so that their
    # writeback does not slow this stage: without it, train tuples at 100% took 21.3 s, 17.2 s after a sync
    os.sync()
    env = os.environ | {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = PRELUDE + STAGES[stage] + "\nprint(json.dumps(out))\n"
    res = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        check=False,
    )
    if res.returncode != 0:
        raise SystemExit(f"stage {stage} failed:\n{res.stdout[-1500:]}\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def make_tree(root: Path, fraction: float, clips: int, faces: int, face_files: list[Path] = FACES) -> dict:
    """wav/ and faces/ for the first `fraction` of a fixed permutation of the 1,251 identities,
    each face a symlink to one of `face_files`."""
    import pandas as pd

    meta = pd.read_csv(META, sep="\t")
    order = np.random.default_rng(0).permutation(len(meta))
    picked = sorted(order[: round(fraction * len(meta))])
    for n, i in enumerate(picked):
        vox_id, name = meta.iloc[i, 0], meta.iloc[i, 1]
        for c in range(clips):
            p = root / "wav" / vox_id / f"yt{c // 4:09d}" / f"{c % 4 + 1:05d}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.symlink_to(WAVS[(n + c) % len(WAVS)])
        for f in range(faces):
            source = face_files[(n + f) % len(face_files)]
            p = root / "faces" / name / f"yt{f // 4:09d}" / f"{f % 4 + 1:07d}{source.suffix}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.symlink_to(source)
    return {"identities": len(picked), "files": len(picked) * (clips + faces)}


def one_scale(
    tmp: Path,
    fraction: float,
    clips: int,
    faces: int,
    jobs: int,
    shard_size: int,
    n_boot: int,
    sets_per_identity: int,
    face_files: list[Path] = FACES,
) -> dict:
    root = tmp / f"f{fraction:g}"
    tree = make_tree(root, fraction, clips, faces, face_files)
    roots = {"meta": str(META), "audio": str(root / "wav"), "faces": str(root / "faces")}
    res = {"fraction": fraction, **tree}
    stages = run_stage("prep", **roots, shard_size=shard_size)
    stages |= run_stage("build", **roots, out=str(root / "shards"), shard_size=shard_size, jobs=jobs)
    b = stages.pop("build")
    pre = sum(stages[k]["s"] for k in ("scan", "splits", "plan"))
    stages["extract+write"] = {
        "s": b["s"] - pre,
        "rss_mb": b["rss_mb"],
        "rss_worker_mb": b["rss_worker_mb"],
        "items": b["items"],
        "samples": b["samples"],
        "rejects": b["rejects"],
    }
    shards = str(root / "shards")
    # what every make-tuples starts with: the shards' member index (avdata.reader.index_items)
    stages |= run_stage("index", shards=shards)
    make = ["make-tuples", "--shards", shards]
    for name, argv in (
        (
            "tuples-train-k2",
            make
            + [
                "--task",
                "matching",
                "--split",
                "train",
                "--k",
                "2",
                "--direction",
                "a2v",
                "--out",
                str(root / "tuples-train"),
            ],
        ),
        (
            "tuples-test-k2-10",
            make
            + [
                "--task",
                "matching",
                "--split",
                "test",
                "--k",
                "2-10",
                "--sets-per-identity",
                str(sets_per_identity),
                "--out",
                str(root / "tuples-test"),
            ],
        ),
        # one directory each: make-tuples re-checks every list already in its --out
        (
            "tuples-verification",
            make + ["--task", "verification", "--split", "test", "--out", str(root / "tuples-verif")],
        ),
        (
            "tuples-retrieval",
            make + ["--task", "retrieval", "--split", "test", "--out", str(root / "tuples-retr")],
        ),
    ):
        stages |= run_stage("tuples", argv=argv, name=name, out=argv[-1])
    stages |= run_stage(
        "evaluate", run=str(root / "run"), shards=shards, tuples=str(root / "tuples-test"), n_boot=n_boot
    )
    stages |= run_stage("loader", tuples=str(root / "tuples-train"))
    # tuples drawn per list, from the index files
    counts = {}
    for d in ("tuples-train", "tuples-test", "tuples-verif", "tuples-retr"):
        for f in sorted((root / d / "index").glob("*.jsonl")):
            counts[f.stem] = len(f.read_text().splitlines())
    res["tuples"] = counts
    res["stages"] = stages
    return res


def build_rates(
    tmp: Path,
    fraction: float,
    clips: int,
    faces: int,
    jobs: int,
    shard_size: int,
    which: str = "audio,faces,both,dask",
    face_files: list[Path] = FACES,
) -> dict:
    """Per-modality extraction rates for the extrapolation: audio-only and faces-only builds
    on one core (-j 1), and the whole tree with -j J under multiprocessing and under Dask."""
    root = tmp / f"rates-f{fraction:g}"
    tree = make_tree(root, fraction, clips, faces, face_files)
    meta = {"meta": str(META), "shard_size": shard_size}
    out = {"fraction": fraction, **tree}
    for name, roots, j, dist in (
        ("audio -j 1", {"audio": str(root / "wav")}, 1, "multiprocessing"),
        ("faces -j 1", {"faces": str(root / "faces")}, 1, "multiprocessing"),
        (
            f"both -j {jobs}",
            {"audio": str(root / "wav"), "faces": str(root / "faces")},
            jobs,
            "multiprocessing",
        ),
        (f"both dask -j {jobs}", {"audio": str(root / "wav"), "faces": str(root / "faces")}, jobs, "dask"),
    ):
        if name.split()[0 if "dask" not in name else 1] not in which.split(","):
            continue
        b = run_stage(
            "build", **meta, **roots, out=str(root / name.replace(" ", "_")), jobs=j, distributor=dist
        )["build"]
        out[name] = b | {"items_per_s": b["items"] / b["s"]}
        print(
            f"{name}: {b['items']} files in {b['s']:.1f} s = {b['items'] / b['s']:.1f} files/s",
            file=sys.stderr,
        )
    return out


def face_photos(kind: str, tmp: Path) -> list[Path]:
    """The photos the tree's faces link to (see --face-photos)."""
    if kind == "aligned":
        return FACES
    web = tmp / "web-portraits"
    if not web.is_dir():
        from faces import make_web_portraits  # bench/faces.py

        make_web_portraits(SHARED / "media" / "faces" / "facenet_pytorch", web)
    return sorted(web.glob("*.jpg"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=2, help="voice clips per identity")
    ap.add_argument("--faces", type=int, default=1, help="face photos per identity")
    ap.add_argument(
        "--sets-per-identity", type=int, default=10, help="make-tuples test k>2 tuples per identity"
    )
    ap.add_argument("--fractions", default="0.1,0.5,1", help="fractions of the 1,251 identities")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="build-shards worker processes")
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--bootstrap", type=int, default=200, help="evaluate's bootstrap resamples")
    ap.add_argument(
        "--rates-only",
        action="store_true",
        help="only the per-modality build rates (-j 1) and -j J vs Dask, at the first fraction",
    )
    ap.add_argument(
        "--rates-builds", default="audio,faces,both,dask", help="which --rates-only builds to run"
    )
    ap.add_argument(
        "--face-photos",
        choices=("aligned", "web"),
        default="aligned",
        help="aligned: the 5 real 160 px aligned photos in shared/ (symlinked); web: 22 real photos "
        "resized to 250-800 px, VGGFace-like (bench/faces.py's web portraits, made in the temp dir)",
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]
    started, load_at_start = time.time(), os.getloadavg()
    if args.rates_only:
        with tempfile.TemporaryDirectory(prefix="avmatch-scale-") as tmp:
            rates = build_rates(
                Path(tmp),
                fractions[0],
                args.clips,
                args.faces,
                args.jobs,
                args.shard_size,
                args.rates_builds,
                face_photos(args.face_photos, Path(tmp)),
            )
        report = {
            "command": "bench/scale.py " + " ".join(sys.argv[1:]),
            "load_avg_at_start": load_at_start,
            "load_avg_at_end": os.getloadavg(),
            "rates": rates,
        }
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        return
    with tempfile.TemporaryDirectory(prefix="avmatch-scale-") as tmp:
        results = []
        for f in fractions:
            t = time.perf_counter()
            results.append(
                one_scale(
                    Path(tmp),
                    f,
                    args.clips,
                    args.faces,
                    args.jobs,
                    args.shard_size,
                    args.bootstrap,
                    args.sets_per_identity,
                    face_photos(args.face_photos, Path(tmp)),
                )
            )
            print(
                f"fraction {f:g}: {results[-1]['files']} files, {time.perf_counter() - t:.0f} s",
                file=sys.stderr,
            )
    report = {
        "command": "bench/scale.py " + " ".join(sys.argv[1:]),
        "started": started,
        "cpus": os.cpu_count(),
        "load_avg_at_start": load_at_start,
        "load_avg_at_end": os.getloadavg(),
        "wall_s": time.time() - started,
        "results": results,
    }
    lo, hi = results[0], results[-1]
    scale = hi["files"] / lo["files"]
    print(
        f"\n{'stage':22s} "
        + " ".join(f"{'s@' + format(r['fraction'], 'g'):>9s}" for r in results)
        + f" {'growth':>7s} (files x{scale:.1f})  "
        + " ".join(f"{'MB@' + format(r['fraction'], 'g'):>8s}" for r in results)
    )
    growth = {}
    for stage in hi["stages"]:
        ts = [r["stages"][stage]["s"] for r in results]
        rss = [r["stages"][stage]["rss_mb"] for r in results]
        growth[stage] = ts[-1] / ts[0] if ts[0] > 0 else float("nan")
        print(
            f"{stage:22s} "
            + " ".join(f"{t:9.2f}" for t in ts)
            + f" {growth[stage]:7.1f}"
            + " " * 22
            + " ".join(f"{m:8.0f}" for m in rss)
        )
    report["growth"] = growth
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
