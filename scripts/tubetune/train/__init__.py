"""Steps 8-9 (rules/train.smk, rules/manifest.smk): LoRA / DoRA / full fine-tuning with mlx-lm (metrics,
best adapter, early stopping), the test loss of each run, the sweep comparison, fusing, run manifests.

One module per rule: ``runner`` (train_run), ``test_loss``, ``compare``, ``fuse``, ``manifest``; and
``reproduce`` (rerun a run from its manifest). Import the submodules directly; those that use mlx
load the fast BLAS first (tubetune.mlxrt). ``settings``, ``sweep``, ``memory`` and ``manifest`` do not
import mlx.
"""
