"""Fuse the best adapter into the base model: a plain (de-quantized) model dir in Hugging Face Llama layout.

mlx-lm's own fuse steps (``mlx_lm.fuse.main``): load the base with the adapter (from the two files
the rule names, :func:`tubetune.train.adapter.load_adapted`), replace every LoRA /
DoRA layer by its ``fuse(dequantize=True)``, de-quantize what is left, save the weights with
``mlx_lm.utils.save_model``. Every other file of the base dir (config.json without quantization,
tokenizer, chat template, generation config) is copied verbatim, so the fused dir differs from the base
only in its weights (the GGUF exporter and the evaluation read both the same way).
"""

from __future__ import annotations

from tubetune.mlxrt import BLAS, mx

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm import utils as mlx_utils

from tubetune.errors import InputFileError
from tubetune.jsonio import read_json, write_json
from tubetune.train.adapter import load_adapted

logger = logging.getLogger(__name__)

# Written here; every other (non-hidden, non-weight) file comes from the base dir.
FUSED_FILES = {"config.json", "model.safetensors.index.json"}


@dataclass(frozen=True)
class FuseResult:
    out_dir: Path
    fused_layers: int
    dequantized: bool
    dtype: str
    parameters: int
    seconds: float


def _copy_base_files(base_dir: Path, out_dir: Path) -> list[str]:
    """Tokenizer, chat template and generation config of the base, byte for byte."""
    copied = []
    for source in sorted(base_dir.iterdir()):
        hidden = source.name.startswith(".")
        if hidden or not source.is_file() or source.suffix == ".safetensors" or source.name in FUSED_FILES:
            continue
        shutil.copyfile(source, out_dir / source.name)
        copied.append(source.name)
    return copied


def fuse(
    base: str | Path,
    *,
    adapters: str | Path,
    adapter_config: str | Path,
    fused: str | Path,
    run: str | None = None,
) -> FuseResult:
    """The rule ``fuse``: write ``fused``, the base with the adapter fused in and de-quantized.

    ``run``: the training run the adapter comes from (the winner of the sweep), for the log.
    """
    started = time.perf_counter()
    base_dir, target = Path(base), Path(fused)
    if not (base_dir / "config.json").is_file():
        raise InputFileError(f"{base_dir / 'config.json'}: missing (run the base_model rule first)")
    if run:
        logger.info("fusing the winner of the sweep: run %s", run)
    logger.info("BLAS: %s; fusing %s into %s", BLAS, adapters, base_dir)
    model, _tokenizer, config = load_adapted(base_dir, adapters, adapter_config)
    fusable = [(name, module) for name, module in model.named_modules() if hasattr(module, "fuse")]
    fused_layers = [(name, module.fuse(dequantize=True)) for name, module in fusable]
    if fused_layers:
        model.update_modules(tree_unflatten(fused_layers))
    quantized = "quantization" in config or "quantization_config" in config
    if quantized:
        logger.info("base model is quantized: saving the fused model de-quantized")
        model = mlx_utils.dequantize_model(model)
    weights = dict(tree_flatten(model.parameters()))
    dtypes = sorted({str(v.dtype).replace("mlx.core.", "") for v in weights.values()})
    _write_model_dir(model, base_dir, target, dtypes)
    result = FuseResult(
        out_dir=target,
        fused_layers=len(fused_layers),
        dequantized=quantized,
        dtype=",".join(dtypes),
        parameters=sum(int(v.size) for v in weights.values()),
        seconds=time.perf_counter() - started,
    )
    mx.clear_cache()
    logger.info("fused %d layers into %s (%s, %.1fM parameters) in %.1f s", result.fused_layers,
                target, result.dtype, result.parameters / 1e6, result.seconds)
    return result


def _write_model_dir(model: Any, base_dir: Path, target: Path, dtypes: list[str]) -> None:
    """The weights of ``model``, the base's other files, and its config.json without quantization."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    mlx_utils.save_model(target, model, donate_model=False)
    copied = _copy_base_files(base_dir, target)
    logger.info("copied from the base: %s", ", ".join(copied))
    base_config = read_json(base_dir / "config.json")
    for key in ("quantization", "quantization_config"):
        base_config.pop(key, None)
    if len(dtypes) == 1:
        base_config["torch_dtype"] = dtypes[0]
    write_json(target / "config.json", base_config)
