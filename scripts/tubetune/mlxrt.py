"""MLX with an optimized BLAS: every module that uses mlx imports it from here first.

The Linux ``mlx[cpu]`` wheel links a reference BLAS (about 9 GFLOPS for an f32 matmul on 2 cores);
OpenBLAS from the ``cmeel-openblas`` package, loaded with ``RTLD_GLOBAL`` before ``import mlx``,
provides the same symbols about 40x faster, which makes CPU training ~20x faster. Importing this
module loads it (:data:`BLAS` describes the result) and then ``mlx.core`` (:data:`mx`). The import
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


def _openblas_candidates() -> list[Path]:
    candidates: list[Path] = []
    for entry in sys.path:
        prefix = Path(entry) / "cmeel.prefix" / "lib"
        if prefix.is_dir():
            candidates.extend(sorted(prefix.glob("libopenblas.so*")))
    return candidates


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
    for path in _openblas_candidates():
        try:
            lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            errors.append(str(exc))
            continue
        description = f"OpenBLAS ({path})"
        try:
            get_config = lib.openblas_get_config
            get_config.restype = ctypes.c_char_p
            config = get_config()
            if config:
                description = f"OpenBLAS {config.decode().strip()} ({path})"
        except AttributeError:
            pass
        return description
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
