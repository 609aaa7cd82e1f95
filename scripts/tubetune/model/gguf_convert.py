"""GGUF (llama architecture, BPE tokenizer) -> a model dir that mlx-lm and transformers load.

The weights are read with ``mx.load(gguf, return_metadata=True)``: MLX returns Q4_0 / Q4_1 / Q8_0 tensors
as affine quantized triplets (packed weight, scales, biases; groups of 32), which are dequantized
exactly (in float32) with ``mx.dequantize``. llama.cpp stores the rows of attn_q / attn_k permuted for
its rotary embedding (``LlamaModel.permute`` in llama.cpp's convert_hf_to_gguf.py); they are permuted
back to the Hugging Face / MLX layout here, and :func:`permute_rotary` redoes it for the GGUF export.

The tokenizer (tokenizer.json) is rebuilt with the ``tokenizers`` library from the GGUF's tokens, merges
and token types; its pre-tokenizer follows ``tokenizer.ggml.pre`` (the regexes llama.cpp uses).
"""

from __future__ import annotations

from tubetune.mlxrt import mx

import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from tubetune.errors import ConfigError, InputFileError
from tubetune.jsonio import write_json

logger = logging.getLogger(__name__)

# llama.cpp token types (gguf.TokenType)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

GGUF_GROUP_SIZE = 32  # block size of Q4_0 / Q4_1 / Q8_0

# GGUF tensor name (block part after "blk.N.") -> Hugging Face Llama name (after "model.layers.N.")
BLOCK_NAMES: dict[str, str] = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GLOBAL_NAMES: dict[str, str] = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)$")
_HF_BLOCK_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

# Pre-tokenizer regexes, as in llama.cpp's llama-vocab.cpp for each tokenizer.ggml.pre.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SUPPORTED_PRE = ("smollm", "llama-bpe", "gpt2")

ArrayT = TypeVar("ArrayT", np.ndarray[Any, Any], mx.array)


# ---------------------------------------------------------------------------------------------- names


