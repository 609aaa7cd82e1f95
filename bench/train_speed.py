"""Training speed benchmark: tubetune's runner vs stock ``mlx_lm lora`` vs Hugging Face PEFT on torch (CPU).

Not a test: run it by hand (about 10 minutes on 2 cores with the defaults) and read the table.

    .venv/bin/python bench/train_speed.py                          # ours, peft (3x alternating), stock once
    .venv/bin/python bench/train_speed.py --systems ours,plain,peft  # with the unfused CPU step
    .venv/bin/python bench/train_speed.py --systems ours,single,peft --repeats 3  # one process vs several

Every system trains the same LoRA (rank, alpha, all linear layers of the last ``--num-layers`` blocks)
of the same model dir on the same examples, in batches of ``--batch-size`` x ``--seq-len`` tokens.
The examples are built from the sample dataset (``results/dataset/train.jsonl`` when it exists, else
the test fixture set) by joining answers until every example is longer than ``--seq-len`` tokens, so
every batch is exactly ``batch_size x seq_len`` tokens after truncation and holds
``batch_size x (seq_len - 1)`` predicted tokens: tokens/s is that count over the time of the timed
steps (after ``--warmup`` untimed steps, which include compilation). No prompt masking.

* ours:  ``tubetune.train.runner.run_training`` (OpenBLAS preloaded, float32, compiled step; on a CPU
         device the fused step of ``tubetune.train.cpu_ops``, one training process per thread as the
         batch allows, ``tubetune.train.parallel``); the time per step comes from mlx-lm's own report
         to our callback (metrics.jsonl), which excludes validation.
* plain: the same with ``train.cpu_fused: false`` (mlx-lm's own ops; not run unless asked for).
* single: the same with ``train.cpu_processes: 1`` (one process with all threads; not run unless asked for).
* stock: ``python -m mlx_lm lora --train ...`` in a fresh process without our BLAS preload (on Linux
         it uses the reference BLAS of the mlx wheel), in batches of ``--stock-batch-size`` (1: its
         steps take about 40 s per 256 tokens). Its console output is not parsed: the benchmark runs it
         twice, with ``stock_warmup`` and ``stock_warmup + stock_iters`` iterations, and divides the
         difference of the wall times by ``stock_iters``.
* peft:  transformers + PEFT on torch CPU (float32, ``torch.set_num_threads(threads)``), Adam.

Each system runs in its own process. Results: ``<out>/train_speed.json`` and ``<out>/train_speed.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

logger = logging.getLogger("train_speed")

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SYSTEMS = ("ours", "plain", "single", "peft", "stock")
VARIANTS = {"ours": {}, "plain": {"cpu_fused": False}, "single": {"cpu_processes": 1}}  # train keys of each
SETTING_KEYS = ("batch_size", "seq_len", "rank", "alpha", "num_layers", "threads", "iters", "warmup",
                "stock_batch_size", "stock_warmup", "stock_iters", "repeats")


# ------------------------------------------------------------------------------------------- setup


def ensure_model(model: Path | None, work: Path) -> Path:
    """``--model``, else results/model/base, else the bundled GGUF converted (float32) under ``work``."""
    if model is not None:
        return model.resolve()
    default = ROOT / "results" / "model" / "base"
    if (default / "config.json").is_file():
        return default
    target = work / "base"
    if not (target / "config.json").is_file():
        logger.info("converting the bundled SmolLM2 GGUF to %s", target)
        code = (
            "import sys; from tubetune.bundled import bundled_gguf; "
            "from tubetune.model.gguf_convert import convert_gguf; "
            "convert_gguf(bundled_gguf('smollm2-135m-instruct'), sys.argv[1], dtype='float32')"
        )
        subprocess.run([sys.executable, "-c", code, str(target)], check=True, cwd=ROOT)
    return target


def source_rows(data: Path | None, work: Path) -> tuple[list[dict[str, Any]], str]:
    if data is None:
        default = ROOT / "results" / "dataset"
        if (default / "train.jsonl").is_file():
            data = default
        else:
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import write_chat_dataset  # the test fixture dataset

            data = work / "fixture_dataset"
            write_chat_dataset(data)
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines() if line.strip()]
    return rows, str(data)


def build_bench_dataset(
    rows: list[dict[str, Any]], model_dir: Path, out: Path, seq_len: int, count: int
) -> int:
    """Chat examples longer than ``seq_len`` tokens, made by joining consecutive answers."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    examples: list[dict[str, Any]] = []
    index = 0
    while len(examples) < count:
        first = rows[index % len(rows)]["messages"]
        system = [m for m in first if m["role"] == "system"]
        question = next(m["content"] for m in first if m["role"] == "user")
        parts: list[str] = []
        while len(tokenizer.encode(" ".join(parts)).ids) < seq_len + 32:
            messages = rows[index % len(rows)]["messages"]
            parts.append(next(m["content"] for m in messages if m["role"] == "assistant"))
            index += 1
        examples.append({"messages": [*system, {"role": "user", "content": question},
                                      {"role": "assistant", "content": " ".join(parts)}]})
    out.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", examples), ("valid", examples[:8]), ("test", examples[:8])):
        (out / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in part))
    return len(examples)


