"""tubetune.codehash: the code version of a rule follows its script's tubetune imports."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from tubetune.codehash import (
    EXCLUDED,
    code_files,
    code_version,
    imported_names,
    main,
    module_file,
    script_modules,
)
from workflow import REPO

PACKAGE_DIR = REPO / "scripts" / "tubetune"


def write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A small tubetune package: every kind of import, a package with a template, excluded modules."""
    root = tmp_path / "tubetune"
    write(root / "__init__.py", '"""The package."""\n')
    write(root / "py.typed")
    write(root / "errors.py", "class ConfigError(Exception):\n    pass\n")
    write(root / "logs.py", "from tubetune.hidden import thing\n")
    write(root / "hidden.py", "thing = 1\n")
    write(root / "unused.py", "x = 1\n")
    write(root / "direct.py", "import tubetune.plain\nfrom tubetune.errors import ConfigError\n")
    write(root / "plain.py", "def f():\n    from tubetune import lazy  # in a function\n    return lazy\n")
    write(root / "lazy.py", "VALUE = 2\n")
    write(root / "pkg" / "__init__.py", "from .sub import compute\nfrom . import sibling\n")
    write(root / "pkg" / "sub.py", "from ..deep.inner import CONST\n\ndef compute():\n    return CONST\n")
    write(root / "pkg" / "sibling.py", "")
    write(root / "pkg" / "templates" / "report.html.j2", "<p>{{ x }}</p>\n")
    write(root / "pkg" / "__pycache__" / "sub.cpython-311.pyc", "compiled")
    write(root / "pkg" / "inner" / "__init__.py", "")  # a subpackage: its data is its own
    write(root / "pkg" / "inner" / "data.txt", "not pkg's")
    write(root / "deep" / "__init__.py", "")
    write(root / "deep" / "inner.py", "CONST = 3\n")
    write(
        tmp_path / "scripts" / "step.py",
        """\
        from tubetune.direct import something
        from tubetune.pkg import sub
        from tubetune.logs import run_step
        """,
    )
    return root


def modules(package: Path, script: str = "step.py") -> list[str]:
    return script_modules(package.parent / "scripts" / script, package)


def test_imports_are_followed_transitively(package: Path) -> None:
    assert modules(package) == [
        "tubetune",  # the parent package of every module: Python runs its __init__ first
        "tubetune.deep",
        "tubetune.deep.inner",  # `from ..deep.inner import CONST` in pkg/sub.py
        "tubetune.direct",
        "tubetune.lazy",  # imported inside a function of plain.py
        "tubetune.pkg",  # the package of pkg.sub: its __init__ runs
        "tubetune.pkg.sibling",  # `from . import sibling` in pkg/__init__.py
        "tubetune.pkg.sub",  # `from tubetune.pkg import sub`: a submodule
        "tubetune.plain",
    ]


def test_excluded_modules_and_their_imports_are_left_out(package: Path) -> None:
    found = modules(package)
    assert "tubetune.errors" not in found and "tubetune.logs" not in found
    assert "tubetune.hidden" not in found  # only logs imports it
    assert "tubetune.unused" not in found
    everything = script_modules(package.parent / "scripts" / "step.py", package, exclude=())
    assert {"tubetune.errors", "tubetune.logs", "tubetune.hidden"} <= set(everything)


def test_files_are_the_sources_and_the_package_data(package: Path) -> None:
    names = [
        f.relative_to(package).as_posix()
        for f in code_files(script_modules(package.parent / "scripts" / "step.py", package), package)
    ]
    assert names == [
        "__init__.py",
        "deep/__init__.py",
        "deep/inner.py",
        "direct.py",
        "lazy.py",
        "pkg/__init__.py",
        "pkg/sibling.py",
        "pkg/sub.py",
        "pkg/templates/report.html.j2",
        "plain.py",
        "py.typed",
    ]


@pytest.mark.parametrize(
    ("path", "changes"),
    [
        ("deep/inner.py", True),  # two imports away
        ("lazy.py", True),  # imported inside a function
        ("pkg/__init__.py", True),
        ("pkg/templates/report.html.j2", True),  # package data
        ("errors.py", False),  # excluded
        ("logs.py", False),
        ("hidden.py", False),  # reached only through an excluded module
        ("unused.py", False),
        ("pkg/inner/data.txt", False),  # data of a subpackage nobody imports
        ("pkg/__pycache__/sub.cpython-311.pyc", False),
    ],
)
def test_the_hash_changes_with_exactly_the_files_behind_the_script(
    package: Path, path: str, changes: bool
) -> None:
    script = package.parent / "scripts" / "step.py"
    before = code_version(script, package)
    assert re.fullmatch(r"[0-9a-f]{16}", before)
    with (package / path).open("a", encoding="utf-8") as handle:
        handle.write("\n# an edit\n")
    assert (code_version(script, package) != before) is changes


