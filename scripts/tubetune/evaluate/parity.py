"""Rule parity: do the exports generate what the fused model generates?

For the first ``parity_prompts`` test prompts (the messages before the assistant's answer, the chat
template applied once by the fused model's tokenizer), greedy tokens of

* the fused model in MLX (``results/fused``, the reference),
* the f16 GGUF export in llama.cpp (comparison ``gguf_f16``),
* the Hugging Face export in transformers + torch (comparison ``hf_transformers``; skipped with the
  reason when either is not installed).

Every runtime gets the same prompt token ids and stops at the same end-of-sequence tokens, so only the
weights and the runtime differ. Per prompt the tokens equal before the first divergence are counted;
a comparison whose share of equal tokens is under ``parity_min_share`` is a "drop". A comparison that
cannot run (a missing file, a load error, a missing library) is "skipped" with one line naming what to
fix; the rule never fails on it, so ``all`` still finishes.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tubetune.chat import read_chat_rows
from tubetune.cores import LlamaThreads
from tubetune.errors import InputFileError
from tubetune.jsonio import write_json
from tubetune.model.base import chat_prompt_ids, equal_prefix, llama_cpp_greedy, load_mlx, mlx_greedy
from tubetune.settings import settings_from
from tubetune.train.blas import openblas_threads

logger = logging.getLogger(__name__)

COMPARISONS = ("gguf_f16", "hf_transformers")

# A runner turns every prompt's token ids into that runtime's greedy continuation.
Runner = Callable[[list[list[int]]], list[list[int]]]


@dataclass(frozen=True)
class ParitySettings:
    """Three keys of the ``evaluate:`` section (defaults and bounds: config.schema.yaml)."""

    parity_prompts: int
    parity_max_tokens: int
    parity_min_share: float


@dataclass(frozen=True)
class PromptParity:
    """One prompt of one comparison: tokens equal before the first divergence, of ``compared``."""

    index: int
    equal_prefix: int
    compared: int
    reference_text: str
    other_text: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "equal_prefix": self.equal_prefix, "compared": self.compared,
                "reference_text": self.reference_text, "other_text": self.other_text}


@dataclass(frozen=True)
class Comparison:
    """The reference vs one export: "ok", "drop" (share under min_share) or "skipped" (with the reason)."""

    status: str
    reason: str | None = None
    per_prompt: list[PromptParity] = field(default_factory=list)

    @property
    def tokens_equal(self) -> int:
        return sum(p.equal_prefix for p in self.per_prompt)

    @property
    def tokens_compared(self) -> int:
        return sum(p.compared for p in self.per_prompt)

    @property
    def share(self) -> float | None:
        return round(self.tokens_equal / self.tokens_compared, 4) if self.tokens_compared else None

    def to_json(self) -> dict[str, Any]:
        ran = self.status != "skipped"
        return {
            "status": self.status,
            "reason": self.reason,
            "tokens_equal": self.tokens_equal if ran else None,
            "tokens_compared": self.tokens_compared if ran else None,
            "share": self.share if ran else None,
            "per_prompt": [p.to_json() for p in self.per_prompt],
        }


def skipped(reason: str) -> Comparison:
    return Comparison("skipped", reason)


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def compare_continuations(
    name: str,
    reference: Sequence[list[int]],
    other: Sequence[list[int]],
    decode: Callable[[list[int]], str],
    min_share: float,
) -> Comparison:
    """Per prompt: tokens equal before the first divergence, of the longer of the two continuations;
    "drop" when the share of equal tokens over all prompts is under ``min_share``."""
    per_prompt = [
        PromptParity(index, equal_prefix(ours, theirs), max(len(ours), len(theirs)),
                     decode(ours), decode(theirs))
        for index, (ours, theirs) in enumerate(zip(reference, other, strict=True))
    ]
    result = Comparison("ok", None, per_prompt)
    share = result.share
    if share is not None and share < min_share:
        reason = (f"{name}: {result.tokens_equal} of {result.tokens_compared} greedy tokens equal before the "
                  f"first divergence (share {share:.3f} < evaluate.parity_min_share {min_share})")
        result = Comparison("drop", reason, per_prompt)
    return result


def overall(comparisons: Mapping[str, Comparison]) -> tuple[str, str | None]:
    """("ok" | "drop" | "not_run", reason): "drop" when any comparison dropped, "not_run" when none ran;
    the reason names the drops, else the skipped comparisons (None when every comparison ran and is ok)."""
    drops = [c.reason or name for name, c in comparisons.items() if c.status == "drop"]
    skips = [f"{name} skipped: {c.reason}" for name, c in comparisons.items() if c.status == "skipped"]
    if drops:
        return "drop", "; ".join(drops)
    if len(skips) == len(comparisons):
        return "not_run", "; ".join(skips) or "no comparison configured"
    return "ok", "; ".join(skips) or None


# ------------------------------------------------------------------------------------------ runtimes


def read_prompts(test: Path, n_prompts: int) -> list[list[dict[str, str]]]:
    """The first ``n_prompts`` test rows' messages before the assistant's answer."""
    rows = read_chat_rows(test, max_rows=n_prompts)
    return [[dict(m) for m in row["messages"][:-1]] for row in rows]


@dataclass(frozen=True)
class Reference:
    """The fused model's side: the prompts' token ids, its greedy continuations, its decoder and stops."""

    prompt_ids: list[list[int]]
    tokens: list[list[int]]
    decode: Callable[[list[int]], str]
    eos: set[int]


def run_reference(fused: Path, prompts: list[list[dict[str, str]]], max_tokens: int) -> Reference:
    """The chat template applied once by the fused tokenizer, and the fused model's greedy tokens (MLX)."""
    if not (fused / "config.json").is_file():  # mlx-lm would take a missing dir for a hub id
        raise InputFileError(f"{fused}: not a model dir (no config.json)")
    model, tokenizer = load_mlx(fused)
    prompt_ids = [chat_prompt_ids(tokenizer, messages)[1] for messages in prompts]
    eos = {int(t) for t in tokenizer.eos_token_ids}
    tokens = [mlx_greedy(model, ids, max_tokens, eos) for ids in tqdm(prompt_ids, desc="mlx", unit="prompt")]

    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode(ids))

    return Reference(prompt_ids, tokens, decode, eos)