# ----------------------------------------------------------------------------------------- systems


def run_ours(args: argparse.Namespace, model_dir: Path, data: Path, work: Path, *,
             variant: str = "ours") -> dict[str, Any]:
    result = work / f"{variant}.json"
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--worker", variant, "--model", str(model_dir),
           "--data", str(data), "--result", str(result), *common_flags(args)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    measured: dict[str, Any] = json.loads(result.read_text())
    measured["wall_s"] = round(time.perf_counter() - started, 1)
    return measured


def run_plain(args: argparse.Namespace, model_dir: Path, data: Path, work: Path) -> dict[str, Any]:
    return run_ours(args, model_dir, data, work, variant="plain")


def run_single(args: argparse.Namespace, model_dir: Path, data: Path, work: Path) -> dict[str, Any]:
    return run_ours(args, model_dir, data, work, variant="single")


def worker_ours(args: argparse.Namespace, variant: str) -> None:
    from tubetune.config import section_config
    from tubetune.settings import settings_from
    from tubetune.train.reproduce import run_layout
    from tubetune.train.runner import run_training
    from tubetune.train.settings import TrainSettings

    total = args.warmup + args.iters
    settings = settings_from(TrainSettings, section_config("train", {
        "iters": total, "batch_size": args.batch_size, "max_seq_length": args.seq_len, "rank": args.rank,
        "alpha": args.alpha, "num_layers": args.num_layers, "mask_prompt": False, "steps_per_report": 1,
        "steps_per_eval": total, "val_batches": 1, "early_stopping_patience": None, "learning_rate": 1e-4,
        "lr_schedule": "constant", "warmup_ratio": 0.0, "optimizer": "adam", "profile": None,
        **VARIANTS[variant],
    }), "train")
    out = Path(tempfile.mkdtemp(prefix="ours-", dir=Path(args.result).parent))
    outputs = run_layout(out)
    data = Path(args.data)
    summary = run_training(data / "train.jsonl", data / "valid.jsonl", args.model, outputs, settings,
                           blas_threads=args.threads)
    rows = [json.loads(line) for line in outputs.metrics.read_text().splitlines()]
    train = [row for row in rows if row["kind"] == "train"]
    timed = [row for row in train if row["iteration"] > args.warmup]
    previous = {row["iteration"]: row["trained_tokens"] for row in train}
    tokens = seconds = 0.0
    for row in timed:
        window = row["trained_tokens"] - previous.get(row["iteration"] - 1, 0)
        tokens += window
        seconds += window / row["tokens_per_second"]
    Path(args.result).write_text(json.dumps({
        "tokens_per_second": tokens / seconds,
        "timed_steps": len(timed),
        "tokens_per_step": tokens / max(1, len(timed)),
        "blas": f"{summary['blas'].split(' (')[0]} ({summary['blas_threads']['end']} threads)"
                + (f" x {processes} processes" if (processes := summary["processes"]["count"]) > 1 else ""),
        "processes": summary["processes"],
        "blas_threads": summary["blas_threads"],
        "peak_memory_gb": summary["peak_memory_gb"],
        "cpu_kernels": summary["cpu_kernels"],
    }))


