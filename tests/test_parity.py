"""Export parity: greedy tokens of the fused model (MLX) vs its f16 GGUF (llama.cpp) and HF export
(transformers); a corrupted GGUF tensor is a drop, a missing or broken export a skipped comparison."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from tubetune.config import section_config
from tubetune.errors import ConfigError
from tubetune.evaluate import parity as parity_module
from tubetune.evaluate.parity import (
    Comparison,
    ParitySettings,
    compare_continuations,
    hf_missing,
    hf_runner,
    overall,
    parity,
    read_prompts,
    skipped,
)
from tubetune.export.gguf import export_gguf
from tubetune.export.hf import export_hf
from tubetune.settings import settings_from
from workflow import copy_workflow, dry_run_jobs, edit_config, snakemake

SETTINGS = {"parity_prompts": 3, "parity_max_tokens": 16, "parity_min_share": 0.5}
COMPARISON_KEYS = {"status", "reason", "tokens_equal", "tokens_compared", "share", "per_prompt"}
PROMPT_KEYS = {"index", "equal_prefix", "compared", "reference_text", "other_text"}


def decode(tokens: list[int]) -> str:
    return " ".join(str(t) for t in tokens)


# ------------------------------------------------------------------------------------ counting


def test_tokens_are_counted_up_to_the_first_divergence() -> None:
    reference = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    other = [[1, 2, 9, 4], [5, 6, 7, 8], [9, 10, 11, 12]]  # the third stopped early on one side
    result = compare_continuations("gguf_f16", reference, other, decode, min_share=0.5)
    assert [(p.equal_prefix, p.compared) for p in result.per_prompt] == [(2, 4), (4, 4), (2, 4)]
    assert (result.status, result.reason, result.tokens_equal, result.tokens_compared) == ("ok", None, 8, 12)
    assert result.share == pytest.approx(0.6667)
    first = result.to_json()["per_prompt"][0]
    assert set(first) == PROMPT_KEYS
    assert (first["reference_text"], first["other_text"]) == ("1 2 3 4", "1 2 9 4")


def test_a_share_under_min_share_is_a_drop() -> None:
    result = compare_continuations("gguf_f16", [[1, 2, 3, 4]], [[1, 7, 7, 7]], decode, min_share=0.5)
    assert result.status == "drop" and result.share == 0.25
    assert result.reason is not None
    assert "gguf_f16: 1 of 4 greedy tokens" in result.reason and "parity_min_share 0.5" in result.reason
    assert compare_continuations("x", [[1, 2, 3, 4]], [[1, 2, 7, 7]], decode, min_share=0.5).status == "ok"


def test_overall_status_and_reason() -> None:
    ok = compare_continuations("gguf_f16", [[1, 2]], [[1, 2]], decode, min_share=0.5)
    drop = compare_continuations("hf_transformers", [[1, 2]], [[3, 4]], decode, min_share=0.5)
    assert overall({"gguf_f16": ok, "hf_transformers": ok}) == ("ok", None)
    status, reason = overall({"gguf_f16": ok, "hf_transformers": skipped("torch not installed")})
    assert status == "ok" and reason == "hf_transformers skipped: torch not installed"
    status, reason = overall({"gguf_f16": ok, "hf_transformers": drop})
    assert status == "drop" and reason is not None and reason.startswith("hf_transformers: 0 of 2")
    status, reason = overall({"gguf_f16": skipped("a"), "hf_transformers": skipped("b")})
    assert status == "not_run" and reason == "gguf_f16 skipped: a; hf_transformers skipped: b"


def test_a_skipped_comparison_has_no_counts() -> None:
    written = Comparison("skipped", "results/export/hf not found").to_json()
    assert set(written) == COMPARISON_KEYS
    assert written["tokens_equal"] is None and written["share"] is None and written["per_prompt"] == []


def test_parity_settings_are_the_schema_defaults() -> None:
    section = section_config("evaluate")
    values = settings_from(ParitySettings, {key: section[key] for key in SETTINGS}, "evaluate")
    assert values == ParitySettings(parity_prompts=4, parity_max_tokens=24, parity_min_share=0.5)
    with pytest.raises(ConfigError, match="parity_min_share"):
        section_config("evaluate", {"parity_min_share": 1.5})
    with pytest.raises(ConfigError, match="parity_prompts"):
        section_config("evaluate", {"parity_prompts": 0})


def test_prompts_are_the_messages_before_the_answer(chat_dataset_dir: Path) -> None:
    prompts = read_prompts(chat_dataset_dir / "test.jsonl", 3)
    assert len(prompts) == 3
    assert [m["role"] for m in prompts[0]] == ["system", "user"]


def test_no_reference_is_not_run_and_no_crash(chat_dataset_dir: Path, tmp_path: Path) -> None:
    report = parity(chat_dataset_dir / "test.jsonl", tmp_path / "no-fused", tmp_path / "x.gguf",
                    tmp_path / "hf", tmp_path / "parity.json", SETTINGS)
    assert report["status"] == "not_run"
    assert "no-fused" in report["reason"] and "not a model dir" in report["reason"]
    assert {c["status"] for c in report["comparisons"].values()} == {"skipped"}
    assert json.loads((tmp_path / "parity.json").read_text()) == report


def test_the_rule_builds_the_f16_gguf_when_gguf_types_lacks_it(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    edit_config(workdir, export={"gguf_types": ["q8_0"]})
    dry = snakemake(workdir, "-n", "results/eval/parity.json", cores=None)
    assert dry.returncode == 0, dry.output[-3000:]
    assert dry_run_jobs(dry)["parity"] == 1
    assert "output: results/export/gguf/tuned-f16.gguf" in dry.output
    assert "results/export/gguf/tuned-f16.gguf, results/export/hf" in dry.output  # the rule's inputs


# ------------------------------------------------------------------------------ real runtimes


@pytest.fixture(scope="module")
def f16_gguf(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base model dir as an f16 GGUF, written by the project's exporter."""
    path = tmp_path_factory.mktemp("parity_gguf") / "tuned-f16.gguf"
    export_gguf(base_model_dir, path, variant="tuned", qtype="f16", tokenizer_pre=None,
                base="bundled:smollm2-135m-instruct")
    return path


