"""Resolve ``model.base``: the bundled GGUF, a local GGUF file or model dir, or a Hugging Face id."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tubetune.bundled import BUNDLED_DISTRIBUTIONS, BUNDLED_GGUFS, bundled_gguf, bundled_name
from tubetune.errors import ConfigError, TubetuneError
from tubetune.jsonio import read_json, write_json
from tubetune.settings import settings_from

logger = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

SourceKind = Literal["gguf", "dir", "hub"]


@dataclass(frozen=True)
class BaseSource:
    """Where the base model comes from.

    kind: ``gguf`` (a GGUF file, bundled or local), ``dir`` (a local model dir with config.json and
    safetensors) or ``hub`` (a Hugging Face id, downloaded by the base_model rule).
    """

    kind: SourceKind
    location: str
    bundled: bool = False
    label: str = ""

    @property
    def path(self) -> Path:
        if self.kind == "hub":
            raise ValueError("a Hugging Face id has no local path")
        return Path(self.location)

    def input_files(self) -> list[str]:
        """Files that are Snakemake inputs of the base_model rule (local sources only)."""
        if self.kind == "hub" or self.bundled:
            return []
        if self.kind == "gguf":
            return [self.location]
        return sorted(
            str(p) for p in self.path.rglob("*") if p.is_file() and not p.name.startswith(".")
        )

    def describe(self) -> dict[str, str | int]:
        """A JSON-able description used as a rule param (a change reruns the base_model rule)."""
        info: dict[str, str | int] = {"kind": self.kind, "location": self.location, "label": self.label}
        if self.bundled:
            # Not the absolute path: moving the virtualenv must not rerun the pipeline.
            package, filename = BUNDLED_GGUFS[bundled_name(self.label) or ""]
            info["location"] = f"{package}/{filename}"
            info["size"] = self.path.stat().st_size
            dist = BUNDLED_DISTRIBUTIONS.get(package)
            if dist is not None:
                info["version"] = importlib.metadata.version(dist)
        return info


def resolve_base(base: str) -> BaseSource:
    """Turn the ``model.base`` setting into a :class:`BaseSource`; raise ConfigError naming the fix."""
    text = base.strip()
    name = bundled_name(text)
    if name is not None:
        return BaseSource("gguf", str(bundled_gguf(name)), bundled=True, label=text)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ConfigError(f"model.base: {text} is a file but not a .gguf; give a GGUF or a model dir")
        return BaseSource("gguf", str(path), label=text)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.base: the directory {text} has no config.json (not a model dir)")
        if not any(path.glob("*.safetensors")):
            raise ConfigError(f"model.base: the directory {text} has no *.safetensors weights")
        return BaseSource("dir", str(path), label=text)
    if HUB_ID.match(text) and not text.startswith((".", "/", "~")):
        return BaseSource("hub", text, label=text)
    raise ConfigError(
        f"model.base: '{text}' is not bundled:<name>, an existing .gguf file or model dir, "
        "or a Hugging Face id like HuggingFaceTB/SmolLM2-135M-Instruct"
    )


# ------------------------------------------------------------------------------------ preparing the dir
# Heavy imports (mlx, llama_cpp, huggingface_hub) happen inside the functions: rules/model.smk imports
# this module while Snakemake parses the workflow.

HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.txt", "*.model"]
BUNDLED_HF_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def hub_id_of(base: str) -> str | None:
    """The Hugging Face id a ``model.base`` value stands for, if known (for model cards)."""
    text = base.strip()
    name = bundled_name(text)
    if name is not None:
        return BUNDLED_HF_IDS.get(name)
    if HUB_ID.match(text) and not Path(text).exists():
        return text
    return None


def _link_or_copy(source: Path, target: Path) -> None:
    import os
    import shutil

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def cast_safetensors(model_dir: Path, dtype: str) -> int:
    """Cast every floating-point tensor of the dir's safetensors to ``dtype`` in place; return the count."""
    from tubetune.mlxrt import mx

    from tubetune.model.gguf_convert import MX_DTYPES

    target = MX_DTYPES[dtype]
    count = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        arrays = mx.load(str(path))
        if not isinstance(arrays, dict):
            raise ConfigError(f"{path}: not a safetensors file")
        cast = {
            name: value.astype(target) if mx.issubdtype(value.dtype, mx.floating) else value
            for name, value in arrays.items()
        }
        count += len(cast)
        path.unlink()  # the file may be a hard link to the source: never write through it
        mx.save_safetensors(str(path), cast, metadata={"format": "mlx"})
    return count


def _set_config_dtype(model_dir: Path, dtype: str) -> None:
    path = model_dir / "config.json"
    config = read_json(path)
    config["torch_dtype"] = dtype
    path.unlink()
    write_json(path, config)


