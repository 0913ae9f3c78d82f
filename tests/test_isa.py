"""Results that hold on any x86-64 CPU (issue #19).

This machine is made to pick the kernels other CPUs would (avdata.kernels.SIMULATED_CPUS: torch's
ATEN_CPU_CAPABILITY, oneDNN's ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS, numpy's
NPY_DISABLE_CPU_FEATURES), each in a fresh process, and the outputs are compared:

* a shard build (audio, photos and videos) is byte-identical under every simulation;
* the dB kernels give the same bits where numpy's np.log10 does not;
* `fit --deterministic` gives the same weights under every simulation;
* `manifest verify` calls float noise "equivalent" (exit 3) and a real change "different" (exit 1).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers import build_shards_args, make_tuples_args, tiny_fit_sets

from avdata.io import add_tar_member, sha256_file
from avdata.kernels import cpu_flags, environment, supported_simulations
from avdata.reader import iter_tar_samples

REPO = Path(__file__).resolve().parents[1]
# native, an AVX2 machine and a pre-AVX2 one: aten-avx2 and aten-default change a subset of
# what these change (bench/isa.py and `make test-isa` cover them).
SIMULATIONS = {
    k: v for k, v in supported_simulations().items() if k in ("native", "avx2-machine", "sse42-machine")
}


def _run(args: list[str], env: dict[str, str], cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=environment(env), cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from avdata.synth import synth_corpus

    root = tmp_path_factory.mktemp("isa") / "corpus"
    synth_corpus(root, identities=6, clips_per_identity=2, faces_per_identity=2, videos=True, seed=3)
    return root


@pytest.fixture(scope="module")
def builds(corpus, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, env in SIMULATIONS.items():
        target = tmp_path_factory.mktemp(f"build-{name}") / "shards"
        args = build_shards_args(corpus, target, media=("wav", "faces", "mp4"), shard_size=8)
        res = _run([sys.executable, "-m", "avdata.cli", *args, "-j", "1"], env)
        assert res.returncode == 0, f"{name}: {res.stderr[-2000:]}"
        out[name] = target
    return out


def test_shard_build_is_byte_identical_under_every_simulated_cpu(builds):
    assert len(builds) >= 2, "expected at least native and sse42-machine on x86-64"
    native = json.loads((builds["native"] / "manifest.json").read_text())
    faces = [n for n in native["shards"] if "/face-" in n]
    assert faces and any("/audio-" in n for n in native["shards"])
    for name, out in builds.items():
        m = json.loads((out / "manifest.json").read_text())
        assert {n: e["sha256"] for n, e in m["shards"].items()} == {
            n: e["sha256"] for n, e in native["shards"].items()
        }, name
        assert m["rejects_sha256"] == native["rejects_sha256"], name
        # the CLI says so too, against the native build's manifest
        res = _run(
            [sys.executable, "-m", "avdata.cli", "manifest", "verify", str(out), "--against",
             str(builds["native"] / "manifest.json")],
            {},
        )  # fmt: skip
        assert res.returncode == 0 and "identical to" in res.stdout, res.stdout + res.stderr


def test_detection_floats_live_outside_the_hashed_samples(builds):
    """The sidecar holds MTCNN's floats; the sample JSON only the integer crop it cut."""
    out = builds["native"]
    shard = sorted(out.glob("*/face-*.tar"))[0]
    detections = [
        json.loads(l) for l in shard.with_name(shard.stem + ".detections.jsonl").read_text().splitlines()
    ]
    samples = list(iter_tar_samples(shard))
    assert [d["key"] for d in detections] == [s["__key__"] for s in samples]
    for d, s in zip(detections, samples):
        meta = json.loads(s["json"])
        assert set(meta) & {"box", "prob", "n_faces"} == set()
        left, top, side = meta["crop"]
        x1, y1, x2, y2 = d["box"]
        # the crop is the box's square with the 0.2 margin, rounded
        assert abs(side - max(x2 - x1, y2 - y1) * 1.2) <= 0.5 + 1e-9
        assert abs(left + side / 2 - (x1 + x2) / 2) <= 1.0
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["shards"][shard.relative_to(out).as_posix()]
    assert entry["detections"] == shard.relative_to(out).with_suffix(".detections.jsonl").as_posix()


_LOG_PROBE = """
import hashlib, numpy as np
from avdata.audio import stable_log10, stable_magnitude
rng = np.random.default_rng(0)
u = rng.uniform(1e-3, 1.0, 200_000)
x = u * u * u * u * 3000.0 + 1e-5  # products only: the input itself is the same bits everywhere
z = (rng.standard_normal(200_000) + 1j * rng.standard_normal(200_000)) * 100.0
h = lambda a: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]
print(h(stable_log10(x)), h(stable_magnitude(z)), h(np.log10(x)), h(np.abs(z)))
"""


def test_db_kernels_give_the_same_bits_on_every_simulated_cpu():
    outputs = {}
    for name, env in SIMULATIONS.items():
        res = _run([sys.executable, "-c", _LOG_PROBE], env)
        assert res.returncode == 0, res.stderr
        outputs[name] = res.stdout.split()
    ours = {tuple(v[:2]) for v in outputs.values()}
    assert len(ours) == 1, outputs
    # the simulations do reach numpy: its own log10 / abs give other bits without AVX2 / AVX-512
    if "avx2" in cpu_flags() and "sse42-machine" in outputs:
        assert outputs["native"][2:] != outputs["sse42-machine"][2:], outputs
    # and they agree with numpy's own to float64 rounding
    from avdata.audio import stable_log10, stable_magnitude

    x = np.linspace(1e-5, 3000.0, 100_001)
    np.testing.assert_allclose(stable_log10(x), np.log10(x), rtol=1e-15, atol=0)
    z = x * np.exp(1j * x)
    np.testing.assert_allclose(stable_magnitude(z), np.abs(z), rtol=1e-15, atol=0)


