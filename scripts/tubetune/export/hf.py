"""The Hugging Face export: the fused model as a transformers-loadable dir with a model card.

Weights are written as safetensors in ``export.hf_dtype`` (float16 by default; MLX-quantized weights
are dequantized first), next to config.json, generation_config.json, the tokenizer files and the chat
template. README.md is a model card with the dataset statistics (results/dataset/stats.json) and the
training settings and results (results/train/<run>/summary.json of the winning run).
"""

from __future__ import annotations

from tubetune.mlxrt import BLAS, mx

import logging
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tubetune.errors import ConfigError, InputFileError
from tubetune.jsonio import atomic_write_text, read_json, write_json
from tubetune.model.gguf_convert import MX_DTYPES

logger = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)
MAX_SHARD_BYTES = 5 << 30


def iter_float_weights(
    model_dir: Path, quantization: Mapping[str, Any] | None
) -> Iterator[tuple[str, mx.array]]:
    """(name, float array) for every tensor in the dir's safetensors; MLX quantized triplets dequantized.

    ``quantization`` is config.json's "quantization" (group_size, bits, per-layer overrides).
    """
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise InputFileError(f"{model_dir}: no *.safetensors weights")
    for path in files:
        arrays = mx.load(str(path))
        if not isinstance(arrays, dict):
            raise InputFileError(f"{path}: not a safetensors file")
        for name in sorted(arrays):
            if name.endswith((".scales", ".biases")) or "rotary_emb.inv_freq" in name:
                continue
            weight = arrays[name]
            stem = name[: -len(".weight")] if name.endswith(".weight") else name
            scales = arrays.get(f"{stem}.scales")
            if scales is not None:
                settings: Mapping[str, Any] = quantization or {}
                layer = settings.get(stem)
                params: Mapping[str, Any] = layer if isinstance(layer, Mapping) else settings
                if f"{stem}.biases" not in arrays:
                    raise InputFileError(f"{path}: {stem} is quantized without biases (unsupported mode)")
                weight = mx.dequantize(
                    weight,
                    scales.astype(mx.float32),
                    arrays[f"{stem}.biases"].astype(mx.float32),
                    group_size=int(params.get("group_size", 64)),
                    bits=int(params.get("bits", 4)),
                )
            yield name, weight


def read_model_json(model_dir: Path, name: str, needed_for: str) -> dict[str, Any]:
    """The JSON object in ``model_dir / name``; a missing file is an error that says ``needed_for``."""
    path = model_dir / name
    if not path.is_file():
        raise InputFileError(f"{model_dir}: no {name} ({needed_for})")
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputFileError(f"{path}: expected a JSON object")
    return data


def read_model_config(model_dir: Path) -> dict[str, Any]:
    return read_model_json(model_dir, "config.json", "not a model dir")


