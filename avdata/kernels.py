"""Which CPU kernels the numeric libraries pick, and how to pin or simulate them.

torch (ATen), oneDNN, MKL, numpy and ffmpeg choose SIMD kernels per CPU when they load, so
one float computation can give other last bits on another x86-64 machine (an AVX-512 server,
an AVX2 laptop). avmatch's shards do not depend on that (docs/reproducibility.md): what they
hash is exact on every CPU. Two things here use the variables that pick the kernels:

* :data:`SIMULATED_CPUS`: environments that make this machine choose the kernels another CPU
  would (set before the libraries load, i.e. in a fresh process). `make test-isa`, the build
  comparison in tests/test_isa.py and bench/isa.py run under them.
* :data:`PINNED_KERNELS`: what `avtrain fit --deterministic` sets before torch loads, so
  training picks the same kernels on every x86-64 CPU.
* :data:`BUILD_KERNELS`: what `avdata build-shards` sets before detecting faces, so MTCNN runs
  the same kernels on every x86-64 CPU with AVX2.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# Each entry: the variables, and the CPU feature (from /proc/cpuinfo) it needs to mean anything.
SIMULATED_CPUS: dict[str, tuple[dict[str, str], str | None]] = {
    "native": ({}, None),
    # torch's own kernels (elementwise, reductions, pooling) as on an AVX2 / a pre-AVX2 CPU
    "aten-avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, "avx2"),
    "aten-default": ({"ATEN_CPU_CAPABILITY": "default"}, None),
    # an AVX2 machine (no AVX-512): torch, oneDNN convolutions, MKL and numpy
    "avx2-machine": (
        {
            "ATEN_CPU_CAPABILITY": "avx2",
            "ONEDNN_MAX_CPU_ISA": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "NPY_DISABLE_CPU_FEATURES": "X86_V4",
        },
        "avx2",
    ),
    # an old x86-64 machine (SSE4.2)
    "sse42-machine": (
        {
            "ATEN_CPU_CAPABILITY": "default",
            "ONEDNN_MAX_CPU_ISA": "SSE41",
            "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
            "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4",
        },
        None,
    ),
}

# `avtrain fit --deterministic`: every library's plain x86-64 kernels. MKL_CBWR=COMPATIBLE is
# MKL's conditional numerical reproducibility mode (the same results on any x86 CPU for a
# fixed thread count); oneDNN is switched off in-process (torch.backends.mkldnn), so
# convolutions run through ATen's im2col + MKL GEMM, whose blocking does not depend on the
# CPU's cache sizes as oneDNN's does.
PINNED_KERNELS = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4",
}


# build-shards: MTCNN's convolutions (oneDNN) and fully connected layers (MKL) as on an AVX2 CPU.
# Their float32 results differ in the last bits between kernel sets, and MTCNN turns about one
# face in a thousand of those into another integer crop (bench/isa.py: 1 of 1,005 demo faces
# under the avx2-machine simulation before this pin). With every CPU that has AVX2 running
# the AVX2 kernels (MKL_CBWR=AVX2 is MKL's reproducibility mode for that branch), the crops
# agree; it costs the AVX-512 machines a few % of face time (docs/benchmarks.md). An older CPU,
# or an environment that already asks for lower levels, keeps its own (lower) kernels.
BUILD_KERNELS = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "MKL_CBWR": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
}
_LOWER = {  # values below the AVX2 level, kept when already set
    "ONEDNN_MAX_CPU_ISA": {"SSE41", "AVX"},
    "MKL_ENABLE_INSTRUCTIONS": {"SSE4_2", "AVX"},
    "ATEN_CPU_CAPABILITY": {"default"},
}


def pin_build_kernels() -> dict[str, str]:
    """Set :data:`BUILD_KERNELS` in this process' environment (inherited by the build's worker
    processes; read by torch, oneDNN and MKL when they first run, so call it before any face is
    detected). Keeps lower levels already set; on a CPU without AVX2 MKL's reproducible mode is
    COMPATIBLE. Returns what it set."""
    has_avx2 = "avx2" in cpu_flags()
    chosen = {}
    for name, value in BUILD_KERNELS.items():
        current = os.environ.get(name, "")
        if current.upper() in {v.upper() for v in _LOWER.get(name, ())}:
            continue
        chosen[name] = value
    lowered = any(os.environ.get(n, "").upper() in {v.upper() for v in _LOWER[n]} for n in _LOWER)
    if not has_avx2 or lowered:
        chosen["MKL_CBWR"] = "COMPATIBLE"
    os.environ.update(chosen)
    return chosen


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def supported_simulations() -> dict[str, dict[str, str]]:
    """The simulated CPUs this machine can run (x86-64 only; others get just ``native``)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {"native": {}}
    flags = cpu_flags()
    return {name: env for name, (env, needs) in SIMULATED_CPUS.items() if needs is None or needs in flags}


def environment(overrides: dict[str, str]) -> dict[str, str]:
    """os.environ with the kernel variables of every simulation removed, then ``overrides``:
    a child process that picks exactly the kernels ``overrides`` says."""
    names = {k for env, _ in SIMULATED_CPUS.values() for k in env} | set(PINNED_KERNELS) | set(BUILD_KERNELS)
    env = {k: v for k, v in os.environ.items() if k not in names}
    return env | overrides


def pin_kernels() -> bool:
    """Set :data:`PINNED_KERNELS` in this process' environment (inherited by DataLoader
    workers and any child process). Effective only before torch loads: returns False (and sets
    nothing) when torch is already imported, so the caller can restart the process."""
    import sys

    if "torch" in sys.modules and pinned_problem() is not None:
        return False
    os.environ.update(PINNED_KERNELS)
    return True


def pinned_problem() -> str | None:
    """Why this process does not run the pinned kernels, or None when it does."""
    wrong = sorted(k for k, v in PINNED_KERNELS.items() if os.environ.get(k) != v)
    if wrong:
        return f"{', '.join(wrong)} not set as avdata.kernels.PINNED_KERNELS says"
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "DEFAULT":
        return f"torch was loaded before the kernels were pinned (it runs {capability} kernels)"
    return None


def main(argv: list[str] | None = None) -> int:
    """``python -m avdata.kernels SIMULATION -- COMMAND ...``: run COMMAND as on that CPU
    (exit 0 without running it, with a note, when this machine cannot simulate it)."""
    import subprocess
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3 or argv[1] != "--" or argv[0] not in SIMULATED_CPUS:
        print(
            f"usage: python -m avdata.kernels {{{','.join(SIMULATED_CPUS)}}} -- COMMAND ...", file=sys.stderr
        )
        return 2
    supported = supported_simulations()
    if argv[0] not in supported:
        print(f"avdata.kernels: this machine cannot simulate {argv[0]}; skipped: {' '.join(argv[2:])}")
        return 0
    print(f"avdata.kernels: {argv[0]} {supported[argv[0]]}", flush=True)
    return subprocess.run(argv[2:], env=environment(supported[argv[0]])).returncode


if __name__ == "__main__":
    raise SystemExit(main())