def gguf_runner(gguf: Path, max_tokens: int, eos: set[int], threads: int) -> Runner:
    """Greedy tokens of a GGUF in llama.cpp, fed the reference's prompt token ids."""

    def run(prompt_ids: list[list[int]]) -> list[list[int]]:
        from llama_cpp import Llama

        n_ctx = max(len(ids) for ids in prompt_ids) + max_tokens + 16
        chooser = LlamaThreads(threads)  # threads minus the cores other processes keep busy
        start = chooser.choose()
        llm = Llama(str(gguf), n_ctx=n_ctx, n_threads=start, n_threads_batch=start, seed=0, verbose=False)
        try:
            outputs = []
            for ids in tqdm(prompt_ids, desc="llama.cpp", unit="prompt"):
                chooser.adjust(llm)
                outputs.append(llama_cpp_greedy(llm, ids, max_tokens, eos))
            return outputs
        finally:
            llm.close()

    return run


def hf_missing() -> str | None:
    """Why the HF export cannot be compared here (transformers or torch not installed), else None."""
    missing = [name for name in ("transformers", "torch") if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (f"{' and '.join(missing)} not installed: `pip install torch transformers` (the CPU wheel of "
            "torch is enough) to compare the HF export in transformers")


def hf_runner(hf_dir: Path, max_tokens: int, eos: set[int], threads: int) -> Runner:
    """Greedy tokens of the Hugging Face export in transformers (float32 on CPU), fed the same token ids."""

    def run(prompt_ids: list[list[int]]) -> list[list[int]]:
        import torch
        from transformers import AutoModelForCausalLM

        previous = torch.get_num_threads()
        torch.set_num_threads(max(1, threads))
        try:
            # the OpenBLAS of the MLX reference run at 1 thread: its idle workers spin on the cores
            # torch's threads need
            with openblas_threads(1):
                model: Any = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
                model.eval()
                return [torch_greedy(model, ids, max_tokens, eos)
                        for ids in tqdm(prompt_ids, desc="transformers", unit="prompt")]
        finally:
            torch.set_num_threads(previous)

    return run


def torch_greedy(model: Any, ids: list[int], max_tokens: int, eos: set[int]) -> list[int]:
    """Greedy continuation of ``ids`` by a transformers causal LM: argmax of the last logits, KV cache."""
    import torch

    tokens: list[int] = []
    past: Any = None
    step = torch.tensor([ids])
    with torch.no_grad():
        while len(tokens) < max_tokens:
            out = model(input_ids=step, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
            if token in eos:
                break
            step = torch.tensor([[token]])
    return tokens


def run_comparison(
    name: str, path: Path, runner: Runner, reference: Reference, min_share: float, rebuild: str
) -> Comparison:
    """One comparison; a missing file or a runtime error is a skipped comparison naming the fix."""
    if not path.exists():
        return skipped(f"{path} not found: build it with `snakemake --cores 1 {path}`")
    try:
        other = runner(reference.prompt_ids)
    except Exception as exc:  # any load or runtime error skips this comparison, not the rule
        logger.debug("%s failed", name, exc_info=True)
        return skipped(f"{path} did not run ({one_line(exc)}); rebuild it: {rebuild}")
    return compare_continuations(name, reference.tokens, other, reference.decode, min_share)


# ------------------------------------------------------------------------------------------ the rule


def parity_report(
    test: Path, fused: Path, gguf: Path, hf: Path, settings: ParitySettings, threads: int = 1
) -> dict[str, Any]:
    """parity.json's content (see the module docstring)."""
    report: dict[str, Any] = {
        "status": "not_run", "reason": None, "n_prompts": 0,
        "max_tokens": settings.parity_max_tokens, "min_share": settings.parity_min_share,
    }
    try:
        prompts = read_prompts(test, settings.parity_prompts)
        if not prompts:
            raise ValueError(f"{test} has no examples")
        reference = run_reference(fused, prompts, settings.parity_max_tokens)
    except Exception as exc:  # no reference: nothing to compare, the rule still succeeds
        logger.debug("reference failed", exc_info=True)
        reason = f"the reference (the fused model {fused} in MLX on {test}) did not run: {one_line(exc)}"
        comparisons = {name: skipped(reason) for name in COMPARISONS}
    else:
        report["n_prompts"] = len(prompts)
        comparisons = run_exports(gguf, hf, reference, settings, threads)
    report["status"], report["reason"] = overall(comparisons)
    report["comparisons"] = {name: c.to_json() for name, c in comparisons.items()}
    return report


def run_exports(
    gguf: Path, hf: Path, reference: Reference, settings: ParitySettings, threads: int
) -> dict[str, Comparison]:
    max_tokens, min_share = settings.parity_max_tokens, settings.parity_min_share
    comparisons = {
        "gguf_f16": run_comparison(
            "gguf_f16", gguf, gguf_runner(gguf, max_tokens, reference.eos, threads), reference, min_share,
            f"snakemake --cores 1 --forcerun export_gguf {gguf}",
        )
    }
    missing = hf_missing()
    comparisons["hf_transformers"] = skipped(missing) if missing else run_comparison(
        "hf_transformers", hf, hf_runner(hf, max_tokens, reference.eos, threads), reference, min_share,
        f"snakemake --cores 1 --forcerun export_hf {hf}",
    )
    return comparisons


def parity(
    test: str | Path,
    fused: str | Path,
    gguf: str | Path,
    hf: str | Path,
    output: str | Path,
    settings: Mapping[str, Any],
    threads: int = 1,
) -> dict[str, Any]:
    """Rule parity: the fused model vs its f16 GGUF (llama.cpp) and HF export (transformers) ->
    ``output`` (parity.json). ``settings``: the three parity keys of the ``evaluate:`` section."""
    values = settings_from(ParitySettings, settings, "evaluate")
    report = parity_report(Path(test), Path(fused), Path(gguf), Path(hf), values, threads)
    write_json(output, report)
    for name, comparison in report["comparisons"].items():
        if comparison["status"] == "skipped":
            logger.warning("parity %s skipped: %s", name, comparison["reason"])
        else:
            logger.info("parity %s %s: %d of %d greedy tokens equal before the first divergence (share %s)",
                        name, comparison["status"], comparison["tokens_equal"], comparison["tokens_compared"],
                        comparison["share"])
    if report["status"] == "drop":
        logger.warning("parity drop: %s", report["reason"])
    return report
