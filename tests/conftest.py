"""Shared fixtures: the real media in ../shared/data (beside the checkout; never copied in).

CI always has ../shared, so a missing directory is a setup error and fails loudly rather
than skipping the real-data tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module, restored afterwards. The tests' tiny CPU
    workloads (MTCNN on small images, small models) are fastest single-threaded, and with 2+
    threads they slow 10-30x when another process competes for the 2 cores (OpenMP spin-waits)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data (protocols/ and media/); fails if it is absent."""
    if not (SHARED_DATA / "media").is_dir():
        pytest.fail(
            f"real test data not found at {SHARED_DATA}: the tests expect ../shared/data "
            "beside the repository checkout (see shared/data/README.md)",
            pytrace=False,
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_wavs(shared_data: Path) -> list[Path]:
    """The 10 real VoxCeleb1 utterances (16 kHz mono, 3.9-10.3 s)."""
    wavs = sorted((shared_data / "media" / "voice" / "voxceleb1_named").glob("*.wav"))
    assert wavs, "no wavs in shared/data/media/voice/voxceleb1_named"
    return wavs


@pytest.fixture(scope="session")
def real_mp4s(shared_data: Path) -> list[Path]:
    """The 2 real talking-head videos (8 s, 512x512, AAC 16 kHz stereo)."""
    videos = sorted((shared_data / "media" / "video" / "hdtf_talking").glob("*.mp4"))
    assert videos, "no mp4s in shared/data/media/video/hdtf_talking"
    return videos


@pytest.fixture(scope="session")
def face_dir(shared_data: Path) -> Path:
    """media/faces/facenet_pytorch: test_images/, test_images_aligned/, multiface.jpg."""
    return shared_data / "media" / "faces" / "facenet_pytorch"


@pytest.fixture(scope="session")
def real_photos(face_dir: Path) -> list[Path]:
    """The 4 real single-person photos (1.1-4.1 MP)."""
    photos = sorted(face_dir.glob("test_images/*/1.jpg"))
    assert len(photos) == 4, photos
    return photos


@pytest.fixture(scope="session")
def train_tuples(tmp_path_factory):
    """A small synthetic corpus -> matching shards -> binary training tuple shards
    (several shards, so ranks and workers have something to split)."""
    from click.testing import CliRunner
    from helpers import make_tuples_args

    from avdata.cli import main
    from avdata.synth import synth_corpus

    root = tmp_path_factory.mktemp("train_tuples")
    synth_corpus(root / "corpus", identities=12, clips_per_identity=3, faces_per_identity=3, seed=5)
    c = root / "corpus"
    for args in (
        [
            "build-shards",
            "--audio",
            c / "wav",
            "--faces",
            c / "faces",
            "--meta",
            c / "vox1_meta.csv",
            "--out",
            root / "shards",
            "--no-progress",
        ],
        make_tuples_args(root / "shards", root / "tuples", "--tuples-per-shard", "16", direction="a2v"),
    ):
        res = CliRunner().invoke(main, [str(a) for a in args])
        assert res.exit_code == 0, res.output
    return root / "tuples"


@pytest.fixture
def small_tmpfs(tmp_path):
    """mount(size) -> a real tmpfs of that size (a disk that fills up), unmounted afterwards;
    skips where mounting is not allowed."""
    import subprocess

    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def mount(size: str) -> Path:
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode})")
        return mnt

    yield mount
    subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