def download_hub_model(repo_id: str, revision: str | None, out_dir: Path) -> Path:
    """Download a Hugging Face model (config, safetensors, tokenizer) into ``out_dir``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    logger.info("downloading %s (revision %s) from the Hugging Face hub into %s; files: %s", repo_id,
                revision or "default", out_dir, ", ".join(HUB_PATTERNS))
    try:
        snapshot_download(repo_id, revision=revision, local_dir=out_dir, allow_patterns=HUB_PATTERNS)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"model.base: cannot download {repo_id} from Hugging Face ({first_line}); check the id, the "
            "network, and for gated models (Llama) accept the license and run `hf auth login`"
        ) from exc
    if not any(out_dir.glob("*.safetensors")):
        raise ConfigError(f"model.base: {repo_id} has no safetensors weights (only those are supported)")
    cache = out_dir / ".cache"
    if cache.is_dir():
        import shutil

        shutil.rmtree(cache)
    return out_dir


def prepare_base_model(
    source: BaseSource, out_dir: str | Path, *, dtype: str, keep_quantized: bool, revision: str | None
) -> dict[str, Any]:
    """Write the base model dir (GGUF converted, local dir linked, hub model downloaded); return a summary."""
    import shutil
    import time

    start = time.perf_counter()
    target = Path(out_dir)
    if target.exists():
        shutil.rmtree(target)
    summary: dict[str, Any] = {"source": source.describe(), "dtype": dtype}
    if source.kind == "gguf":
        summary.update(_convert_gguf_base(source, target, dtype, keep_quantized))
    else:
        if keep_quantized:
            logger.warning("model.keep_quantized applies to a GGUF base only; ignored for %s", source.label)
        summary["dtype"] = _copy_float_base(source, target, dtype, revision)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    logger.info("base model ready in %s (%.1f s)", target, summary["seconds"])
    return summary


def _convert_gguf_base(source: BaseSource, target: Path, dtype: str, keep_quantized: bool) -> dict[str, Any]:
    """A GGUF base converted into ``target``; the summary keys it adds (dtype ``auto`` is float32)."""
    from tubetune.model.gguf_convert import convert_gguf

    resolved = "float32" if dtype == "auto" else dtype
    result = convert_gguf(source.path, target, dtype=resolved, keep_quantized=keep_quantized)
    return {"dtype": resolved, "parameters": result.parameters, "tensor_types": result.source_types,
            "tokenizer_pre": result.tokenizer_pre, "quantized": result.quantized}


def _copy_float_base(source: BaseSource, target: Path, dtype: str, revision: str | None) -> str:
    """A local model dir linked, or a hub model downloaded, into ``target``, cast to ``dtype``; ``auto``:
    float32 on a CPU device (float16/bfloat16 matmuls have no BLAS path there), the stored dtype on
    Metal and CUDA. Returns the dtype written ("stored" when left as stored)."""
    if source.kind == "dir":
        logger.info("linking the model dir %s into %s", source.path, target)
        for path in sorted(source.path.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                _link_or_copy(path, target / path.relative_to(source.path))
    else:
        download_hub_model(source.location, revision, target)
    resolved = auto_dtype(target) if dtype == "auto" else dtype
    if resolved == "stored":
        return resolved
    count = cast_safetensors(target, resolved)
    _set_config_dtype(target, resolved)
    logger.info("cast %d tensors to %s", count, resolved)
    return resolved


def auto_dtype(model_dir: Path) -> str:
    """``model.dtype: auto`` for a model dir: "float32" on a CPU device when any floating-point weight is
    stored narrower (logged with the weights' size before and after), else "stored"."""
    from tubetune.mlxrt import mx

    if mx.default_device().type != mx.cpu:
        return "stored"
    stored: set[str] = set()
    size = 0
    as_float32 = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        arrays = mx.load(str(path))
        if not isinstance(arrays, dict):
            raise ConfigError(f"{path}: not a safetensors file")
        for value in arrays.values():
            size += value.nbytes
            if mx.issubdtype(value.dtype, mx.floating):
                stored.add(str(value.dtype).removeprefix("mlx.core."))
                as_float32 += value.size * 4
            else:
                as_float32 += value.nbytes
    if stored <= {"float32"}:
        return "stored"
    logger.info(
        "model.dtype auto: float32 on a CPU device (stored %s; float16/bfloat16 matmuls have no BLAS path "
        "on CPU): weights %.2f GB -> %.2f GB", ", ".join(sorted(stored)), size / 1e9, as_float32 / 1e9,
    )
    return "float32"


# -------------------------------------------------------------------------------------- greedy tokens

# Greedy decoding per runtime, shared by the base check below (the converted model vs llama.cpp on the
# original GGUF) and the export parity (tubetune.evaluate.parity: the fused model vs its exports). Every
# runtime gets the same prompt token ids, so only the weights and the runtime differ; a continuation ends
# after max_tokens tokens or with an end-of-sequence token (kept).


def load_mlx(model_dir: str | Path) -> tuple[Any, Any]:
    """An mlx-lm model dir loaded: the model and its tokenizer (mlx-lm's wrapper, with eos_token_ids)."""
    from tubetune.mlxrt import BLAS

    from mlx_lm.utils import load

    logger.debug("loading %s with mlx-lm (BLAS: %s)", model_dir, BLAS)
    loaded = load(str(model_dir))
    return loaded[0], loaded[1]


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[int]]:
    """The chat template applied to ``messages`` (ending with the generation prompt): text and token ids."""
    text = str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return text, [int(t) for t in tokenizer.encode(text, add_special_tokens=False)]


