"""A Llama-family model dir (config.json, *.safetensors, tokenizer.json) -> a GGUF for llama.cpp / Ollama.

Written with the ``gguf`` package (GGUFWriter, gguf.quants, gguf.SpecialVocab), streaming one tensor at
a time. Supported: ``model_type: llama`` with a byte-level BPE tokenizer (SmolLM2, Llama 3.x).
Tensor types follow llama.cpp: norms (1-D) stay F32; ``f16`` writes every matrix as F16; ``q8_0``
every matrix as Q8_0; ``q4_0`` the layer matrices as Q4_0 but token_embd / output as Q8_0 (the type
llama-quantize gives the output matrix when its rows are not a multiple of 256). A matrix whose rows
cannot be cut into 32-element blocks falls back to F16.
"""

from __future__ import annotations

from tubetune.mlxrt import BLAS, mx

import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from tqdm import tqdm

from tubetune.errors import ConfigError, InputFileError
from tubetune.export.hf import iter_float_weights, read_model_config, read_model_json
from tubetune.model.gguf_convert import (
    LLAMA3_PATTERN,
    SUPPORTED_PRE,
    LlamaShape,
    hf_to_gguf_name,
    permute_rotary,
)

logger = logging.getLogger(__name__)

QTYPES: dict[str, gguf.GGMLQuantizationType] = {
    "f16": gguf.GGMLQuantizationType.F16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
}
FILE_TYPES: dict[str, gguf.LlamaFileType] = {
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}
STORAGE_DTYPES: dict[gguf.GGMLQuantizationType, np.dtype[Any]] = {
    gguf.GGMLQuantizationType.F32: np.dtype(np.float32),
    gguf.GGMLQuantizationType.F16: np.dtype(np.float16),
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.")

NDArray = np.ndarray[Any, Any]


# ------------------------------------------------------------------------------------------ model dir


@dataclass(frozen=True)
class LlamaDirConfig(LlamaShape):
    """The parts of a Hugging Face Llama config.json a GGUF needs (the shape the GGUF import reads,
    plus the MLX quantization of the weights, if any)."""

    quantization: dict[str, Any] | None = None

    @classmethod
    def from_dir(cls, model_dir: Path) -> LlamaDirConfig:
        config = read_model_config(model_dir)
        model_type = config.get("model_type")
        if model_type != "llama":
            raise InputFileError(
                f"{model_dir}/config.json: model_type is '{model_type}'; the GGUF export supports "
                "Llama-family models (model_type llama: SmolLM2, Llama 3.x)"
            )
        rope = config.get("rope_parameters") or {}
        scaling = config.get("rope_scaling")
        if scaling is None and rope.get("rope_type", "default") != "default":
            scaling = rope
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0),
            context_length=int(config.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            rope_scaling=scaling,
            quantization=config.get("quantization"),
        )


def llama3_rope_factors(config: LlamaDirConfig) -> NDArray:
    """Per-frequency divisors of Llama 3.1+ rope scaling (llama.cpp's rope_freqs tensor)."""
    scaling = config.rope_scaling or {}
    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_context = float(scaling.get("original_max_position_embeddings", 8192))
    dim = config.head_dim
    freqs = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    wavelen = 2 * math.pi / freqs
    smooth = (old_context / wavelen - low) / (high - low)
    factors = np.where(
        wavelen < old_context / high,
        1.0,
        np.where(wavelen > old_context / low, factor, 1 / ((1 - smooth) / factor + smooth)),
    )
    return factors.astype(np.float32)


def iter_weights(model_dir: Path, config: LlamaDirConfig) -> Iterator[tuple[str, mx.array]]:
    """(Hugging Face name, float array) for every weight in the dir's safetensors, dequantized if needed."""
    return iter_float_weights(model_dir, config.quantization)


# ------------------------------------------------------------------------------------------ tokenizer


