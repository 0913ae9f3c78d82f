"""Plain helpers shared by several test modules (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import numpy as np

from avdata.io import sha256_file

# Two float32 forward passes of one model on the same input, but in other batches or on another
# CPU's kernels, sum in another order: each layer adds a relative error of about sqrt(fan_in) x
# 6e-8 (fan_in up to 4608 here, 3x3x512), ~4e-6, so ~4e-5 after the ~10 layers of either branch
# (1.4e-5 of a unit-scale embedding was seen between AVX-512 and AVX2 kernels). 2e-4 of the
# embedding's scale leaves 5x headroom and still fails any real preprocessing change (a face
# cut 1 px aside, another resampling) which moves embeddings by 1e-2 of their scale or more.
EMBEDDING_RTOL = 2e-4


def tar_hashes(root: Path) -> dict[str, str]:
    """sha256 of every .tar below root, keyed by its path relative to root: what byte-identity
    tests compare between builds."""
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*.tar"))}


def box_iou(a, b) -> float:
    """IoU of two [x1, y1, x2, y2] boxes (torchvision's)."""
    import torch
    from torchvision.ops import box_iou as tv_box_iou

    return float(
        tv_box_iou(
            torch.as_tensor(np.array([a], dtype=np.float64)), torch.as_tensor(np.array([b], dtype=np.float64))
        )[0, 0]
    )


def make_tuples_args(
    shards, out, *extra, task="matching", split="train", k=None, direction=None
) -> list[str]:
    """argv of `avdata make-tuples` from SHARDS into OUT, every item a str, EXTRA (further options,
    as given) last. split: one split or a sequence of them (one --split each). k: --k's value
    (a number, a range "2-10" or a list "2,5,10"); None gives "2" for task matching and no --k
    for the other tasks. direction: --direction's value; None gives no --direction."""
    args = ["make-tuples", "--shards", shards, "--task", task]
    for s in [split] if isinstance(split, str) else split:
        args += ["--split", s]
    if k is None and task == "matching":
        k = "2"
    if k is not None:
        args += ["--k", k]
    if direction is not None:
        args += ["--direction", direction]
    return [str(a) for a in [*args, "--out", out, *extra]]


MEDIA_FLAGS = {"wav": "--audio", "faces": "--faces", "mp4": "--videos"}


def build_shards_args(corpus, out, *extra, media=("wav", "faces"), shard_size=2) -> list[str]:
    """argv of `avdata build-shards` over a synth corpus's media folders (wav, faces, mp4) and
    its vox1_meta.csv, without a progress bar; `extra` options come last (a repeated option wins)."""
    args = ["build-shards"]
    for folder in media:
        args += [MEDIA_FLAGS[folder], str(Path(corpus) / folder)]
    args += ["--meta", str(Path(corpus) / "vox1_meta.csv"), "--out", str(out)]
    return args + ["--shard-size", str(shard_size), "--no-progress", *map(str, extra)]


def tiny_fit_sets(max_steps: int, *more: str) -> list[str]:
    """`--set` options of a fast CPU `avtrain fit` (batch 8, no loader workers, one thread,
    `max_steps` steps an epoch), then `--set` of each setting in `more`."""
    sets = ["batch_size=8", "workers=0", "threads=1", f"max_steps_per_epoch={max_steps}", *more]
    return [arg for setting in sets for arg in ("--set", setting)]


@contextlib.contextmanager
def fifo_that_never_blocks(path: Path, grace_s: float = 15.0):
    """Make a FIFO at ``path`` for a test that it is refused, never waited on. Should a reader
    still be blocked opening it after ``grace_s`` (the bug under test), its write end is opened
    and closed, so the reader sees an empty file instead of hanging the test run forever; the
    yielded dict's ``"blocked"`` then says so (the test asserts it stays False)."""
    os.mkfifo(path)
    state, done = {"blocked": False}, threading.Event()

    def unblock():
        if done.wait(grace_s):
            return
        while not done.wait(0.2):
            try:  # succeeds only while a reader has it open (or is blocked opening it)
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue
            state["blocked"] = True
            os.close(fd)

    watcher = threading.Thread(target=unblock, daemon=True)
    watcher.start()
    try:
        yield state
    finally:
        done.set()
        watcher.join()


def save_random_run(run: Path, seed: int = 3, tuples: Path | None = None, **settings) -> Path:
    """RUN/checkpoint.pt of a randomly initialised model (matching k=2 a2v unless ``settings``
    say otherwise): enough for tests of loading, exporting and consistency, no training. With
    ``tuples`` (a tuple directory), it records them and their item shards as fit would
    (avtrain.run.data_record), so serving preprocesses with those shards' settings, quietly."""
    import torch

    from avtrain.methods import build_method
    from avtrain.run.checkpoint import LAST, save_checkpoint
    from avtrain.run.config import TrainConfig

    cfg = TrainConfig.from_dict({"task": "matching", "k": 2, "direction": "a2v", "seed": seed, **settings})
    torch.manual_seed(seed)
    run.mkdir(parents=True, exist_ok=True)
    state = {"config": cfg.to_dict(), "model": build_method(cfg).state_dict(), "epoch": 0, "step": 0}
    if tuples is not None:
        from avtrain.run.data_record import RECORD_KEY, run_data_record

        state[RECORD_KEY] = run_data_record(tuples, cfg.tuples)[0]
    save_checkpoint(run / LAST, state)
    return run


def one_line_error(res, *words) -> str:
    """A CliRunner result failed with exactly one line, ``Error: ...`` (no traceback), containing
    every one of ``words``; that line. One-line notes printed before it (``note: ...``: a run that
    records no extraction settings, what fit could not find) are not errors."""
    assert res.exit_code == 1, (res.exit_code, res.output, res.exception)
    lines = [line for line in res.output.strip().splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]
