"""The BLAS MLX gets on Linux: OpenBLAS only when this CPU runs the kernels it was built for."""

from __future__ import annotations

from tubetune.mlxrt import CORE_FLAGS, cpu_flags, missing_instructions

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
MATMUL = (
    "import logging; logging.basicConfig(level=logging.WARNING)\n"
    "from tubetune.mlxrt import BLAS, mx\n"
    "a = mx.ones((256, 256)); print(BLAS); print(float(mx.matmul(a, a).sum()))\n"
)

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OpenBLAS is loaded on Linux only")


def test_missing_instructions_of_a_core() -> None:
    zen3 = frozenset({"sse4_2", "avx", "avx2", "fma", "bmi2"})
    assert missing_instructions("SKYLAKEX", zen3) == [
        "avx512bw",
        "avx512cd",
        "avx512dq",
        "avx512f",
        "avx512vl",
    ]
    assert missing_instructions("zen", zen3) == [] and missing_instructions("HASWELL", zen3) == []
    assert missing_instructions("SANDYBRIDGE", frozenset({"sse4_2"})) == ["avx"]
    assert missing_instructions("PRESCOTT", frozenset()) == []  # a core without AVX kernels
    assert missing_instructions("SKYLAKEX", None) == []  # flags unknown (not Linux x86): trusted


def test_cpu_flags_read_the_first_flags_line(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == frozenset({"fpu", "avx", "avx2", "fma"})
    assert cpu_flags(tmp_path / "missing") is None


@linux
def test_the_installed_openblas_runs_here() -> None:
    """The pinned cmeel-openblas: its core's instructions are on this CPU and a matmul completes (with
    an OpenBLAS built for AVX-512 on an AMD Zen 3 the process died with 'Illegal instruction')."""
    run = subprocess.run(
        [sys.executable, "-c", MATMUL], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    blas, total = run.stdout.splitlines()
    assert blas.startswith("OpenBLAS") and float(total) == 256.0**3


@linux
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the stand-in library")
def test_an_openblas_for_another_cpu_is_refused_with_one_line(tmp_path: Path) -> None:
    """A library that reports a core whose instructions this CPU lacks (AVX-512 on a CPU without it,
    AMX on one with AVX-512) is not loaded: the next candidate is, and the log says why."""
    flags = cpu_flags()
    lacking = {core: missing for core in CORE_FLAGS if (missing := missing_instructions(core, flags))}
    if flags is None or not lacking:
        pytest.skip("this CPU runs the kernels of every OpenBLAS core: nothing to refuse")
    core, missing = next(iter(lacking.items()))
    lib = tmp_path / "site" / "cmeel.prefix" / "lib"
    lib.mkdir(parents=True)
    source = tmp_path / "core.c"
    source.write_text(
        f'const char *openblas_get_corename(void) {{ return "{core}"; }}\n'
        f'const char *openblas_get_config(void) {{ return "OpenBLAS 0.3.31 {core}"; }}\n'
    )
    # named to sort before any real candidate of the same folder; its folder comes first on sys.path
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib / "libopenblas.so"), str(source)], check=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(SCRIPTS)])}
    run = subprocess.run(
        [sys.executable, "-c", MATMUL], capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert run.returncode == 0, run.stderr[-2000:]
    refused = [line for line in run.stderr.splitlines() if "OpenBLAS not used" in line]
    assert len(refused) == 1 and f"built for {core} CPUs and this CPU lacks {missing[0]}" in refused[0], (
        run.stderr
    )
    assert str(lib) not in run.stdout.splitlines()[0]


@linux
def test_openblas_threads_for_another_library_then_restored() -> None:
    """Inside ``openblas_threads(1)`` OpenBLAS runs one thread (its idle workers would spin on the cores
    torch's threads need); after it, the count it had."""
    code = (
        "import ctypes\n"
        "from tubetune.mlxrt import mx\n"
        "from tubetune.train.blas import openblas_threads\n"
        "get = ctypes.CDLL(None).openblas_get_num_threads\n"
        "ctypes.CDLL(None).openblas_set_num_threads(2)\n"
        "with openblas_threads(1) as previous:\n"
        "    inside = get()\n"
        "print(previous, inside, get())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS)}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["2", "1", "2"]