def gguf_to_hf_name(name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight`` (also .scales/.biases)."""
    stem, _, suffix = name.rpartition(".")
    if stem in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[stem]}.{suffix}"
    match = _BLOCK_RE.match(stem)
    if match and match.group(2) in BLOCK_NAMES:
        return f"model.layers.{match.group(1)}.{BLOCK_NAMES[match.group(2)]}.{suffix}"
    raise InputFileError(f"GGUF tensor '{name}' is not part of a llama model this converter knows")


def hf_to_gguf_name(name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``."""
    stem, _, suffix = name.rpartition(".")
    for gguf_name, hf_name in GLOBAL_NAMES.items():
        if stem == hf_name:
            return f"{gguf_name}.{suffix}"
    match = _HF_BLOCK_RE.match(stem)
    if match:
        for gguf_name, hf_name in BLOCK_NAMES.items():
            if match.group(2) == hf_name:
                return f"blk.{match.group(1)}.{gguf_name}.{suffix}"
    raise InputFileError(f"tensor '{name}' is not part of a Llama model (cannot name it in a GGUF)")


def permute_rotary(weight: ArrayT, n_head: int) -> ArrayT:
    """Hugging Face row order -> llama.cpp row order of attn_q (n_head) / attn_k (n_kv_head) weights.

    Within each head, HF keeps the two rotary halves apart; llama.cpp interleaves them (pairs).
    """
    rows = weight.shape[0]
    shape = tuple(weight.shape)
    return weight.reshape(n_head, 2, rows // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def unpermute_rotary(weight: ArrayT, n_head: int) -> ArrayT:
    """Inverse of :func:`permute_rotary`: llama.cpp row order -> Hugging Face row order."""
    rows = weight.shape[0]
    shape = tuple(weight.shape)
    return weight.reshape(n_head, rows // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


# ------------------------------------------------------------------------------------------- metadata


def _plain(value: Any) -> Any:
    """mx.load metadata values (0-d / 1-d mx.array, str, list[str]) -> plain Python values."""
    if isinstance(value, mx.array):
        return value.item() if value.ndim == 0 else value.tolist()
    return value


@dataclass(frozen=True)
class GGUFContents:
    """Tensors (GGUF names, MLX arrays; quantized ones as name.weight/.scales/.biases) and metadata."""

    tensors: dict[str, mx.array]
    metadata: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise InputFileError(f"GGUF metadata has no '{key}' (not a complete llama GGUF)")
        return self.metadata[key]


def read_gguf(path: str | Path) -> GGUFContents:
    """Read a GGUF with MLX; raise InputFileError naming the file when it cannot be read."""
    try:
        loaded = mx.load(str(path), return_metadata=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise InputFileError(
            f"{path}: cannot read this GGUF with MLX ({exc}); MLX reads F32/F16/Q4_0/Q4_1/Q8_0 GGUFs "
            "(K-quants are not supported: use a Q8_0 GGUF or a Hugging Face model)"
        ) from exc
    if not isinstance(loaded, tuple):
        raise InputFileError(f"{path}: MLX returned no GGUF metadata")
    tensors, metadata = loaded
    return GGUFContents(dict(tensors), {key: _plain(value) for key, value in metadata.items()})


@dataclass(frozen=True)
class LlamaShape:
    """The hyper-parameters of a llama model, as both GGUF and Hugging Face name them."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    context_length: int
    tie_word_embeddings: bool
    rope_scaling: dict[str, Any] | None = None


def llama_shape(contents: GGUFContents) -> LlamaShape:
    arch = contents.require("general.architecture")
    if arch != "llama":
        raise InputFileError(
            f"GGUF architecture is '{arch}': only 'llama' GGUFs (SmolLM2, Llama) are supported"
        )
    if "rope_freqs.weight" in contents.tensors:
        raise InputFileError(
            "this GGUF has rope_freqs (Llama 3.1+ rope scaling), which cannot be turned back into a "
            "Hugging Face config: use the Hugging Face model id as model.base instead"
        )
    hidden = int(contents.require("llama.embedding_length"))
    heads = int(contents.require("llama.attention.head_count"))
    head_dim = int(contents.get("llama.attention.key_length", hidden // heads))
    rope_dim = int(contents.get("llama.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise InputFileError(
            f"GGUF rope dimension {rope_dim} != head dim {head_dim}: partial rotary is not supported"
        )
    scaling_type = contents.get("llama.rope.scaling.type", "none")
    rope_scaling: dict[str, Any] | None = None
    if scaling_type == "linear":
        factor = float(contents.require("llama.rope.scaling.factor"))
        rope_scaling = {"rope_type": "linear", "factor": factor}
    elif scaling_type not in ("none", None):
        raise InputFileError(
            f"GGUF rope scaling '{scaling_type}' is not supported (use a Hugging Face model)"
        )
    tokens = contents.require("tokenizer.ggml.tokens")
    return LlamaShape(
        vocab_size=int(contents.get("llama.vocab_size", len(tokens))),
        hidden_size=hidden,
        intermediate_size=int(contents.require("llama.feed_forward_length")),
        num_layers=int(contents.require("llama.block_count")),
        num_heads=heads,
        num_kv_heads=int(contents.get("llama.attention.head_count_kv", heads)),
        head_dim=head_dim,
        rms_norm_eps=float(contents.require("llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(contents.get("llama.rope.freq_base", 10000.0)),
        context_length=int(contents.get("llama.context_length", 2048)),
        tie_word_embeddings="output.weight" not in contents.tensors,
        rope_scaling=rope_scaling,
    )


@dataclass(frozen=True)
class SpecialTokens:
    bos_id: int
    eos_id: int
    pad_id: int | None
    unk_id: int | None
    eot_id: int | None
    add_bos: bool
    add_eos: bool


def special_tokens(contents: GGUFContents) -> SpecialTokens:
    def optional(key: str) -> int | None:
        value = contents.get(key)
        return None if value is None else int(value)

    eos_id = int(contents.require("tokenizer.ggml.eos_token_id"))
    return SpecialTokens(
        bos_id=int(contents.get("tokenizer.ggml.bos_token_id", eos_id)),
        eos_id=eos_id,
        pad_id=optional("tokenizer.ggml.padding_token_id"),
        unk_id=optional("tokenizer.ggml.unknown_token_id"),
        eot_id=optional("tokenizer.ggml.eot_token_id"),
        add_bos=bool(contents.get("tokenizer.ggml.add_bos_token", False)),
        add_eos=bool(contents.get("tokenizer.ggml.add_eos_token", False)),
    )


def hf_config(shape: LlamaShape, tokens: SpecialTokens, dtype: str) -> dict[str, Any]:
    """config.json of a LlamaForCausalLM (read by mlx-lm and transformers)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": shape.context_length,
        "rms_norm_eps": shape.rms_norm_eps,
        "rope_theta": shape.rope_theta,
        "rope_scaling": shape.rope_scaling,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": tokens.bos_id,
        "eos_token_id": tokens.eos_id,
        "pad_token_id": tokens.pad_id,
        "torch_dtype": dtype,
    }


# ------------------------------------------------------------------------------------------ tokenizer


def pre_tokenizer_for(pre: str) -> pre_tokenizers.PreTokenizer:
    """The Hugging Face pre-tokenizer equivalent to llama.cpp's ``tokenizer.ggml.pre``."""
    byte_level_no_regex = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)
    if pre == "smollm":
        # llama.cpp: "\p{N}" (digits one by one), then the GPT-2 regex.
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
    if pre == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre == "llama-bpe":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            byte_level_no_regex,
        ])
    raise InputFileError(
        f"GGUF tokenizer.ggml.pre '{pre}' is not supported (supported: {', '.join(SUPPORTED_PRE)})"
    )