def chat_template_of(model_dir: Path) -> str | None:
    """The chat template from tokenizer_config.json or chat_template.jinja, if any."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tokenizer_config = model_dir / "tokenizer_config.json"
    if tokenizer_config.is_file():
        template = read_json(tokenizer_config).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def save_weights(weights: dict[str, mx.array], out_dir: Path) -> list[str]:
    """Write safetensors shards (under 5 GB each, plus an index when there are several)."""
    shards: list[dict[str, mx.array]] = [{}]
    size = 0
    for name, value in weights.items():
        if shards[-1] and size + value.nbytes > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = value
        size += value.nbytes
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map: dict[str, str] = {}
    for shard, filename in zip(shards, names, strict=True):
        mx.save_safetensors(str(out_dir / filename), shard, metadata={"format": "pt"})
        weight_map.update({name: filename for name in shard})
    if len(shards) > 1:
        total = sum(v.nbytes for v in weights.values())
        write_json(out_dir / "model.safetensors.index.json",
                   {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
    return names


# ------------------------------------------------------------------------------------------ model card


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if value is None:
        return "-"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[tuple[str, Any]], header: tuple[str, str] = ("setting", "value")) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {key} | {_fmt(value)} |" for key, value in rows]
    return lines


TRAINING_RESULTS = (
    "best_iteration", "best_val_loss", "initial_val_loss", "last_val_loss", "final_train_loss",
    "iterations_run", "early_stopped", "trained_tokens", "tokens_per_second_mean", "trainable_parameters",
    "total_parameters", "train_seconds", "device", "blas",
)
MODEL_KEYS = (
    "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "vocab_size", "max_position_embeddings", "rope_theta", "tie_word_embeddings",
)
USAGE = [
    "## Use",
    "",
    "```python",
    "from transformers import AutoModelForCausalLM, AutoTokenizer",
    "",
    'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
    'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
    'messages = [{"role": "user", "content": "Your question"}]',
    "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\",",
    "                                       return_dict=True)",
    "output = model.generate(**inputs, max_new_tokens=200)",
    "print(tokenizer.decode(output[0][inputs['input_ids'].shape[1]:], skip_special_tokens=True))",
    "```",
    "",
]
LIMITATIONS = [
    "## Limitations",
    "",
    "A small model fine-tuned on a few hundred generated examples: it imitates the channel's style "
    "and repeats facts from its videos, and it can be confidently wrong. Check important answers. "
    "The license of the base model applies.",
    "",
]


def _front_matter(base: str) -> list[str]:
    """YAML front matter; ``base_model`` only for a Hugging Face id."""
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation", "language: [en]",
             "tags: [tubetune, lora, mlx, fine-tuned]"]
    if "/" in base and not base.startswith(("bundled:", "/", ".")):
        front.append(f"base_model: {base}")
    return [*front, "---"]


def _introduction(channel_name: str, model_type: str, base: str, dtype: str) -> list[str]:
    return [
        "",
        f"# {channel_name} - fine-tuned {model_type} model",
        "",
        f"A LoRA fine-tune of `{base}` that answers questions the way the YouTube channel "
        f"**{channel_name}** does. The training data are question/answer pairs written from the channel's "
        "transcripts (each answer grounded in its transcript chunk), made with "
        "tubetune and reviewed before training. The adapter is fused into the "
        f"weights; this folder holds them as {dtype} safetensors.",
        "",
    ]


def _prompting(has_chat_template: bool, system_prompt: Any) -> list[str]:
    """Notes after the usage example: a missing chat template, the system prompt of the training data."""
    lines: list[str] = []
    if not has_chat_template:
        lines += ["Note: the tokenizer has no chat template; format prompts as the base model expects.", ""]
    if system_prompt:
        lines += ["Every training example used this system prompt (use it for the best answers):", "",
                  f"> {_fmt(system_prompt)}", ""]
    return lines


def _dataset_section(stats: Mapping[str, Any]) -> list[str]:
    """Split sizes, length distributions and drop counts from the dataset's stats.json."""
    lines = ["## Dataset", ""]
    examples = stats.get("examples") or {}
    videos = stats.get("videos") or {}
    split_rows = [(name, examples[name]) for name in ("train", "valid", "test", "total") if name in examples]
    if split_rows:
        lines += _table([(name, f"{count} examples" + (
            f", {len(videos[name])} videos" if isinstance(videos.get(name), list) else ""
        )) for name, count in split_rows], header=("split", "size"))
        lines.append("")
    lengths = stats.get("lengths_chars") or {}
    if lengths:
        lines += ["Lengths in characters:", ""]
        lines += _table(list(lengths.items()), header=("field", "distribution"))
        lines.append("")
    tokens = stats.get("lengths_tokens_estimated") or {}
    if tokens:
        lines += _table(list(tokens.items()), header=("estimated tokens", "distribution"))
        lines.append("")
    if "dropped_total" in stats:
        lines += [f"Dropped while building the dataset: {stats['dropped_total']} "
                  f"({_fmt(stats.get('dropped') or {})}).", ""]
    return lines


def _training_section(summary: Mapping[str, Any], run: str | None) -> list[str]:
    """The winning run, its results and its settings from the run's summary.json."""
    lines = ["## Training", ""]
    if run:
        lines += [f"Training run: `{run}`, the winner of the sweep (lowest validation loss; the test split "
                  "never picks it). All runs are ranked in `results/sweep/ranking.md` of the tubetune "
                  "workflow.", ""]
    results = [(key, summary.get(key)) for key in TRAINING_RESULTS if key in summary]
    if results:
        lines += _table(results, header=("result", "value"))
        lines.append("")
    settings = summary.get("settings") or {}
    if isinstance(settings, Mapping) and settings:
        lines += ["Settings:", ""]
        lines += _table(sorted(settings.items()))
        lines.append("")
    return lines