# ---------------------------------------------------------------- manifest verify: equivalent / different


def _rewrite_sample(shard: Path, change) -> None:
    """Rewrite a tar with the first sample's members passed through change(ext, bytes)."""
    samples = list(iter_tar_samples(shard))
    tmp = shard.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        for i, s in enumerate(samples):
            for ext, data in ((k, v) for k, v in s.items() if not k.startswith("__")):
                add_tar_member(tar, f"{s['__key__']}.{ext}", change(ext, data) if i == 0 else data)
    tmp.replace(shard)


def _as_another_machine(src: Path, dst: Path, shard_glob: str, change) -> str:
    """A copy of a build whose one shard's first sample is changed, as another machine's build
    would be: its own manifest.json describes its bytes (no integrity problem)."""
    import shutil

    shutil.copytree(src, dst)
    shard = sorted(dst.glob(shard_glob))[0]
    _rewrite_sample(shard, change)
    manifest = json.loads((dst / "manifest.json").read_text())
    name = shard.relative_to(dst).as_posix()
    manifest["shards"][name]["sha256"] = sha256_file(shard)
    manifest["shards"][name]["bytes"] = shard.stat().st_size
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return name


def _spectrogram_plus(delta: float):
    def change(ext, data):
        if ext != "npy":
            return data
        import io

        spec = np.load(io.BytesIO(data), allow_pickle=False).copy()
        spec[:10, :10] += np.float32(delta)
        buf = io.BytesIO()
        np.save(buf, spec, allow_pickle=False)
        return buf.getvalue()

    return change


def _verify(dir: Path, against: Path) -> subprocess.CompletedProcess:
    return _run(
        [sys.executable, "-m", "avdata.cli", "manifest", "verify", str(dir), "--against", str(against)], {}
    )


def test_verify_calls_float_noise_equivalent_and_exits_3(builds, tmp_path):
    src = builds["native"]
    name = _as_another_machine(src, tmp_path / "noisy", "*/audio-*.tar", _spectrogram_plus(1e-4))
    res = _verify(tmp_path / "noisy", src / "manifest.json")
    assert res.returncode == 3, res.stdout + res.stderr
    assert f"equivalent: shards: {name} float noise in 1 of" in res.stdout
    assert "equivalent (float noise in 1 samples of 1 shards, largest difference" in res.stdout
    assert "sha256 changed" not in res.stdout and "Traceback" not in res.stderr


def test_verify_calls_a_real_change_different(builds, tmp_path):
    src = builds["native"]
    # a spectrogram moved by 3 dB in a corner: beyond the 0.1 dB band-mean tolerance
    name = _as_another_machine(src, tmp_path / "louder", "*/audio-*.tar", _spectrogram_plus(30.0))
    res = _verify(tmp_path / "louder", src / "manifest.json")
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"shards: {name} sha256 changed, different: sample 0's array summary moved by" in res.stdout
    assert "different from" in res.stderr

    # a face cut one pixel to the side: the crop rectangle is exact metadata
    def move_crop(ext, data):
        if ext != "json":
            return data
        meta = json.loads(data)
        meta["crop"][0] += 1
        return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()

    name = _as_another_machine(src, tmp_path / "moved", "*/face-*.tar", move_crop)
    res = _verify(tmp_path / "moved", src / "manifest.json")
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"shards: {name} sha256 changed, different: sample keys, labels or metadata" in res.stdout


# ---------------------------------------------------------------- fit --deterministic


@pytest.fixture(scope="module")
def isa_tuples(builds, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("isa-tuples") / "tuples"
    args = make_tuples_args(
        builds["native"], out, "--sets-per-identity", "12", direction="a2v", split="train"
    )
    res = _run([sys.executable, "-m", "avdata.cli", *args], {})
    assert res.returncode == 0, res.stderr
    return out


def _fit_weights(tuples: Path, out: Path, env: dict, *extra: str) -> str:
    args = [
        "fit",
        "--shards",
        str(tuples),
        "--task",
        "matching",
        "--k",
        "2",
        "--epochs",
        "1",
        "--device",
        "cpu",
    ]
    args += ["--out", str(out), "--no-progress", *tiny_fit_sets(4, "batch_size=4"), *extra]
    res = _run([sys.executable, "-m", "avtrain.cli", *args], env)
    assert res.returncode == 0, res.stderr[-2000:]
    from avtrain.run.manifest import run_manifest

    return run_manifest(out)["weights_sha256"]


def test_deterministic_fit_gives_the_same_weights_under_every_simulated_cpu(isa_tuples, tmp_path):
    pinned = {
        name: _fit_weights(isa_tuples, tmp_path / f"det-{name}", env, "--deterministic")
        for name, env in SIMULATIONS.items()
    }
    assert len(set(pinned.values())) == 1, pinned
    # and they do reach training: without --deterministic the kernels give other weights
    if "avx2" in cpu_flags() and "sse42-machine" in SIMULATIONS:
        free = {
            name: _fit_weights(isa_tuples, tmp_path / f"free-{name}", SIMULATIONS[name])
            for name in ("native", "sse42-machine")
        }
        assert free["native"] != free["sse42-machine"], free
    cfg = (tmp_path / "det-native" / "config.yaml").read_text()
    assert "deterministic: true" in cfg