def run_stock(args: argparse.Namespace, model_dir: Path, data: Path, work: Path) -> dict[str, Any]:
    import yaml

    config = work / "stock_lora.yaml"
    config.write_text(yaml.safe_dump({"lora_parameters": {"rank": args.rank, "scale": args.alpha / args.rank,
                                                          "dropout": 0.0}}))
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["OPENBLAS_NUM_THREADS"] = str(args.threads)

    def timed_run(iters: int) -> float:
        adapters = work / f"stock-adapters-{iters}"
        cmd = [sys.executable, "-m", "mlx_lm", "lora", "--train", "--model", str(model_dir),
               "--data", str(data), "--fine-tune-type", "lora", "--batch-size", str(args.stock_batch_size),
               "--iters", str(iters),
               "--max-seq-length", str(args.seq_len), "--num-layers", str(args.num_layers),
               "--steps-per-report", "1", "--steps-per-eval", "100000", "--val-batches", "1",
               "--learning-rate", "1e-4", "--optimizer", "adam", "--adapter-path", str(adapters),
               "--save-every", "100000", "-c", str(config)]
        started = time.perf_counter()
        quiet = subprocess.DEVNULL
        subprocess.run(cmd, check=True, env=env, cwd=work, stdout=quiet, stderr=quiet)
        return time.perf_counter() - started

    short = timed_run(args.stock_warmup)
    long = timed_run(args.stock_warmup + args.stock_iters)
    per_step = (long - short) / args.stock_iters
    tokens_per_step = args.stock_batch_size * (args.seq_len - 1)
    return {
        "tokens_per_second": tokens_per_step / per_step,
        "timed_steps": args.stock_iters,
        "tokens_per_step": tokens_per_step,
        "wall_s": round(short + long, 1),
        "blas": "reference BLAS of the mlx wheel" if sys.platform.startswith("linux") else "Accelerate",
    }


def run_peft(args: argparse.Namespace, model_dir: Path, data: Path, work: Path) -> dict[str, Any]:
    result = work / "peft.json"
    cmd = [sys.executable, __file__, "--worker", "peft", "--model", str(model_dir), "--data", str(data),
           "--result", str(result), *common_flags(args)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    measured: dict[str, Any] = json.loads(result.read_text())
    measured["wall_s"] = round(time.perf_counter() - started, 1)
    return measured


def worker_peft(args: argparse.Namespace) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    layers = model.config.num_hidden_layers
    trained = range(layers) if args.num_layers == -1 else range(layers - args.num_layers, layers)
    lora = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=LORA_TARGETS,
                      layers_to_transform=list(trained), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    peft_model.train()
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    rows = [json.loads(line) for line in (Path(args.data) / "train.jsonl").read_text().splitlines()]
    sequences = []
    for row in rows:
        ids: Any = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=False)
        sequences.append([int(i) for i in ids][: args.seq_len])
    batches = [torch.tensor(sequences[i : i + args.batch_size])
               for i in range(0, len(sequences) - args.batch_size + 1, args.batch_size)]
    total = args.warmup + args.iters
    seconds = 0.0
    for step in range(total):
        batch = batches[step % len(batches)]
        started = time.perf_counter()
        loss = peft_model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup:
            seconds += time.perf_counter() - started
    tokens_per_step = args.batch_size * (args.seq_len - 1)
    Path(args.result).write_text(json.dumps({
        "tokens_per_second": tokens_per_step * args.iters / seconds,
        "timed_steps": args.iters,
        "tokens_per_step": tokens_per_step,
        "blas": f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "final_loss": float(loss.item()),
    }))


# ------------------------------------------------------------------------------------------ report