def mlx_greedy(model: Any, ids: list[int], max_tokens: int, eos: set[int]) -> list[int]:
    """Greedy continuation of ``ids`` by an mlx-lm model."""
    from tubetune.mlxrt import mx

    from mlx_lm.generate import generate_step

    tokens: list[int] = []
    for (token, _), _index in zip(generate_step(mx.array(ids), model, max_tokens=max_tokens),
                                  range(max_tokens), strict=False):
        tokens.append(int(token))
        if int(token) in eos:
            break
    return tokens


def llama_cpp_greedy(llm: Any, ids: list[int], max_tokens: int, eos: set[int]) -> list[int]:
    """Greedy continuation of ``ids`` by a llama-cpp-python ``Llama`` (no sampling, no penalty)."""
    tokens: list[int] = []
    if max_tokens < 1:
        return tokens
    for next_id in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        tokens.append(int(next_id))
        if len(tokens) >= max_tokens or int(next_id) in eos:
            break
    return tokens


def equal_prefix(first: list[int], second: list[int]) -> int:
    """How many tokens two continuations share before the first divergence."""
    count = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        count += 1
    return count


# --------------------------------------------------------------------------------------- parity check


# A first divergence where the converted model itself rates llama.cpp's token within this many nats of
# its own choice is a near-tie (probabilities within a factor of 1.65): llama.cpp multiplies Q4_1 weights
# with 8-bit quantized activations, which moves logits by about this much.
NEAR_TIE_NATS = 0.5


@dataclass(frozen=True)
class PromptCheck:
    """One check prompt: its tokens in both tokenizers, and both greedy continuations.

    ``divergence_gap``: at the first differing token, the converted model's log-probability of its own
    token minus that of llama.cpp's token (None when the continuations agree).
    """

    prompt: str
    prompt_tokens: int
    tokenizer_match: bool
    converted: list[int]
    llama_cpp: list[int]
    divergence_gap: float | None = None

    @property
    def near_tie(self) -> bool:
        """The continuations agree, or first differ where both tokens were almost equally likely."""
        return self.match or (self.divergence_gap is not None and self.divergence_gap <= NEAR_TIE_NATS)

    @property
    def matching_prefix(self) -> int:
        return equal_prefix(self.converted, self.llama_cpp)

    @property
    def match(self) -> bool:
        return self.converted == self.llama_cpp

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "prompt_tokens": self.prompt_tokens,
            "tokenizer_match": self.tokenizer_match,
            "match": self.match,
            "matching_prefix": self.matching_prefix,
            "converted_tokens": self.converted,
            "llama_cpp_tokens": self.llama_cpp,
            "divergence_gap": self.divergence_gap,
        }


def greedy_parity(
    gguf_path: str | Path, model_dir: str | Path, prompts: list[str], n_tokens: int, n_threads: int = 1
) -> list[PromptCheck]:
    """Greedy tokens of the converted model (MLX) vs llama.cpp on the original GGUF, per chat prompt.

    Each prompt is a user message with the chat template applied (by the converted tokenizer); the
    prompt's tokens are also compared with llama.cpp's own tokenization of the same text. llama.cpp runs
    on one thread: its worker threads spin-wait, and with any other load on a 2-core machine two threads
    decoded 2-6 tok/s against 65-125 tok/s on one.
    """
    from llama_cpp import Llama

    model, tokenizer = load_mlx(model_dir)
    llm = Llama(str(gguf_path), n_ctx=1024, n_threads=n_threads, verbose=False, seed=0)
    eos = {int(llm.token_eos()), *(int(t) for t in tokenizer.eos_token_ids)}
    checks: list[PromptCheck] = []
    for prompt in prompts:
        text, ids = chat_prompt_ids(tokenizer, [{"role": "user", "content": prompt}])
        reference_ids = list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
        converted = mlx_greedy(model, ids, n_tokens, eos)
        reference = llama_cpp_greedy(llm, ids, n_tokens, eos)
        gap = _divergence_gap(model, ids, converted, reference)
        check = PromptCheck(prompt, len(ids), ids == reference_ids, converted, reference, gap)
        logger.info("check %r: tokenizer %s, first %d greedy tokens %s (matching prefix %d)", prompt,
                    "matches" if check.tokenizer_match else "DIFFERS", n_tokens,
                    "match" if check.match else "differ", check.matching_prefix)
        checks.append(check)
    llm.close()
    return checks


