"""Masked test loss on CPU of a base model stored float16 vs the same model through ``model.dtype: auto``.

Not a test: run it by hand after ``snakemake all`` (it reads ``results/model/base`` and the test split).

    .venv/bin/python bench/float16_base.py

It writes a float16 copy of the base model (``prepare_base_model(..., dtype="float16")``, as a Hugging
Face model stored in float16 arrives), then prepares that copy with ``dtype="auto"`` (float32 on a CPU
device), and times ``model_test_loss`` of both on the test split (batch 4, max 2048 tokens, the
evaluation's defaults). float16 matmuls have no BLAS path on MLX's CPU backend.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from tubetune.jsonio import read_jsonl  # noqa: E402
from tubetune.model.base import prepare_base_model, resolve_base  # noqa: E402
from tubetune.train.loss import model_test_loss  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, default=ROOT / "results" / "model" / "base")
    parser.add_argument("--test", type=Path, default=ROOT / "results" / "dataset" / "test.jsonl")
    args = parser.parse_args()
    rows = [{"messages": row["messages"]} for row in read_jsonl(args.test)]
    with tempfile.TemporaryDirectory() as scratch:
        half, auto = Path(scratch) / "float16", Path(scratch) / "auto"
        prepare_base_model(resolve_base(str(args.base)), half, dtype="float16", keep_quantized=False,
                           revision=None)
        summary = prepare_base_model(resolve_base(str(half)), auto, dtype="auto", keep_quantized=False,
                                     revision=None)
        for name, model_dir in (("stored float16", half), (f"auto ({summary['dtype']})", auto)):
            started = time.perf_counter()
            result = model_test_loss(model_dir, rows, batch_size=4, max_seq_length=2048, label=name)
            print(json.dumps({"model": name, "loss": round(result.loss, 4), "tokens": result.n_tokens,
                              "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
