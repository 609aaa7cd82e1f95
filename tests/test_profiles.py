"""Cluster readiness without a cluster: every rule's resources, the profiles' global limits, and a dry-run
of the Kubernetes profile against S3-compatible storage (a local stand-in, no network)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fake_s3 import fake_s3
from workflow import REPO, copy_workflow, dry_run_jobs, edit_config, snakemake

CLUSTER_PROFILES = ("slurm", "kubernetes")
TARGET_RULES = {"all", "dataset", "train"}  # the Snakefile's target rules: inputs only, nothing runs
SOURCE_RULES = ("list_videos", "transcripts")  # the rules that talk to YouTube for a youtube source

# Parses the workflow with the Snakemake API (no job, no DAG) and prints, per rule, whether it is a
# local rule and the value of each resource it declares.
RULE_RESOURCES = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, ResourceSettings

workdir = Path(sys.argv[1])
with SnakemakeApi(OutputSettings()) as api:
    workflow = api.workflow(
        resource_settings=ResourceSettings(cores=2), snakefile=workdir / "Snakefile", workdir=workdir
    )._workflow
    rules = {}
    for rule in workflow.rules:
        resources = {}
        for name, resource in rule.resources.items():
            try:
                resources[name] = resource.value
            except ValueError:  # a function of the job (tmpdir)
                continue
        rules[rule.name] = {"local": rule.name in workflow._localrules, "resources": resources}
print("RULES=" + json.dumps(rules))
"""


def _limits(profile: str) -> dict[str, str]:
    """The global resource limits (``resources:``) of a profile, as name -> value."""
    settings = yaml.safe_load((REPO / "profiles" / profile / "config.yaml").read_text(encoding="utf-8"))
    items = settings.get("resources") or []
    if isinstance(items, dict):
        return {str(name): str(value) for name, value in items.items()}
    return dict(item.replace(" ", "").split("=", 1) for item in items)


@pytest.mark.parametrize("profile", CLUSTER_PROFILES)
def test_a_cluster_profile_keeps_every_limit_of_the_default_profile(profile: str) -> None:
    """A profile replaces whole top-level keys: a cluster profile without the default profile's
    ``resources`` would drop the YouTube and LLM API limits."""
    default = _limits("default")
    assert default == {"youtube": "1", "llm_requests": "16"}
    limits = _limits(profile)
    for name, value in default.items():
        assert limits.get(name) == value, f"profiles/{profile}: {name}={limits.get(name)}, default {value}"


def _smk_rule_blocks() -> dict[str, str]:
    """Rule name -> the text of its block, for every rule and checkpoint in rules/*.smk."""
    blocks: dict[str, str] = {}
    for path in sorted((REPO / "rules").glob("*.smk")):
        parts = re.split(r"^(?:rule|checkpoint) (\w+):\n", path.read_text(encoding="utf-8"), flags=re.M)
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            blocks[name] = body.split("\n\n\n", 1)[0]
    return blocks


@pytest.fixture(scope="module")
def rule_resources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    return _rule_resources(copy_workflow(tmp_path_factory.mktemp("rules") / "wf"))


