"""The one pinned install: requirements.txt, its conda mirror and the platform markers agree."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _requirements(path: Path) -> list[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def test_conda_env_mirrors_requirements() -> None:
    env = yaml.safe_load((REPO / "envs" / "tubetune.yaml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert pip == _requirements(REPO / "requirements.txt")


def test_every_requirement_is_pinned_and_mlx_has_platform_markers() -> None:
    files = ("requirements.txt", "requirements-dev.txt", "requirements-cuda.txt")
    for line in [line for name in files for line in _requirements(REPO / name)]:
        assert "==" in line, line
    reqs = _requirements(REPO / "requirements.txt")
    assert 'mlx==0.32.4; sys_platform == "darwin"' in reqs
    assert 'mlx[cpu]==0.32.4; sys_platform == "linux"' in reqs
    # the optional GPU extra (pip install -e '.[cuda]'): the same mlx, CUDA on Linux only
    assert _requirements(REPO / "requirements-cuda.txt") == ['mlx[cuda]==0.32.4; sys_platform == "linux"']
    assert 'optional-dependencies.cuda = { file = ["requirements-cuda.txt"] }' in (
        REPO / "pyproject.toml"
    ).read_text()


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make run" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_make_test_runs_the_fast_tier_then_the_slow_tier_each_test_once() -> None:
    """`make test` runs pytest twice, with complementary markers: every test once, fast ones first."""
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\ntest: ", 1)[1].split("\n\n", 1)[0]
    pytest_lines = [line.strip() for line in recipe.splitlines() if "pytest" in line]
    assert pytest_lines == ['$(BIN)/pytest -m "not slow"', "$(BIN)/pytest -m slow"]
    assert "lint" in recipe.splitlines()[0]
