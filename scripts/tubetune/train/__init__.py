"""Step 8-9: LoRA / DoRA / full fine-tuning with mlx-lm (metrics, best adapter, early stopping) and fusing.

Import the submodules directly; those that use mlx load the fast BLAS first (tubetune.mlxrt).
``settings`` and ``memory`` do not import mlx.
"""