def _divergence_gap(model: Any, ids: list[int], converted: list[int], reference: list[int]) -> float | None:
    """The converted model's log-probability margin of its token over llama.cpp's at the first difference."""
    import mlx.core as mx

    at = next((i for i, (a, b) in enumerate(zip(converted, reference, strict=False)) if a != b), None)
    if at is None:
        return None
    logits = model(mx.array([ids + converted[:at]]))[0, -1].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits)
    return round(float(logprobs[converted[at]].item() - logprobs[reference[at]].item()), 4)


def judge_parity(checks: list[PromptCheck]) -> tuple[str, list[str]]:
    """("ok" | "warn" | "fail", reasons).

    fail: a tokenization differs from llama.cpp's (the tokenizer conversion is deterministic, so any
    difference is a bug that would train on wrong tokens), or the first greedy token differs on every
    prompt (the weights are garbled). warn: a greedy continuation diverges later where the converted
    model did not see a near-tie (:data:`NEAR_TIE_NATS`) - llama.cpp multiplies Q4_1 weights with 8-bit
    quantized activations, so near-ties flip and are no sign of a bug; larger gaps deserve a look.
    """
    reasons: list[str] = []
    status = "ok"
    for check in checks:
        if not check.tokenizer_match:
            reasons.append(f"tokenization of {check.prompt!r} differs from llama.cpp")
            status = "fail"
    if checks and all(check.matching_prefix == 0 for check in checks):
        reasons.append("the first greedy token differs from llama.cpp on every prompt")
        status = "fail"
    if status != "fail":
        for check in checks:
            if not check.near_tie:
                gap = "" if check.divergence_gap is None else f" (gap {check.divergence_gap:.2f} nats)"
                reasons.append(f"{check.prompt!r}: greedy tokens diverge after {check.matching_prefix}{gap}")
                status = "warn"
    return status, reasons


# ------------------------------------------------------------------------------------ rule base_model


@dataclass(frozen=True)
class BaseModelSettings:
    """The ``model:`` section of config.yaml (defaults and bounds: config.schema.yaml)."""

    base: str
    revision: str | None
    dtype: str
    keep_quantized: bool
    check_prompts: tuple[str, ...]
    check_tokens: int


def parity_report(gguf_path: Path, model_dir: str | Path, prompts: tuple[str, ...], n_tokens: int
                  ) -> dict[str, Any]:
    """status, reasons and per-prompt tokens of the converted model vs llama.cpp on the original GGUF."""
    checks = greedy_parity(gguf_path, model_dir, list(prompts), n_tokens)
    status, reasons = judge_parity(checks)
    return {"status": status, "reasons": reasons, "tokens_compared": n_tokens,
            "prompts": [check.to_json() for check in checks]}


def base_model(settings: Mapping[str, Any], model: str | Path, check: str | Path) -> dict[str, Any]:
    """Rule base_model: the ``model:`` section -> the model dir ``model`` and the parity check ``check``.

    A GGUF base is compared with llama.cpp (greedy tokens of ``check_prompts``); a failed check raises
    after ``check`` is written.
    """
    from tubetune.mlxrt import BLAS

    logger.info("BLAS: %s", BLAS)
    values = settings_from(BaseModelSettings, settings, "model")
    source = resolve_base(values.base)
    summary = prepare_base_model(source, model, dtype=values.dtype, keep_quantized=values.keep_quantized,
                                 revision=values.revision)
    report: dict[str, Any] = {"base": summary}
    if source.kind == "gguf":
        report.update(parity_report(source.path, model, values.check_prompts, values.check_tokens))
    else:
        report.update(status="skipped", reasons=["the base is not a GGUF: nothing to compare with llama.cpp"])
    write_json(check, report)
    for reason in report["reasons"]:
        (logger.error if report["status"] == "fail" else logger.warning)("base check: %s", reason)
    if report["status"] == "fail":
        first = report["reasons"][0]
        raise TubetuneError(
            f"the converted base model does not match llama.cpp on the original GGUF ({first}); see {check}"
        )
    if source.kind == "gguf":
        prompts = report["prompts"]
        logger.info("base check %s: %d/%d prompts give the same first %d greedy tokens as llama.cpp",
                    report["status"], sum(p["match"] for p in prompts), len(prompts), values.check_tokens)
    return report