def detect_tokenizer_pre(tokenizer_json: dict[str, Any]) -> str:
    """The llama.cpp ``tokenizer.ggml.pre`` name that matches a tokenizer.json's pre-tokenizer."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    types = [step.get("type") for step in steps]
    for step in steps:
        if step.get("type") == "Split":
            pattern = (step.get("pattern") or {}).get("Regex", "")
            if pattern == LLAMA3_PATTERN or r"\p{N}{1,3}" in pattern:
                return "llama-bpe"
    if types == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex"):
        return "smollm"
    if types == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    raise ConfigError(
        f"cannot tell which llama.cpp pre-tokenizer matches this tokenizer.json (steps: {types}); "
        f"set export.gguf_tokenizer_pre (one of {', '.join(SUPPORTED_PRE)})"
    )


def _looks_special(token: str) -> bool:
    return (token.startswith("<|") and token.endswith("|>")) or (
        token.startswith("<") and token.endswith(">") and len(token) > 2 and " " not in token
    )


@dataclass(frozen=True)
class GGUFVocab:
    tokens: list[str]
    token_types: list[int]
    pre: str


def gguf_vocab(model_dir: Path, vocab_size: int, tokenizer_pre: str | None) -> GGUFVocab:
    """Tokens (by id, padded to vocab_size) and llama.cpp token types from tokenizer.json."""
    path = model_dir / "tokenizer.json"
    data = read_model_json(model_dir, path.name, "a fast BPE tokenizer is needed for a GGUF")
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise InputFileError(f"{path}: tokenizer model is {model.get('type')}, the GGUF export needs BPE")
    by_id: dict[int, str] = {int(i): tok for tok, i in model["vocab"].items()}
    added: dict[int, bool] = {}
    for entry in data.get("added_tokens") or []:
        by_id[int(entry["id"])] = entry["content"]
        added[int(entry["id"])] = bool(entry.get("special"))
    size = max(vocab_size, max(by_id) + 1)
    tokens: list[str] = []
    types: list[int] = []
    for index in range(size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(int(gguf.TokenType.UNUSED))
        elif index in added:
            tokens.append(token)
            control = added[index] or _looks_special(token)
            types.append(int(gguf.TokenType.CONTROL if control else gguf.TokenType.USER_DEFINED))
        else:
            tokens.append(token)
            types.append(int(gguf.TokenType.NORMAL))
    pre = tokenizer_pre or detect_tokenizer_pre(data)
    if pre not in SUPPORTED_PRE:
        logger.warning("tokenizer.ggml.pre '%s' is untested (tested: %s)", pre, ", ".join(SUPPORTED_PRE))
    return GGUFVocab(tokens, types, pre)


# -------------------------------------------------------------------------------------------- tensors


def tensor_type(gguf_name: str, shape: tuple[int, ...], qtype: str) -> gguf.GGMLQuantizationType:
    """The GGML type of one tensor in a ``qtype`` GGUF (see the module docstring)."""
    if len(shape) == 1 or gguf_name == "rope_freqs.weight":
        return gguf.GGMLQuantizationType.F32
    wanted = QTYPES[qtype]
    if qtype == "q4_0" and gguf_name in ("token_embd.weight", "output.weight"):
        wanted = gguf.GGMLQuantizationType.Q8_0
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    if shape[-1] % block != 0:
        return gguf.GGMLQuantizationType.F16
    return wanted


def encode_tensor(data: NDArray, ggml_type: gguf.GGMLQuantizationType) -> NDArray:
    """float32 array -> the bytes (uint8) or float array GGUFWriter stores for ``ggml_type``."""
    if ggml_type == gguf.GGMLQuantizationType.F32:
        return data.astype(np.float32)
    if ggml_type == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    quantized: NDArray = gguf.quants.quantize(data.astype(np.float32), ggml_type)
    return quantized


@dataclass
class PlannedTensor:
    gguf_name: str
    shape: tuple[int, ...]
    ggml_type: gguf.GGMLQuantizationType
    load: Callable[[], NDArray]


def plan_tensors(model_dir: Path, config: LlamaDirConfig, qtype: str) -> list[PlannedTensor]:
    """Every GGUF tensor with its name, shape, type and a loader (called once, while writing)."""
    planned: list[PlannedTensor] = []
    heads = {"attn_q": config.num_heads, "attn_k": config.num_kv_heads}
    for hf_name, weight in iter_weights(model_dir, config):
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        gguf_name = hf_to_gguf_name(hf_name)
        part = gguf_name.rsplit(".", 2)[-2]
        n_head = heads.get(part)

        def load(weight: mx.array = weight, n_head: int | None = n_head) -> NDArray:
            array = np.asarray(weight.astype(mx.float32))
            return permute_rotary(array, n_head) if n_head is not None else array

        shape = tuple(int(d) for d in weight.shape)
        planned.append(PlannedTensor(gguf_name, shape, tensor_type(gguf_name, shape, qtype), load))
    if config.rope_scaling is not None and config.rope_scaling.get("rope_type", config.rope_scaling.get(
        "type"
    )) == "llama3":
        factors = llama3_rope_factors(config)
        planned.append(PlannedTensor("rope_freqs.weight", factors.shape, gguf.GGMLQuantizationType.F32,
                                     lambda: factors))

    def order(item: PlannedTensor) -> tuple[int, int, str]:
        match = _LAYER_RE.match(item.gguf_name)
        if match:
            return (1, int(match.group(1)), item.gguf_name)
        return (0 if item.gguf_name.startswith(("token_embd", "rope_freqs")) else 2, 0, item.gguf_name)

    planned.sort(key=order)
    names = {p.gguf_name for p in planned}
    for required in ("token_embd.weight", "output_norm.weight"):
        if required not in names:
            raise InputFileError(f"{model_dir}: no weight for {required} (not a complete Llama model)")
    return planned


# -------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class GGUFExportResult:
    path: Path
    qtype: str
    seconds: float
    size_bytes: int
    tensor_types: dict[str, int] = field(default_factory=dict)
    tokenizer_pre: str = ""


def _add_metadata(
    writer: gguf.GGUFWriter, config: LlamaDirConfig, qtype: str, name: str, vocab: GGUFVocab, model_dir: Path
) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(int(FILE_TYPES[qtype]))
    if qtype != "f16":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(len(vocab.tokens))
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    scaling = config.rope_scaling or {}
    scaling_type = scaling.get("rope_type", scaling.get("type"))
    if scaling_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif scaling_type not in (None, "default", "llama3"):
        raise InputFileError(f"{model_dir}/config.json: rope scaling '{scaling_type}' is not supported")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(vocab.tokens))
    if not special.merges:
        raise InputFileError(f"{model_dir}/tokenizer.json: no BPE merges")
    if "eos" not in special.special_token_ids:
        raise InputFileError(f"{model_dir}: no eos token in tokenizer_config.json / config.json")
    if special.chat_template is None:
        logger.warning("%s has no chat template: the GGUF will have none", model_dir)
    # transformers 5 drops add_bos_token from a saved tokenizer_config.json; without the key llama.cpp
    # falls back to its own per-tokenizer default, so always state it (the BOS rule is then only what
    # the tokenizer.json post-processor or tokenizer_config.json say).
    special.add_special_token.setdefault("bos", False)
    special.add_special_token.setdefault("eos", False)
    special.add_to_gguf(writer, quiet=True)


def _write_tensors(writer: gguf.GGUFWriter, planned: list[PlannedTensor], qtype: str) -> dict[str, int]:
    """Tensor infos, header and key/values, then each tensor's data; return the count per GGML type."""
    for item in planned:
        byte_shape = (
            item.shape
            if item.ggml_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
            else gguf.quants.quant_shape_to_byte_shape(item.shape, item.ggml_type)
        )
        dtype: np.dtype[Any] = STORAGE_DTYPES.get(item.ggml_type, np.dtype(np.uint8))
        nbytes = int(np.prod(byte_shape)) * dtype.itemsize
        raw = item.ggml_type if dtype == np.uint8 else None
        writer.add_tensor_info(item.gguf_name, byte_shape, dtype, nbytes, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    counts: dict[str, int] = {}
    for item in tqdm(planned, desc=f"GGUF {qtype}", unit="tensor", mininterval=2.0):
        writer.write_tensor_data(encode_tensor(item.load(), item.ggml_type))
        counts[item.ggml_type.name] = counts.get(item.ggml_type.name, 0) + 1
    return counts


def write_gguf(
    model_dir: str | Path, out_path: str | Path, qtype: str, *, tokenizer_pre: str | None, name: str
) -> GGUFExportResult:
    """Write ``model_dir`` as a ``qtype`` (f16 | q8_0 | q4_0) GGUF at ``out_path``, named ``name``.

    ``tokenizer_pre``: llama.cpp's pre-tokenizer name (None: detected from tokenizer.json).
    """
    if qtype not in QTYPES:
        raise ConfigError(f"GGUF type '{qtype}' is not one of {', '.join(QTYPES)}")
    start = time.perf_counter()
    source = Path(model_dir)
    target = Path(out_path)
    config = LlamaDirConfig.from_dir(source)
    vocab = gguf_vocab(source, config.vocab_size, tokenizer_pre)
    planned = plan_tensors(source, config, qtype)
    logger.info("writing %s: %d tensors from %s, type %s, tokenizer pre '%s'", target, len(planned), source,
                qtype, vocab.pre)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    writer = gguf.GGUFWriter(partial, arch="llama")
    try:
        _add_metadata(writer, config, qtype, name, vocab, source)
        counts = _write_tensors(writer, planned, qtype)
    finally:
        writer.close()
    partial.replace(target)
    result = GGUFExportResult(
        path=target,
        qtype=qtype,
        seconds=time.perf_counter() - start,
        size_bytes=target.stat().st_size,
        tensor_types=counts,
        tokenizer_pre=vocab.pre,
    )
    logger.info("wrote %s (%.1f MB; %s) in %.1f s", target, result.size_bytes / 1e6,
                ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), result.seconds)
    return result


def export_gguf(
    model: str | Path,
    gguf_file: str | Path,
    *,
    variant: str,
    qtype: str,
    tokenizer_pre: str | None,
    base: str,
) -> GGUFExportResult:
    """Rule export_gguf: the model dir ``model`` (the ``variant`` base or tuned) as a ``qtype`` GGUF.

    The GGUF's general.name is "<base model name> tubetune <variant>", the base model name taken from
    ``base`` (model.base) when it stands for a Hugging Face id, else "model".
    """
    from tubetune.model.base import hub_id_of

    logger.info("BLAS: %s", BLAS)
    base_name = (hub_id_of(base) or "model").rsplit("/", 1)[-1]
    name = f"{base_name} tubetune {variant}"
    return write_gguf(model, gguf_file, qtype, tokenizer_pre=tokenizer_pre, name=name)