def build_tokenizer(contents: GGUFContents) -> Tokenizer:
    """A byte-level BPE ``tokenizers.Tokenizer`` equal to the GGUF's tokenizer."""
    model_name = contents.require("tokenizer.ggml.model")
    if model_name != "gpt2":
        raise InputFileError(
            f"GGUF tokenizer.ggml.model is '{model_name}': only byte-level BPE ('gpt2') tokenizers "
            "are supported"
        )
    pre = str(contents.get("tokenizer.ggml.pre", "gpt2"))
    tokens: list[str] = list(contents.require("tokenizer.ggml.tokens"))
    types: list[int] = list(contents.get("tokenizer.ggml.token_type", [TOKEN_NORMAL] * len(tokens)))
    merges_text: list[str] = list(contents.require("tokenizer.ggml.merges"))
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        if token in vocab:
            raise InputFileError(
                f"GGUF vocabulary repeats the token {token!r} (ids {vocab[token]} and {index})"
            )
        vocab[token] = index
    merges: list[tuple[str, str]] = []
    for merge in merges_text:
        left, sep, right = merge.partition(" ")
        if not sep:
            raise InputFileError(f"GGUF merge {merge!r} is not two space-separated tokens")
        merges.append((left, right))
    bpe = models.BPE(
        vocab=vocab,
        merges=merges,
        fuse_unk=False,
        byte_fallback=False,
        ignore_merges=(pre == "llama-bpe"),
    )
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizer_for(pre)
    tokenizer.decoder = decoders.ByteLevel()
    specials = special_tokens(contents)
    if specials.add_bos:
        bos = tokens[specials.bos_id]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0",
            pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, specials.bos_id)],
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    added = [
        AddedToken(tokens[i], special=types[i] == TOKEN_CONTROL, normalized=False)
        for i in range(len(tokens))
        if types[i] in (TOKEN_CONTROL, TOKEN_USER_DEFINED)
    ]
    # add_tokens keeps the GGUF ids because every added token is already in the BPE vocabulary.
    tokenizer.add_tokens(added)
    return tokenizer


def tokenizer_files(contents: GGUFContents, out_dir: Path, context_length: int) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
    tokenizer = build_tokenizer(contents)
    tokens: list[str] = contents.require("tokenizer.ggml.tokens")
    specials = special_tokens(contents)
    tokenizer.save(str(out_dir / "tokenizer.json"))

    def token(index: int | None) -> str | None:
        return None if index is None else tokens[index]

    special_map = {
        "bos_token": token(specials.bos_id),
        "eos_token": token(specials.eos_id),
        "pad_token": token(specials.pad_id),
        "unk_token": token(specials.unk_id),
    }
    special_map = {key: value for key, value in special_map.items() if value is not None}
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "add_bos_token": specials.add_bos,
        "add_eos_token": specials.add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": context_length,
    }
    template = contents.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    write_json(out_dir / "tokenizer_config.json", config)
    write_json(out_dir / "special_tokens_map.json", special_map)


def generation_config(tokens: SpecialTokens) -> dict[str, Any]:
    eos: int | list[int] = tokens.eos_id
    if tokens.eot_id is not None and tokens.eot_id != tokens.eos_id:
        eos = [tokens.eos_id, tokens.eot_id]
    config: dict[str, Any] = {"bos_token_id": tokens.bos_id, "eos_token_id": eos}
    if tokens.pad_id is not None:
        config["pad_token_id"] = tokens.pad_id
    return config


# -------------------------------------------------------------------------------------------- weights

MX_DTYPES: dict[str, mx.Dtype] = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


@dataclass
class ConvertedWeights:
    weights: dict[str, mx.array]
    quantization: dict[str, Any] | None = None
    source_types: dict[str, int] = field(default_factory=dict)  # dtype/bits -> tensor count


def _bits(packed: mx.array, scales: mx.array) -> int:
    bits = packed.shape[-1] * 32 // (scales.shape[-1] * GGUF_GROUP_SIZE)
    if bits not in (4, 8):
        raise InputFileError(f"unexpected quantized GGUF tensor layout ({bits} bits per weight)")
    return int(bits)