@pytest.fixture(scope="module")
def hf_dir(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base model dir as a float16 Hugging Face export, written by the project's exporter."""
    folder = tmp_path_factory.mktemp("parity_hf")
    (folder / "stats.json").write_text(json.dumps({"channel": "Crumb Lab", "examples": {}, "videos": {}}))
    (folder / "summary.json").write_text(json.dumps({"settings": {}}))
    export_hf(base_model_dir, folder / "stats.json", folder / "summary.json", folder / "hf", dtype="float16",
              base="HuggingFaceTB/SmolLM2-135M-Instruct", channel="@crumblab", run=None)
    return folder / "hf"


def corrupt_token_embeddings(source: Path, target: Path) -> None:
    """A copy of ``source`` with the rows of token_embd shuffled (the tied output head with them)."""
    shutil.copyfile(source, target)
    reader = gguf.GGUFReader(str(target), "r+")
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    data = tensor.data  # a view of the file's memory map
    data[...] = data[np.random.default_rng(0).permutation(data.shape[0])]
    reader.data.flush()


def check_ran(comparison: dict[str, Any], n_prompts: int) -> None:
    assert set(comparison) == COMPARISON_KEYS
    assert len(comparison["per_prompt"]) == n_prompts
    assert comparison["tokens_compared"] == sum(p["compared"] for p in comparison["per_prompt"])
    assert comparison["tokens_equal"] == sum(p["equal_prefix"] for p in comparison["per_prompt"])
    for prompt in comparison["per_prompt"]:
        assert set(prompt) == PROMPT_KEYS
        assert prompt["reference_text"] and prompt["other_text"]


@pytest.mark.slow
def test_faithful_exports_are_ok_and_a_corrupted_gguf_tensor_drops(
    base_model_dir: Path, f16_gguf: Path, hf_dir: Path, chat_dataset_dir: Path, tmp_path: Path
) -> None:
    test = chat_dataset_dir / "test.jsonl"
    report = parity(test, base_model_dir, f16_gguf, hf_dir, tmp_path / "parity.json", SETTINGS)
    assert json.loads((tmp_path / "parity.json").read_text()) == report
    assert (report["n_prompts"], report["max_tokens"], report["min_share"]) == (3, 16, 0.5)
    gguf_f16 = report["comparisons"]["gguf_f16"]
    check_ran(gguf_f16, 3)
    assert gguf_f16["status"] == "ok" and gguf_f16["share"] >= 0.75, gguf_f16
    hf = report["comparisons"]["hf_transformers"]
    if hf_missing() is None:
        check_ran(hf, 3)
        assert hf["status"] == "ok" and hf["share"] >= 0.75, hf
        assert report["status"] == "ok" and report["reason"] is None
    else:
        assert hf["status"] == "skipped" and "not installed" in hf["reason"]

    corrupted = tmp_path / "corrupted-f16.gguf"
    corrupt_token_embeddings(f16_gguf, corrupted)
    report = parity(test, base_model_dir, corrupted, tmp_path / "no-hf", tmp_path / "drop.json", SETTINGS)
    gguf_f16 = report["comparisons"]["gguf_f16"]
    check_ran(gguf_f16, 3)
    assert gguf_f16["status"] == "drop" and gguf_f16["share"] < 0.5, gguf_f16
    assert report["status"] == "drop" and report["reason"].startswith("gguf_f16: ")


@pytest.mark.slow
def test_a_missing_or_broken_export_is_a_skipped_comparison(
    base_model_dir: Path, chat_dataset_dir: Path, tmp_path: Path
) -> None:
    broken_hf = tmp_path / "hf"
    broken_hf.mkdir()
    (broken_hf / "config.json").write_text("{not json")
    report = parity(chat_dataset_dir / "test.jsonl", base_model_dir, tmp_path / "tuned-f16.gguf", broken_hf,
                    tmp_path / "parity.json", {**SETTINGS, "parity_prompts": 1, "parity_max_tokens": 2})
    gguf_f16 = report["comparisons"]["gguf_f16"]
    assert gguf_f16["status"] == "skipped"
    assert gguf_f16["reason"] == (f"{tmp_path / 'tuned-f16.gguf'} not found: build it with "
                                  f"`snakemake --cores 1 {tmp_path / 'tuned-f16.gguf'}`")
    hf = report["comparisons"]["hf_transformers"]
    assert hf["status"] == "skipped"
    if hf_missing() is None:
        assert f"{broken_hf} did not run (" in hf["reason"] and "--forcerun export_hf" in hf["reason"]
        assert "\n" not in hf["reason"]
    assert report["status"] == "not_run" and report["n_prompts"] == 1


def test_the_transformers_run_has_openblas_at_one_thread(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The HF comparison runs torch in the process that ran the MLX reference: OpenBLAS is at 1 thread
    meanwhile (its idle workers spin on the cores torch's threads need), and as before after it."""
    from tubetune.mlxrt import BLAS

    import ctypes

    import transformers

    if not BLAS.startswith("OpenBLAS"):
        pytest.skip(f"no OpenBLAS here ({BLAS})")
    get_threads = ctypes.CDLL(None).openblas_get_num_threads
    ctypes.CDLL(None).openblas_set_num_threads(2)
    seen: list[int] = []

    class Model:
        def eval(self) -> None:
            seen.append(int(get_threads()))

    def greedy(model: Model, ids: list[int], max_tokens: int, eos: set[int]) -> list[int]:
        seen.append(int(get_threads()))
        return [1]

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Model())
    monkeypatch.setattr(parity_module, "torch_greedy", greedy)
    assert hf_runner(tmp_path, 4, set(), threads=2)([[1, 2], [3]]) == [[1], [1]]
    assert seen == [1, 1, 1] and int(get_threads()) == 2
