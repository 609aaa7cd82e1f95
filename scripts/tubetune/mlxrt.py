"""MLX with an optimized BLAS: every module that uses mlx imports it from here first.

The Linux ``mlx[cpu]`` wheel links a reference BLAS (about 9 GFLOPS for an f32 matmul on 2 cores);
OpenBLAS from the ``cmeel-openblas`` package, loaded with ``RTLD_GLOBAL`` before ``import mlx``,
provides the same symbols about 40x faster, which makes CPU training ~20x faster. Importing this
module loads it (:data:`BLAS` describes the result) and then ``mlx.core`` (:data:`mx`).

An OpenBLAS built for one CPU family (``openblas_get_corename``, e.g. SKYLAKEX) executes that family's
instructions in every matmul: on a CPU without them (AVX-512 on an AMD Zen 3) the process dies with
"Illegal instruction". Each candidate is therefore opened privately first and loaded only when this CPU
has the instructions of its kernels; then the system's OpenBLAS (``libopenblas.so.0``, usually built for
every CPU) is tried, then MLX keeps its reference BLAS, with one log line saying why. The import
sorting puts ``from tubetune.mlxrt import ...`` in a section of its own before the standard library
(pyproject.toml), so it runs before any ``mlx`` or ``mlx_lm`` import of the same module.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from functools import cache
from pathlib import Path

logger = logging.getLogger(__name__)

DISABLE_ENV = "TUBETUNE_NO_OPENBLAS"
SYSTEM_OPENBLAS = "libopenblas.so.0"

# The x86 instruction-set flags (/proc/cpuinfo) that the kernels of an OpenBLAS core need; a core not
# listed (a DYNAMIC_ARCH build reports the core it picked for this CPU, so it is runnable) needs none.
_AVX2 = frozenset({"avx", "avx2", "fma"})
_AVX512 = _AVX2 | {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}
CORE_FLAGS: dict[str, frozenset[str]] = {
    "SANDYBRIDGE": frozenset({"avx"}),
    "HASWELL": _AVX2,
    "ZEN": _AVX2,
    "SKYLAKEX": _AVX512,
    "COOPERLAKE": _AVX512 | {"avx512_bf16"},
    "SAPPHIRERAPIDS": _AVX512 | {"avx512_bf16", "amx_tile"},
}


def _openblas_candidates() -> list[Path]:
    """The OpenBLAS library of each cmeel-openblas on sys.path (a wheel holds libopenblas.so, .so.0 and
    .so.0.3 as copies of one library: the first of them)."""
    candidates: list[Path] = []
    for entry in sys.path:
        prefix = Path(entry) / "cmeel.prefix" / "lib"
        if prefix.is_dir():
            candidates.extend(sorted(prefix.glob("libopenblas.so*"))[:1])
    return candidates


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str] | None:
    """The instruction-set flags of this CPU (the first ``flags`` line), or None where unknown."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return None


def missing_instructions(core: str, flags: frozenset[str] | None) -> list[str]:
    """The instruction-set flags an OpenBLAS built for ``core`` needs and this CPU lacks (sorted)."""
    if flags is None:
        return []
    return sorted(CORE_FLAGS.get(core.upper(), frozenset()) - flags)


def _text(lib: ctypes.CDLL, name: str) -> str | None:
    try:
        function = getattr(lib, name)
    except AttributeError:
        return None
    function.restype = ctypes.c_char_p
    value = function()
    return value.decode().strip() if value else None


@cache
def ensure_fast_blas() -> str:
    """Load OpenBLAS globally (Linux only); return a one-line description of the active BLAS."""
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    if not sys.platform.startswith("linux"):
        return "default"
    if os.environ.get(DISABLE_ENV):
        return f"reference BLAS of the mlx wheel ({DISABLE_ENV} is set)"
    if "mlx.core" in sys.modules:
        logger.warning("mlx was imported before tubetune.mlxrt: the optimized BLAS may not be used")
    errors: list[str] = []
    refused: list[str] = []
    flags = cpu_flags()
    for path in [*map(str, _openblas_candidates()), SYSTEM_OPENBLAS]:
        try:
            lib = ctypes.CDLL(path)  # private (RTLD_LOCAL): nothing of it is used yet
        except OSError as exc:
            if path != SYSTEM_OPENBLAS:
                errors.append(str(exc))
            continue
        core = _text(lib, "openblas_get_corename") or ""
        missing = missing_instructions(core, flags)
        if missing:
            refused.append(f"{path} is built for {core} CPUs and this CPU lacks {', '.join(missing)}")
            continue
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)  # now its symbols serve MLX
        config = _text(lib, "openblas_get_config")
        name = config if config and config.startswith("OpenBLAS") else f"OpenBLAS {config or ''}".strip()
        description = f"{name} ({path})"
        for reason in refused:
            logger.warning("OpenBLAS not used: %s; using %s instead", reason, description)
        return description
    if refused:
        logger.warning(
            "OpenBLAS not used: %s (it would stop with 'Illegal instruction'): MLX uses the slow reference "
            "BLAS; install cmeel-openblas==0.3.29 (built for AVX2) or the system's OpenBLAS "
            "(apt-get install libopenblas0-pthread)",
            "; ".join(refused),
        )
        return "reference BLAS of the mlx wheel (slow; OpenBLAS built for another CPU)"
    if errors:
        advice = (
            "install libgfortran5 (apt-get install libgfortran5)"
            if any("libgfortran" in e for e in errors)
            else errors[0]
        )
        logger.warning("cannot load OpenBLAS (%s): MLX uses the slow reference BLAS; %s", errors[0], advice)
    else:
        logger.warning("cmeel-openblas not found: MLX uses the slow reference BLAS (pip install it)")
    return "reference BLAS of the mlx wheel (slow)"


BLAS = ensure_fast_blas()

import mlx.core as mx  # noqa: E402  (after the BLAS it links against)

__all__ = ["BLAS", "ensure_fast_blas", "mx"]