def common_flags(args: argparse.Namespace) -> list[str]:
    return ["--iters", str(args.iters), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
            "--seq-len", str(args.seq_len), "--rank", str(args.rank), "--alpha", str(args.alpha),
            "--num-layers", str(args.num_layers), "--threads", str(args.threads)]


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        "# Training speed (LoRA, tokens/s)",
        "",
        f"Model `{report['model']}`, batch {settings['batch_size']} x {settings['seq_len']} tokens, "
        f"rank {settings['rank']}, alpha {settings['alpha']}, num_layers {settings['num_layers']}, "
        f"{settings['threads']} threads; {report['machine']}; load average before/after "
        f"{report['load_before']} / {report['load_after']}; the whole benchmark took "
        f"{report['bench_seconds'] / 60:.1f} minutes.",
        "",
        "| system | batch | tokens/s (median) | ours / system | runs (tokens/s) | load avg before each "
        "| BLAS |",
        "|---|---|---:|---:|---|---|---|",
    ]
    ours = report["results"].get("ours", {}).get("tokens_per_second")
    for name, result in report["results"].items():
        speed = result["tokens_per_second"]
        ratio = f"{ours / speed:.2f}" if ours and name != "ours" else ""
        each = ", ".join(f"{value:.1f}" for value in result["runs_tokens_per_second"])
        loads = ", ".join(f"{value:.2f}" for value in result["runs_load_before"])
        batch = settings["stock_batch_size"] if name == "stock" else settings["batch_size"]
        lines.append(f"| {name} | {batch} x {settings['seq_len']} | {speed:.1f} | {ratio} | {each} | {loads} "
                     f"| {result.get('blas', '')} |")
    lines += ["", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model dir (default results/model/base)")
    parser.add_argument("--data", type=Path, default=None, help="chat JSONL dir (default results/dataset)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--iters", type=int, default=8, help="timed steps (ours, peft)")
    parser.add_argument("--stock-iters", type=int, default=2, help="timed steps of stock mlx_lm lora")
    parser.add_argument("--stock-warmup", type=int, default=1, help="untimed steps of stock mlx_lm lora")
    parser.add_argument("--stock-batch-size", type=int, default=1,
                        help="stock mlx_lm lora batch size (its reference BLAS takes ~40 s per 256 tokens)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--num-layers", type=int, default=-1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating runs of ours, plain, single and peft")
    parser.add_argument("--systems", default="ours,peft,stock",
                        help=f"comma-separated, from {','.join(SYSTEMS)} "
                        "(plain: ours with train.cpu_fused false; single: ours in one process)")
    parser.add_argument("--worker", choices=[*VARIANTS, "peft"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.worker in VARIANTS:
        worker_ours(args, args.worker)
        return
    if args.worker == "peft":
        worker_peft(args)
        return

    chosen = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="tubetune-train-speed-"))
    try:
        model_dir = ensure_model(args.model, work)
        rows, source = source_rows(args.data, work)
        data = work / "bench_dataset"
        count = build_bench_dataset(rows, model_dir, data, args.seq_len, args.batch_size * 8)
        logger.info("bench dataset: %d examples of > %d tokens from %s", count, args.seq_len, source)
        load_before = round(os.getloadavg()[0], 2)
        runners = {"ours": run_ours, "plain": run_plain, "single": run_single, "stock": run_stock,
                   "peft": run_peft}
        runs: dict[str, list[dict[str, Any]]] = {}
        # ours, plain, single and peft alternate --repeats times (the median is reported), stock runs once: a
        # busy machine slows multi-threaded BLAS a lot, so alternating keeps the comparison fair.
        for repeat in range(args.repeats):
            for name in SYSTEMS:
                if name not in chosen or (name == "stock" and repeat > 0):
                    continue
                logger.info("running %s (%d/%d)", name, repeat + 1, args.repeats)
                load = round(os.getloadavg()[0], 2)
                result = runners[name](args, model_dir, data, work)
                result["load_before"] = load
                runs.setdefault(name, []).append(result)
                logger.info("%s: %.1f tokens/s (load average %.2f)", name, result["tokens_per_second"], load)
        results: dict[str, Any] = {}
        for name, measured in runs.items():
            speeds = sorted(run["tokens_per_second"] for run in measured)
            results[name] = {**measured[0], "tokens_per_second": statistics.median(speeds),
                             "runs_tokens_per_second": [round(r["tokens_per_second"], 1) for r in measured],
                             "runs_load_before": [r["load_before"] for r in measured]}
        ours = results.get("ours", {}).get("tokens_per_second")
        report = {
            "model": str(model_dir),
            "data": source,
            "settings": {k: getattr(args, k) for k in SETTING_KEYS},
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
            "load_before": load_before,
            "load_after": round(os.getloadavg()[0], 2),
            "results": results,
            "ratios": {f"ours/{name}": ours / r["tokens_per_second"]
                       for name, r in results.items() if ours and name != "ours"},
            "command": " ".join([".venv/bin/python", "bench/train_speed.py", *sys.argv[1:]]),
            "bench_seconds": round(time.perf_counter() - started, 1),
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "train_speed.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "train_speed.md").write_text(markdown(report))
        logger.info("wrote %s\n%s", args.out / "train_speed.md", markdown(report))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
