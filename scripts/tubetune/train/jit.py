"""The C++ compiler behind ``mx.compile`` on a CPU device: flags for this CPU, a kernel cache per host.

MLX builds each fused CPU kernel by running ``g++ -std=c++17 -O3 -fPIC -shared <src> -o <lib>`` (the
``g++`` found on ``PATH``) and keeps the library under ``$TMPDIR/mlx/<mlx version>/cpu/``, named after
the kernel only. Without ``-march`` g++ emits baseline x86-64 code: the loops of a fused kernel stay
scalar. :func:`prepare_jit` puts a ``g++`` first on ``PATH`` that runs the real one with
:data:`FLAGS` appended (vector instructions of this CPU, inlined math functions), and points
``TMPDIR`` at a cache directory named after the host and a hash of the CPU, the compiler, the flags
and the mlx version: a library built for one CPU (``-march=native``) is never loaded on another that
shares the home directory, and a change of flags builds new kernels. Each compile command is appended
to ``compile.log`` in that directory.

Without ``g++`` (or when the wrapper cannot build a test kernel), nothing changes and training takes
mlx-lm's plain path; :class:`JitSetup` says why, in one line.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import shlex
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

FLAGS = ("-march=native", "-finline-limit=1000", "-fno-trapping-math", "-fno-math-errno")
CACHE_ENV = "TUBETUNE_JIT_CACHE"  # root of the kernel caches (default: $XDG_CACHE_HOME/tubetune/mlx-jit)
COMPILER = "g++"  # the name MLX runs
WRAPPER_MARK = "# Runs the C++ compiler with flags for this CPU (tubetune.train.jit)"


@dataclass(frozen=True)
class JitSetup:
    """The outcome of :func:`prepare_jit`: ``cache_dir`` is None on the plain path (``reason`` says why)."""

    cache_dir: Path | None
    compiler: str | None
    flags: tuple[str, ...]
    reason: str

    @property
    def active(self) -> bool:
        return self.cache_dir is not None

    def record(self) -> dict[str, object]:
        """For summary.json."""
        return {"active": self.active, "compiler": self.compiler, "flags": list(self.flags),
                "cache_dir": str(self.cache_dir) if self.cache_dir else None, "reason": self.reason}


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tubetune" / "mlx-jit"


def _cpu_description() -> str:
    """Model name and feature flags of the first CPU (Linux), else the platform's processor string."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    wanted = ("model name", "flags", "Features", "CPU part")
    first_cpu = text.split("\n\n")[0].splitlines()
    lines = [line.strip() for line in first_cpu if line.split(":")[0].strip() in wanted]
    return "\n".join(lines) or platform.machine()


def cache_key(*, host: str, cpu: str, compiler_version: str, flags: tuple[str, ...], mlx_version: str) -> str:
    """Directory name of a kernel cache: the host name and a hash of everything the kernels depend on."""
    digest = hashlib.sha256("\0".join([cpu, compiler_version, " ".join(flags), mlx_version]).encode())
    safe_host = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in host) or "host"
    return f"{safe_host}-{digest.hexdigest()[:16]}"


def _write_wrapper(bin_dir: Path, compiler: str, flags: tuple[str, ...], log: Path) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / COMPILER
    flag_text = " ".join(shlex.quote(flag) for flag in flags)
    # The library is written under a temporary name and renamed: a process that finds it (two training
    # jobs on one host share the cache) never loads a half-written file.
    script = (
        "#!/bin/sh\n"
        f"{WRAPPER_MARK}; MLX calls it as g++.\n"
        f'echo "$*" {flag_text} >> {shlex.quote(str(log))}\n'
        "out=\n"
        "prev=\n"
        "for arg do\n"
        "  shift\n"
        '  if [ "$prev" = "-o" ]; then out=$arg; arg="$arg.$$.tmp"; fi\n'
        '  set -- "$@" "$arg"\n'
        "  prev=$arg\n"
        "done\n"
        f'{shlex.quote(compiler)} "$@" {flag_text} || exit $?\n'
        'if [ -n "$out" ]; then mv -f "$out.$$.tmp" "$out"; fi\n'
    )
    if not wrapper.is_file() or wrapper.read_text() != script:
        temporary = wrapper.with_suffix(f".{os.getpid()}")
        temporary.write_text(script)
        temporary.chmod(0o755)
        temporary.replace(wrapper)
    return wrapper


def _check_build(wrapper: Path, work: Path) -> str | None:
    """Build a one-line C++ library with the wrapper, as MLX would; an error text, or None when it works."""
    work.mkdir(parents=True, exist_ok=True)
    source = work / f"check_{os.getpid()}.cpp"
    source.write_text('extern "C" float tubetune_check(float x) { return x * 2.0f; }\n')
    library = source.with_suffix(".so")
    try:
        done = subprocess.run([str(wrapper), "-std=c++17", "-O3", "-fPIC", "-shared", str(source), "-o",
                               str(library)], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    finally:
        source.unlink(missing_ok=True)
    library.unlink(missing_ok=True)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    return None


def _is_wrapper(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return WRAPPER_MARK.encode() in handle.read(512)
    except OSError:
        return False


def real_compiler() -> str | None:
    """The first ``g++`` on ``PATH`` that is not a wrapper of :func:`prepare_jit`.

    A process started by one that called :func:`prepare_jit` (a Snakemake job started from a test, a
    second training run in one process) inherits the wrapper first on ``PATH``; wrapping it again would
    make the wrapper run itself.
    """
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        candidate = shutil.which(COMPILER, path=entry) if entry else None
        if candidate is not None and not _is_wrapper(Path(candidate)):
            return candidate
    return None


def prepare_jit(root: Path | None = None, flags: tuple[str, ...] = FLAGS) -> JitSetup:
    """Point MLX's CPU kernel builds at the wrapper and the per-host cache (see the module doc).

    Call it before the first ``mx.compile``-d function runs on the CPU in this process: MLX keeps the
    kernels it already loaded.
    """
    compiler = real_compiler()
    if compiler is None:
        return JitSetup(None, None, (), f"no {COMPILER} on PATH: MLX cannot fuse CPU kernels")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60,
                                 check=True).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        return JitSetup(None, compiler, (), f"{compiler} --version failed ({exc})")
    directory = (root or cache_root()) / cache_key(host=socket.gethostname(), cpu=_cpu_description(),
                                                   compiler_version=version, flags=flags,
                                                   mlx_version=importlib.metadata.version("mlx"))
    wrapper = _write_wrapper(directory / "bin", compiler, flags, directory / "compile.log")
    error = _check_build(wrapper, directory / "check")
    if error is not None:
        return JitSetup(None, compiler, flags, f"{COMPILER} with {' '.join(flags)} failed: {error}")
    path = os.environ.get("PATH", "")
    if not path.startswith(f"{wrapper.parent}{os.pathsep}"):
        os.environ["PATH"] = os.pathsep.join([str(wrapper.parent), path])
    os.environ["TMPDIR"] = str(directory)
    return JitSetup(directory, compiler, flags, f"{version}; kernels in {directory}")