def _rule_resources(workdir: Path) -> dict[str, dict[str, object]]:
    proc = subprocess.run(
        [sys.executable, "-c", RULE_RESOURCES, str(workdir)],
        cwd=workdir, capture_output=True, text=True, timeout=300, check=False,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RULES=")), None)
    assert line is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    rules: dict[str, dict[str, object]] = json.loads(line[len("RULES=") :])
    return rules


def test_every_rule_declares_threads_memory_and_runtime(rule_resources: dict[str, dict[str, object]]) -> None:
    blocks = _smk_rule_blocks()
    assert set(blocks) == set(rule_resources) - TARGET_RULES
    for name, body in blocks.items():
        assert re.search(r"^    threads: ", body, flags=re.M), f"rule {name}: no threads"
        resources = rule_resources[name]["resources"]
        assert isinstance(resources, dict)
        assert isinstance(resources.get("mem_mb"), int) and resources["mem_mb"] > 0, (name, resources)
        assert isinstance(resources.get("runtime"), int) and resources["runtime"] > 0, (name, resources)
        assert "gpu" not in resources, f"rule {name}: a GPU with resources.*.gpu 0"
    # the heavy rules take every core the run gives; the API and YouTube limits stay on their rules
    for name in ("train_run", "test_loss", "base_model", "fuse", "answer_test", "parity"):
        assert rule_resources[name]["resources"]["_cores"] == 1024, name  # type: ignore[index]
    for name in SOURCE_RULES:  # local files (the default source): no YouTube limit
        assert rule_resources[name]["resources"]["youtube"] == 0, name  # type: ignore[index]
    for name in ("questions", "answers", "judge"):
        assert rule_resources[name]["resources"]["llm_requests"] == 8, name  # type: ignore[index]


def test_the_jobs_of_a_youtube_source_hold_the_youtube_limit(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    edit_config(workdir, source={"type": "youtube"})
    rules = _rule_resources(workdir)
    for name in SOURCE_RULES:
        assert rules[name]["resources"]["youtube"] == 1, name  # type: ignore[index]
    assert all(rule["resources"].get("youtube", 0) == 0  # type: ignore[attr-defined]
               for name, rule in rules.items() if name not in SOURCE_RULES)


def test_cheap_aggregations_are_local_rules(rule_resources: dict[str, dict[str, object]]) -> None:
    local = {name for name, rule in rule_resources.items() if rule["local"]}
    assert local == TARGET_RULES | {
        "llm_ledger", "estimate", "review_index", "compare", "manifest", "modelfile", "evaluate",
    }


def test_config_resources_reach_the_rules(tmp_path: Path) -> None:
    """resources.train in config.yaml sets the training jobs' memory, wall time and GPUs (dry-run); the
    other classes keep theirs; a bad value is one config error line."""
    workdir = copy_workflow(tmp_path / "wf")
    edit_config(workdir, resources={"train": {"mem_mb": 12345, "runtime": 99, "gpu": 1, "gpu_model": "a100"}})
    run = snakemake(workdir, "-n", "train")
    assert run.returncode == 0, run.output[-3000:]

    def resources(rule: str) -> str:
        block = run.output.split(f"rule {rule}:", 1)[1].split("\n\n", 1)[0]
        return re.search(r"resources: (.*)", block).group(1)  # type: ignore[union-attr]

    train_run = set(resources("train_run").split(", "))
    assert {"runtime=99", "mem_mb=12345", "gpu=1", "gpu_model=a100"} <= train_run
    assert {"runtime=60", "mem_mb=4000"} <= set(resources("base_model").split(", "))
    assert "gpu" not in resources("base_model")
    edit_config(workdir, resources={"train": {"mem_mb": 0}})
    bad = snakemake(workdir, "-n", "train")
    assert bad.returncode != 0
    assert "config error: resources.train.mem_mb: 0 is less than the minimum of 1" in bad.output


def test_the_kubernetes_profile_plans_the_dataset_against_s3(tmp_path: Path) -> None:
    """`snakemake -n` with profiles/kubernetes: the Kubernetes executor and every input and output in an
    S3 bucket (a local S3 stand-in serving the workflow's folder as the bucket)."""
    workdir = copy_workflow(tmp_path / "wf")
    with fake_s3(tmp_path, bucket="tubetune") as s3:
        run = snakemake(
            workdir, "-n", "dataset",
            "--workflow-profile", "profiles/kubernetes",
            "--default-storage-prefix", "s3://tubetune/wf",
            "--storage-s3-endpoint-url", s3.endpoint,
            env={
                "SNAKEMAKE_STORAGE_S3_ACCESS_KEY": "test",
                "SNAKEMAKE_STORAGE_S3_SECRET_KEY": "test",
                "AWS_EC2_METADATA_DISABLED": "true",
            },
            cores=None,
        )
    assert run.returncode == 0, run.output[-4000:]
    assert "Using workflow specific profile profiles/kubernetes" in run.output
    jobs = dry_run_jobs(run)
    assert jobs == {"list_videos": 1, "review_index": 1, "build_dataset": 1, "llm_ledger": 1, "dataset": 1}
    # inputs read from the bucket, outputs written to it
    assert "s3://tubetune/wf/data/sample/channel.json" in run.output
    assert "s3://tubetune/wf/results/videos/selected.json" in run.output
