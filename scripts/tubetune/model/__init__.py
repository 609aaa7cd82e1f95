"""The base model (rules/model.smk): a bundled or local GGUF, a model dir or a hub id, as an MLX model dir."""
