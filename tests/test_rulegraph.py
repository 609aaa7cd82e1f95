"""Commands that need no --cores (--unlock, a dry-run, the rule graph) and the rule graph in the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from workflow import REPO, copy_workflow, snakemake

RULEGRAPH = ("--rulegraph", "mermaid-js", "all")


def mermaid_graph(text: str) -> tuple[set[str], set[tuple[str, str]]]:
    """(rule names, edges as (from, to) rule names) of ``snakemake --rulegraph mermaid-js`` output."""
    names = dict(re.findall(r"^\s*(id\d+)\[(\w+)\]\s*$", text, flags=re.M))
    edges = {(names[a], names[b]) for a, b in re.findall(r"^\s*(id\d+) --> (id\d+)\s*$", text, flags=re.M)}
    return set(names.values()), edges


def readme_graph() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"```mermaid\n(.*?)```", readme, flags=re.S)
    assert match, "no mermaid block in README.md"
    return match.group(1)


def test_unlock_dry_run_and_rule_graph_need_no_cores(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    unlock = snakemake(workdir, "--unlock", cores=None)
    assert unlock.returncode == 0, unlock.output[-3000:]
    dry = snakemake(workdir, "-n", "all", cores=None)
    assert dry.returncode == 0, dry.output[-3000:]
    graph = snakemake(workdir, *RULEGRAPH, cores=None)
    assert graph.returncode == 0, graph.output[-3000:]
    names, edges = mermaid_graph(graph.stdout)
    assert {"all", "list_videos", "train_run", "compare", "fuse", "answer_test", "evaluate"} <= names
    assert ("answer_test", "evaluate") in edges
    assert ("compare", "fuse") in edges  # fuse waits for the comparison that picks the winner
    dot = snakemake(workdir, "--rulegraph", "dot", "all", cores=None)
    assert dot.returncode == 0 and dot.stdout.startswith("digraph"), dot.output[-3000:]


@pytest.mark.slow  # runs the list_videos job
def test_the_readme_rule_graph_is_the_command_output(tmp_path: Path) -> None:
    """The picture in the README is what the README's command draws once the videos are listed
    (before that, the per-shard steps are unknown to Snakemake)."""
    workdir = copy_workflow(tmp_path / "wf")
    listing = snakemake(workdir, "list_videos", cores=1)
    assert listing.returncode == 0, listing.output[-3000:]
    graph = snakemake(workdir, *RULEGRAPH, cores=None)
    assert graph.returncode == 0, graph.output[-3000:]
    names, edges = mermaid_graph(graph.stdout)
    assert {"transcripts", "questions", "answers"} <= names
    assert mermaid_graph(readme_graph()) == (names, edges), (
        "README.md's rule graph is out of date: replace its mermaid block with the output of "
        "`snakemake --cores 1 list_videos && snakemake --rulegraph mermaid-js all`"
    )
