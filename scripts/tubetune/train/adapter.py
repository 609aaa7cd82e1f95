"""A run's adapter: ``adapter_config.json`` as training writes it, and the adapter applied to a base model.

The rules name the weights file and the config file separately, so the adapter is loaded from those
two paths with the steps of mlx-lm's ``load_adapters`` (which wants both in one directory under fixed
names): read the config, turn the adapted layers into LoRA / DoRA layers, check the weights against
the model's adapter parameters and load them.
"""

from __future__ import annotations

from tubetune.mlxrt import mx

import dataclasses
from pathlib import Path
from typing import Any

from mlx.utils import tree_flatten
from mlx_lm import utils as mlx_utils
from mlx_lm.tuner import utils as tuner_utils

from tubetune.errors import InputFileError
from tubetune.jsonio import read_json
from tubetune.train.settings import TrainSettings

Model = Any  # an mlx.nn.Module (mlx.nn does not type-check as a module namespace)
ADAPTER_LEAVES = frozenset({"lora_a", "lora_b", "m"})


def adapter_config(settings: TrainSettings, num_layers: int, model_dir: str | Path) -> dict[str, Any]:
    """``adapter_config.json`` as mlx-lm reads it, plus the run's resolved settings."""
    return {
        "fine_tune_type": settings.fine_tune_type,
        "num_layers": num_layers,
        "lora_parameters": settings.lora_parameters(),
        "model": str(model_dir),
        "train_settings": dataclasses.asdict(settings),
    }


def _check_weights(model: Model, weights: dict[str, mx.array], full: bool, where: Path) -> None:
    params: dict[str, Any] = dict(tree_flatten(model.parameters()))
    if not full:
        params = {name: v for name, v in params.items() if name.rsplit(".", 1)[-1] in ADAPTER_LEAVES}
    for name, value in weights.items():
        if name not in params:
            raise InputFileError(f"{where}: {name} is not an adapter parameter of the base model")
        if value.shape != params[name].shape:
            raise InputFileError(
                f"{where}: {name} has shape {tuple(value.shape)}, the model's {tuple(params[name].shape)}"
            )


def apply_adapter(model: Model, adapters: str | Path, config_path: str | Path) -> Model:
    """Convert ``model``'s layers as ``config_path`` says and load the weights of ``adapters`` into them."""
    config: dict[str, Any] = read_json(config_path)
    fine_tune_type = config.get("fine_tune_type", "lora")
    try:
        if fine_tune_type != "full":
            tuner_utils.linear_to_lora_layers(
                model, config["num_layers"], config["lora_parameters"], use_dora=fine_tune_type == "dora"
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputFileError(f"{config_path}: not an adapter config for this model ({exc})") from exc
    try:
        loaded = mx.load(str(adapters))
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputFileError(f"{adapters}: cannot read the adapter weights ({exc})") from exc
    assert isinstance(loaded, dict)
    _check_weights(model, loaded, fine_tune_type == "full", Path(adapters))
    model.load_weights(list(loaded.items()), strict=False)
    return model


def load_adapted(
    base_dir: str | Path, adapters: str | Path, config_path: str | Path
) -> tuple[Model, Any, dict[str, Any]]:
    """The base model with the adapter applied (in eval mode), its tokenizer and its config."""
    try:
        model, tokenizer, config = mlx_utils.load(str(base_dir), return_config=True)  # type: ignore[misc]
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise InputFileError(f"{base_dir}: cannot load the base model ({exc})") from exc
    apply_adapter(model, adapters, config_path)
    model.eval()
    return model, tokenizer, config