def convert_weights(
    contents: GGUFContents, shape: LlamaShape, dtype: str, keep_quantized: bool
) -> ConvertedWeights:
    """GGUF tensors -> Hugging Face names, q/k rows un-permuted; dequantized unless ``keep_quantized``."""
    target = MX_DTYPES[dtype]
    out: dict[str, mx.array] = {}
    quantization: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for name in sorted(contents.tensors):
        if not name.endswith(".weight"):
            continue  # .scales / .biases are read with their weight
        stem = name[: -len(".weight")]
        packed = contents.tensors[name]
        scales = contents.tensors.get(f"{stem}.scales")
        biases = contents.tensors.get(f"{stem}.biases")
        n_head = {"attn_q": shape.num_heads, "attn_k": shape.num_kv_heads}.get(stem.rpartition(".")[2])
        hf_name = gguf_to_hf_name(name)
        hf_stem = hf_name[: -len(".weight")]
        if scales is not None and biases is not None:
            bits = _bits(packed, scales)
            counts[f"q{bits}"] = counts.get(f"q{bits}", 0) + 1
            if keep_quantized:
                parts = {"weight": packed, "scales": scales.astype(target), "biases": biases.astype(target)}
                if n_head is not None:
                    parts = {key: unpermute_rotary(value, n_head) for key, value in parts.items()}
                for key, value in parts.items():
                    out[f"{hf_stem}.{key}"] = value
                quantization[hf_stem] = {"group_size": GGUF_GROUP_SIZE, "bits": bits}
                continue
            weight = mx.dequantize(
                packed,
                scales.astype(mx.float32),
                biases.astype(mx.float32),
                group_size=GGUF_GROUP_SIZE,
                bits=bits,
            )
        else:
            counts[str(packed.dtype)] = counts.get(str(packed.dtype), 0) + 1
            weight = packed.astype(mx.float32)
        if n_head is not None:
            weight = unpermute_rotary(weight, n_head)
        out[hf_name] = weight.astype(target)
        mx.eval(out[hf_name])
    if keep_quantized and quantization:
        bits_used = [q["bits"] for q in quantization.values()]
        default_bits = max(set(bits_used), key=bits_used.count)
        per_layer = {k: v for k, v in quantization.items() if v["bits"] != default_bits}
        config = {"group_size": GGUF_GROUP_SIZE, "bits": default_bits, **per_layer}
        return ConvertedWeights(out, config, counts)
    return ConvertedWeights(out, None, counts)


# ------------------------------------------------------------------------------------------- convert


@dataclass(frozen=True)
class ConversionResult:
    out_dir: Path
    seconds: float
    parameters: int
    source_types: dict[str, int]
    tokenizer_pre: str
    dtype: str
    quantized: bool


def metal_available() -> bool:
    return bool(mx.metal.is_available())


def convert_gguf(
    gguf_path: str | Path,
    out_dir: str | Path,
    dtype: str = "float32",
    keep_quantized: bool = False,
) -> ConversionResult:
    """Convert a llama GGUF into a Hugging Face / MLX model dir at ``out_dir`` (replaced if present)."""
    if dtype not in MX_DTYPES:
        raise ConfigError(f"model.dtype: '{dtype}' is not one of {', '.join(MX_DTYPES)}")
    if keep_quantized and not metal_available():
        raise ConfigError(
            "model.keep_quantized: true needs Apple Silicon (Metal); on CPU quantized training runs at "
            "~10 tok/s, so set model.keep_quantized: false"
        )
    start = time.perf_counter()
    source = Path(gguf_path)
    target = Path(out_dir)
    logger.info("converting %s (%.1f MB) to %s (dtype %s, keep_quantized %s)", source,
                source.stat().st_size / 1e6, target, dtype, keep_quantized)
    contents = read_gguf(source)
    shape = llama_shape(contents)
    specials = special_tokens(contents)
    converted = convert_weights(contents, shape, dtype, keep_quantized)
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    missing = sorted(expected - set(converted.weights))
    if missing:
        raise InputFileError(f"{source}: GGUF lacks {', '.join(missing)}")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    config = hf_config(shape, specials, dtype)
    if converted.quantization is not None:
        config["quantization"] = converted.quantization
        config["quantization_config"] = converted.quantization
    write_json(target / "config.json", config)
    write_json(target / "generation_config.json", generation_config(specials))
    tokenizer_files(contents, target, shape.context_length)
    mx.save_safetensors(str(target / "model.safetensors"), converted.weights, metadata={"format": "mlx"})
    parameters = sum(int(v.size) for k, v in converted.weights.items() if k.endswith(".weight"))
    result = ConversionResult(
        out_dir=target,
        seconds=time.perf_counter() - start,
        parameters=parameters,
        source_types=converted.source_types,
        tokenizer_pre=str(contents.get("tokenizer.ggml.pre", "gpt2")),
        dtype=dtype,
        quantized=converted.quantization is not None,
    )
    logger.info("converted %d tensors (%s), %.1fM weights, in %.1f s", len(converted.weights),
                ", ".join(f"{k}: {v}" for k, v in sorted(converted.source_types.items())),
                parameters / 1e6, result.seconds)
    return result