def test_a_new_import_counts_without_a_list_to_update(package: Path) -> None:
    script = package.parent / "scripts" / "step.py"
    before = code_version(script, package)
    write(package / "plain.py", "import tubetune.unused\n")
    assert "tubetune.unused" in modules(package)
    assert "tubetune.lazy" not in modules(package)
    assert code_version(script, package) != before


def test_an_import_of_a_missing_module_is_an_error(package: Path) -> None:
    write(package.parent / "scripts" / "bad.py", "import tubetune.nowhere\n")
    with pytest.raises(ModuleNotFoundError, match=r"tubetune\.nowhere"):
        modules(package, "bad.py")
    write(package.parent / "scripts" / "bad.py", "from tubetune.pkg.missing import thing\n")
    with pytest.raises(ModuleNotFoundError, match=r"tubetune\.pkg\.missing"):
        modules(package, "bad.py")
    # a name that is not a module is not an error
    write(package.parent / "scripts" / "ok.py", "from tubetune.direct import not_a_module\n")
    assert "tubetune.direct" in modules(package, "ok.py")


def test_imported_names_resolves_relative_imports() -> None:
    source = "from . import a\nfrom .b import c\nfrom .. import d\nfrom ..e.f import g\nimport os\n"
    assert imported_names(source, "tubetune.x.y") == {
        "tubetune.x": True,
        "tubetune.x.a": False,
        "tubetune.x.b": True,
        "tubetune.x.b.c": False,
        "tubetune": True,
        "tubetune.d": False,
        "tubetune.e.f": True,
        "tubetune.e.f.g": False,
    }
    # in a package's __init__, "." is the package itself
    assert set(imported_names("from .m import n\n", "tubetune.x", is_package=True)) == {
        "tubetune.x.m",
        "tubetune.x.m.n",
    }
    assert imported_names("from . import a\n") == {}  # a script has no package


# ------------------------------------------------------------------------------- the real package


def rule_blocks() -> dict[str, str]:
    """Rule name -> its text, for every rule and checkpoint in rules/*.smk."""
    blocks: dict[str, str] = {}
    for path in sorted((REPO / "rules").glob("*.smk")):
        parts = re.split(r"^(?:rule|checkpoint) (\w+):\n", path.read_text(encoding="utf-8"), flags=re.M)
        blocks.update(zip(parts[1::2], parts[2::2], strict=True))
    return blocks


HEAVY_RULES = {
    "build_dataset", "base_model", "train_run", "test_loss", "compare", "fuse", "export_hf", "export_gguf",
    "modelfile", "answer_test", "evaluate", "parity", "judge",
}
LLM_RULES = {"questions", "answers", "batch_questions", "batch_answers"}


def test_each_heavy_rule_hashes_its_own_script_and_llm_rules_have_no_code_param() -> None:
    blocks = rule_blocks()
    with_code = {}
    for rule, block in blocks.items():
        script = re.search(r'script:\s*"\.\./(scripts/\w+\.py)"', block)
        code = re.search(r'code=code_version\("([^"]+)"\)', block)
        if code:
            assert script and code.group(1) == script.group(1), rule
            with_code[rule] = code.group(1)
        assert "code=" not in block or code, rule
    assert set(with_code) == HEAVY_RULES
    assert not set(with_code) & LLM_RULES and set(blocks) >= LLM_RULES


def test_the_real_scripts_reach_their_modules() -> None:
    scripts = REPO / "scripts"
    train = script_modules(scripts / "train.py", PACKAGE_DIR)
    assert {"tubetune.train.runner", "tubetune.train.callback", "tubetune.train.loss"} <= set(train)
    dataset = script_modules(scripts / "build_dataset.py", PACKAGE_DIR)
    assert "tubetune.dataset.build" in dataset and "tubetune.generate.chunk" in dataset
    evaluate = code_files(script_modules(scripts / "evaluate.py", PACKAGE_DIR), PACKAGE_DIR)
    assert PACKAGE_DIR / "evaluate" / "templates" / "report.html.j2" in evaluate
    for script in sorted(scripts.glob("*.py")):
        assert not set(script_modules(script, PACKAGE_DIR)) & EXCLUDED, script.name


def test_every_excluded_module_exists() -> None:
    """A renamed module would otherwise drop out of the exclusion set unnoticed."""
    for module in EXCLUDED:
        assert module_file(module, PACKAGE_DIR) is not None, module


def test_command_line_lists_the_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(REPO / "scripts" / "fuse.py")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"fuse\.py: [0-9a-f]{16}\n", out)
    assert "  train/fuse.py\n" in out
    assert main([]) == 2