def _model_section(config: Mapping[str, Any]) -> list[str]:
    return ["## Model", "", *_table([(key, config.get(key)) for key in MODEL_KEYS if key in config]), ""]


def model_card(
    stats: Mapping[str, Any],
    summary: Mapping[str, Any],
    config: Mapping[str, Any],
    base: str,
    channel: str | None,
    dtype: str,
    has_chat_template: bool,
    run: str | None = None,
) -> str:
    """README.md for the Hugging Face export (YAML front matter + Markdown); ``run``: the training run
    whose adapter is fused (the winner of the sweep)."""
    channel_name = str(stats.get("channel") or channel or "a YouTube channel")
    sections = [
        _front_matter(base),
        _introduction(channel_name, str(config.get("model_type", "language")), base, dtype),
        USAGE,
        _prompting(has_chat_template, stats.get("system_prompt")),
        _dataset_section(stats),
        _training_section(summary, run),
        _model_section(config),
        LIMITATIONS,
    ]
    return "\n".join(line for section in sections for line in section)


# -------------------------------------------------------------------------------------------- export


@dataclass(frozen=True)
class HFExportResult:
    out_dir: Path
    dtype: str
    files: list[str]
    size_bytes: int
    seconds: float


def write_hf_weights(source: Path, target: Path, config: dict[str, Any], dtype: str) -> None:
    """The weights of ``source`` as ``dtype`` safetensors in ``target``, and its config.json without the
    MLX quantization (``config`` is updated in place)."""
    quantization = config.pop("quantization", None)
    config.pop("quantization_config", None)
    config["torch_dtype"] = dtype
    tied = bool(config.get("tie_word_embeddings", False))
    cast = MX_DTYPES[dtype]
    weights = {
        name: weight.astype(cast)
        for name, weight in iter_float_weights(source, quantization)
        if not (tied and name == "lm_head.weight")
    }
    if quantization:
        logger.info("dequantized MLX-quantized weights (%s)", quantization)
    save_weights(weights, target)
    write_json(target / "config.json", config)


def copy_generation_and_tokenizer(source: Path, target: Path, config: Mapping[str, Any]) -> None:
    """generation_config.json (copied, else made from config.json's token ids) and the tokenizer files."""
    generation = source / "generation_config.json"
    if generation.is_file():
        shutil.copy2(generation, target / "generation_config.json")
    else:
        write_json(target / "generation_config.json", {
            key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id") if key in config
        })
    copied = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    for name in copied:
        shutil.copy2(source / name, target / name)
    if "tokenizer.json" not in copied and "tokenizer.model" not in copied:
        raise InputFileError(f"{source}: no tokenizer.json or tokenizer.model to export")


def export_hf(
    model: str | Path,
    stats: str | Path,
    summary: str | Path,
    hf: str | Path,
    *,
    dtype: str,
    base: str,
    channel: str | None,
    run: str | None,
) -> HFExportResult:
    """Rule export_hf: the model dir ``model`` as a Hugging Face model dir ``hf`` (replaced) with a model
    card from the dataset's ``stats`` and the training run's ``summary``; ``run``: the winning run."""
    from tubetune.model.base import hub_id_of

    logger.info("BLAS: %s", BLAS)
    if run:
        logger.info("exporting the fused winner of the sweep: run %s", run)
    if dtype not in MX_DTYPES:
        raise ConfigError(f"export.hf_dtype: '{dtype}' is not one of {', '.join(MX_DTYPES)}")
    start = time.perf_counter()
    source = Path(model)
    target = Path(hf)
    config = read_model_config(source)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    write_hf_weights(source, target, config, dtype)
    copy_generation_and_tokenizer(source, target, config)
    template = chat_template_of(source)
    if template is None:
        logger.warning("%s has no chat template", source)
    card = model_card(read_json(stats), read_json(summary), config, hub_id_of(base) or base, channel, dtype,
                      template is not None, run)
    atomic_write_text(target / "README.md", card)
    size = sum(p.stat().st_size for p in target.iterdir() if p.is_file())
    result = HFExportResult(target, dtype, sorted(p.name for p in target.iterdir()), size,
                            time.perf_counter() - start)
    logger.info("wrote %s (%s, %.1f MB, %d files) in %.1f s", target, dtype, size / 1e6, len(result.files),
                result.seconds)
    return result
