"""The code version of a rule: a hash of the tubetune source its script runs.

Snakemake reruns a job when the rule's script changes, not when a module that script imports changes.
``code_version(script)`` follows the script's ``tubetune`` imports transitively (read with ``ast``, the
code is not imported) and hashes the source of every module it reaches, plus the data files of the
packages among them (e.g. ``evaluate/templates/*.j2``). As a ``code=`` param of a rule it makes an edit
to any of them rerun the rule ("Params have changed since last execution").

Counted: ``import tubetune.x``, ``from tubetune.x import y`` (and ``tubetune.x.y`` when ``y`` is a
submodule), relative imports, imports inside functions and under ``if TYPE_CHECKING``. A submodule
brings in its parent packages' ``__init__`` modules, which Python runs before it. A new import is
counted without any list to update; only the modules in ``EXCLUDED`` are left out.

    python -m tubetune.codehash scripts/train.py   # the modules behind a script and its code version
"""

from __future__ import annotations

import ast
import hashlib
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

PACKAGE = "tubetune"
PACKAGE_DIR = Path(__file__).resolve().parent

# Modules whose edits never change a result: they are not hashed and their own imports are not followed,
# so that rewording a message or the cost line does not retrain a model.
EXCLUDED: frozenset[str] = frozenset(
    {
        "tubetune.errors",  # exception types and their messages
        "tubetune.jsonio",  # reading and writing JSON / JSONL files
        "tubetune.logs",  # log setup and the one-line error of a failed step
        "tubetune.llm.ledger",  # what the LLM calls cost: its own rule, llm_ledger, has the numbers
        "tubetune.llm.spend",  # the cost line of stats.md and the evaluation report
    }
)

_SKIPPED_SUFFIXES = (".pyc", ".pyo")


def module_file(module: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The source file of ``tubetune.a.b`` under ``package_dir`` (``a/b.py`` or ``a/b/__init__.py``)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py") if len(parts) > 1 else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _resolve_relative(current: str, is_package: bool, level: int, target: str | None) -> str | None:
    """The absolute name of ``from <level dots><target> import ...`` in module ``current``."""
    parts = current.split(".")
    if not is_package:
        parts = parts[:-1]  # a module's imports are relative to its package
    if level > 1:
        if level - 1 > len(parts):
            return None
        parts = parts[: len(parts) - (level - 1)]
    if not parts:
        return None
    return ".".join([*parts, target] if target else parts)


def imported_names(source: str, current: str | None = None, is_package: bool = False) -> dict[str, bool]:
    """Every ``tubetune`` module name an import statement anywhere in ``source`` may refer to.

    Name -> True when it must be a module (``import tubetune.x``, ``from tubetune.x import ...``),
    False when it may be something else: ``from tubetune.x import y`` gives ``tubetune.x.y``, which is a
    module only if ``y`` is a submodule. ``current`` (the module's own name) resolves relative imports;
    without it they are ignored.
    """
    names: dict[str, bool] = {}

    def add(name: str, certain: bool) -> None:
        names[name] = names.get(name, False) or certain

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, True)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if current is None:
                    continue
                base = _resolve_relative(current, is_package, node.level, node.module)
                if base is None:
                    continue
            elif node.module:
                base = node.module
            else:  # pragma: no cover - `from import x` is a syntax error
                continue
            add(base, True)
            for alias in node.names:
                if alias.name != "*":
                    add(f"{base}.{alias.name}", False)
    return {name: certain for name, certain in names.items() if name.split(".")[0] == PACKAGE}


def _with_parents(module: str) -> list[str]:
    """``tubetune.a.b`` -> ``tubetune``, ``tubetune.a``, ``tubetune.a.b`` (Python runs each in turn)."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def script_modules(
    script: Path | str, package_dir: Path = PACKAGE_DIR, exclude: Iterable[str] = EXCLUDED
) -> list[str]:
    """The ``tubetune`` modules ``script`` imports, directly or through each other, sorted.

    A name that is not a module (``from tubetune.x import function``) is dropped; a module that does
    not exist under ``package_dir`` raises ModuleNotFoundError, as the import would.
    """
    excluded = frozenset(exclude)
    found: set[str] = set()
    pending = list(imported_names(Path(script).read_text(encoding="utf-8")).items())
    while pending:
        name, certain = pending.pop()
        if name in found or any(part in excluded for part in _with_parents(name)):
            continue
        path = module_file(name, package_dir)
        if path is None:
            if certain:
                raise ModuleNotFoundError(f"no module {name} in {package_dir} (imported by {script})")
            continue  # `from tubetune.x import name`: a function, class or constant of tubetune.x
        found.add(name)
        pending.extend((parent, True) for parent in _with_parents(name)[:-1])
        stat = path.stat()
        pending.extend(_module_imports(path, name, stat.st_mtime_ns, stat.st_size).items())
    return sorted(found)


@cache
def _module_imports(path: Path, name: str, mtime_ns: int, size: int) -> dict[str, bool]:
    """:func:`imported_names` of one module file, parsed once per version of the file (the rules'
    scripts share most modules; ``mtime_ns`` and ``size`` tell an edited file apart)."""
    return imported_names(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")


def _package_data(package: str, package_dir: Path) -> list[Path]:
    """The non-Python files of one package (not those of its subpackages), e.g. report templates."""
    path = module_file(package, package_dir)
    assert path is not None
    folder = path.parent
    files: list[Path] = []
    subdirs = [folder]
    while subdirs:
        current = subdirs.pop()
        for entry in sorted(current.iterdir()):
            if entry.is_dir():
                if entry.name != "__pycache__" and not (entry / "__init__.py").is_file():
                    subdirs.append(entry)
            elif entry.is_file() and entry.suffix != ".py" and entry.suffix not in _SKIPPED_SUFFIXES:
                files.append(entry)
    return files


def code_files(modules: Iterable[str], package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The source files of ``modules`` and the data files of the packages among them, sorted."""
    files: set[Path] = set()
    for module in modules:
        path = module_file(module, package_dir)
        if path is None:
            raise ModuleNotFoundError(f"no module {module} in {package_dir}")
        files.add(path)
        if path.name == "__init__.py":
            files.update(_package_data(module, package_dir))
    return sorted(files, key=lambda file: file.relative_to(package_dir).as_posix())


def hash_files(files: Iterable[Path], package_dir: Path = PACKAGE_DIR) -> str:
    """Short SHA-256 (16 hex digits) over each file's path relative to ``package_dir`` and its bytes."""
    digest = hashlib.sha256()
    for file in files:
        for part in (file.relative_to(package_dir).as_posix().encode(), file.read_bytes()):
            digest.update(part)
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def code_version(
    script: Path | str, package_dir: Path = PACKAGE_DIR, exclude: Iterable[str] = EXCLUDED
) -> str:
    """The code version of a rule's script: the hash of every tubetune file behind it."""
    modules = script_modules(script, package_dir, exclude)
    return hash_files(code_files(modules, package_dir), package_dir)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m tubetune.codehash SCRIPT [SCRIPT ...]", file=sys.stderr)
        return 2
    for script in args:
        files = code_files(script_modules(script))
        print(f"{script}: {hash_files(files)}")
        for file in files:
            print(f"  {file.relative_to(PACKAGE_DIR).as_posix()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
