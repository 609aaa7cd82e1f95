# Shared setup: config validation, paths and input functions used by every rule file.

import dataclasses
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from tubetune.config import validate_config  # noqa: E402
from tubetune.errors import ConfigError  # noqa: E402

try:
    validate_config(config, Path(workflow.basedir) / "config.schema.yaml")
except ConfigError as _exc:
    raise WorkflowError(str(_exc)) from None


R = "results"
LOGS = "logs"
BENCH = f"{R}/benchmarks"

# Threads of the heavy rules (training, conversion, evaluation): every core the run is given. Snakemake
# caps a rule's threads at --cores (and --max-threads), so a number above any machine's core count means
# "all of --cores". Not workflow.cores: it raises when --cores is not given, which would break
# `snakemake --unlock` and `snakemake --rulegraph`.
ALL_CORES = 1024


# ---- resources of a job (config resources.<class>) ----
# Every rule declares threads (1, or ALL_CORES for the heavy ones), mem_mb and runtime (minutes), the
# standard names that the SLURM and Kubernetes executor plugins turn into a job's request. The GPU
# resources are declared only when resources.<class>.gpu > 0: a CPU run asks for no GPU, and the
# Kubernetes executor rejects a gpu resource (even 0) without gpu_manufacturer.

def job_resources(kind):
    """The resources of a rule of class ``kind`` (light, llm, llm_batch, model, train, evaluate)."""
    settings = config["resources"][kind]
    resources = {"mem_mb": settings["mem_mb"], "runtime": settings["runtime"]}
    if settings.get("gpu", 0) > 0:
        resources["gpu"] = settings["gpu"]
        for key in ("gpu_model", "gpu_manufacturer"):
            if settings[key] is not None:
                resources[key] = settings[key]
    return resources


# ---- code versions: reruns when the Python code behind a rule changes ----
# Snakemake reruns a job when its rule's script changes, not when a tubetune module the script imports
# changes. The heavy rules have a param ``code=code_version("scripts/<their script>.py")``, a hash of
# every tubetune module the script imports, followed transitively through the package's imports
# (computed by tubetune.codehash, no list to keep: a new import counts by default). Left out, in
# tubetune.codehash.EXCLUDED: modules whose edits never change a result (errors, jsonio, logs and the
# LLM cost modules llm.ledger / llm.spend), so that rewording a message does not retrain a model.
# An edit to the other modules changes the param: "Params have changed since last execution".
# Not on the LLM rules (questions, answers, batch_*): their requests are cached by
# content, so rerunning them on a code edit would only replay the cache; a code edit that changes what
# is sent to the model changes the request keys, and the next run of the rule picks that up.

from tubetune.codehash import code_version as _code_version  # noqa: E402

_CODE_VERSIONS = {}


def code_version(script):
    """The code version of ``script`` (a path relative to the workflow directory), computed once."""
    if script not in _CODE_VERSIONS:
        basedir = Path(workflow.basedir)
        try:
            _CODE_VERSIONS[script] = _code_version(basedir / script, basedir / "scripts" / "tubetune")
        except (OSError, SyntaxError, ModuleNotFoundError) as exc:
            raise WorkflowError(f"code_version({script!r}): {exc}") from None
    return _CODE_VERSIONS[script]


# ---- shards: the videos in config["shards"] groups by a hash of their id (tubetune.shards) ----
# The per-video steps run as three jobs per shard (rules transcripts, questions, answers), each writing its
# videos' files under results/<step>/<shard>/. A new video changes one shard; an edited transcript reruns
# its shard's jobs only, and their LLM requests of the unchanged chunks are cache hits.

from tubetune.shards import SHARD as _SHARD  # noqa: E402
from tubetune.shards import group_by_shard as _group_by_shard  # noqa: E402

wildcard_constraints:
    shard=_SHARD,

_LISTING = {}


def _listing():
    """The videos of the list_videos checkpoint, by id in listing order, read once per version of the file."""
    import json

    path = checkpoints.list_videos.get().output.selected
    stamp = os.stat(path).st_mtime_ns
    if _LISTING.get("stamp") != stamp:
        with open(path, encoding="utf-8") as handle:
            videos = {video["id"]: video for video in json.load(handle)["videos"]}
        _LISTING.update(stamp=stamp, videos=videos, shards=_group_by_shard(videos, config["shards"]))
    return _LISTING


def selected_shards():
    """Names of the shards that hold at least one selected video (re-evaluated once the checkpoint ran)."""
    return list(_listing()["shards"])


def shard_videos(wildcards):
    """The entries of selected.json of the videos of one shard, in listing order: a param of the
    transcripts rule (a changed title, a new video in the shard reruns that shard only)."""
    listing = _listing()
    return [listing["videos"][video] for video in listing["shards"].get(wildcards.shard, [])]


def shard_video_ids(wildcards):
    """The ids of the videos of one shard, in listing order."""
    return list(_listing()["shards"].get(wildcards.shard, []))


def per_shard(pattern):
    """Input function: ``pattern`` expanded over the shards that hold a selected video."""

    def inputs(wildcards):
        return expand(pattern, shard=selected_shards())

    return inputs


def prompt_file(step):
    return config[step]["prompt"]


def question_settings():
    """Question settings without the prompt path (the prompt file is an input, tracked by content)."""
    return {key: value for key, value in config["questions"].items() if key != "prompt"}


# ---- LLM passes (rules/generate.smk, rules/llm.smk) ----

# The optional LLM passes that are on: the quality judge and the augmentation of build_dataset, the
# evaluation's judge (rules/dataset.smk, rules/evaluate.smk; rule estimate covers them while on).
QUALITY_ON = bool(config["quality"]["enabled"])
AUGMENT_ON = config["augment"]["paraphrases"] > 0
JUDGE_ON = bool(config["judge"]["enabled"])

# llm keys that change how requests are sent and paid for, not what the model is asked: changing them
# does not rerun an LLM rule (its requests and their cached replies stay the same).
LLM_DELIVERY_KEYS = (
    "mode", "concurrency", "rate_limit_wait_s", "batch_poll_s", "batch_max_requests", "batch_max_mb",
    "prices", "cache_min_tokens", "max_retries", "timeout_s", "base_url",
)


def llm_params():
    """The llm settings that decide what is sent (a rerun trigger); the scripts read config["llm"]."""
    return {key: value for key, value in config["llm"].items() if key not in LLM_DELIVERY_KEYS}


def llm_batch_mode():
    return config["llm"]["backend"] == "anthropic" and config["llm"]["mode"] == "batch"


def llm_requests_limit():
    """The limit of the llm_requests resource (profile or --resources), or None when unset (also in a
    job that a cluster executor runs: its Snakemake process has the resource without a value)."""
    value = workflow.global_resources.get("llm_requests")
    value = getattr(value, "value", value)
    return int(value) if value is not None else None


def youtube_jobs():
    """The youtube resource of a source job (list_videos, transcripts): 1 for a YouTube source, so that
    under the profiles' limit youtube=1 one job at a time talks to YouTube; 0 for local files, read by
    as many jobs at once as the cores allow."""
    return 1 if config["source"]["type"] == "youtube" else 0


def llm_job_requests():
    """Requests one per-shard LLM job keeps in flight: its share of the llm_requests resource.

    anthropic online: llm.concurrency (capped at the resource's limit); batch: 0 (the batch pass
    sends; the per-shard jobs read the cache); llama_cpp: 1 (one local model, one request at a time).
    """
    llm = config["llm"]
    if llm["backend"] != "anthropic":
        return 1
    if llm["mode"] == "batch":
        return 0
    limit = llm_requests_limit()
    return min(llm["concurrency"], limit) if limit else llm["concurrency"]


def batch_report(pass_name):
    """llm.mode batch: the batch pass report a per-shard LLM job reads its replies after; else none.

    ancient(): a new report (the pass reran for one edited video) does not rerun the other videos'
    jobs; a job that reruns for its own reasons still waits for the pass and reads the new report.
    """
    return [ancient(f"{R}/llm/batch/{pass_name}.json")] if llm_batch_mode() else []


def ledger_records():
    """Input function: the usage records of the LLM jobs that make the calls: the per-shard jobs
    online; in batch mode the two batch passes (the per-shard jobs then only read the cache). Then
    the record of each pass of build_dataset that is on (quality, augment), either mode."""

    def inputs(wildcards):
        if llm_batch_mode():
            records = [f"{R}/llm/batch/questions.json", f"{R}/llm/batch/answers.json"]
        else:
            passes = ("questions", "answers")
            records = expand(
                f"{R}/llm/usage/{{llm_pass}}/{{shard}}.json", llm_pass=passes, shard=selected_shards()
            )
        if config["quality"]["enabled"]:
            records.append(f"{R}/llm/usage/quality.json")
        if config["augment"]["paraphrases"] > 0:
            records.append(f"{R}/llm/usage/augment.json")
        return records

    return inputs


def cache_fingerprint():
    """A short hash of the LLM cache directories' state (their shard folders' mtimes): a param of the
    estimate, so that `snakemake estimate` reruns once replies were added to the cache."""
    import hashlib
    import os

    digest = hashlib.sha256()
    for folder in (config["llm"]["cache_dir"], *config["llm"]["seed_cache_dirs"]):
        digest.update(str(folder).encode())
        if os.path.isdir(folder):
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.is_dir() and len(entry.name) == 2:
                    digest.update(f"{entry.name}:{entry.stat().st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def dataset_outputs():
    return [
        f"{R}/llm/ledger.json",
        f"{R}/dataset/train.jsonl",
        f"{R}/dataset/valid.jsonl",
        f"{R}/dataset/test.jsonl",
        f"{R}/dataset/stats.json",
        f"{R}/dataset/stats.md",
        f"{R}/review/index.md",
    ]


def train_outputs():
    """The train target: every sweep run's adapter, metrics, plot and manifest (rules/manifest.smk),
    and the sweep comparison."""
    return dataset_outputs() + run_files(
        "adapters/adapters.safetensors", "metrics.jsonl", "loss.png", "manifest.json"
    ) + compare_outputs()


def all_outputs():
    return train_outputs() + [
        f"{R}/fused",
        f"{R}/export/hf",
        f"{R}/export/gguf/Modelfile",
        f"{R}/eval/metrics.json",
        f"{R}/eval/report.html",
    ] + [f"{R}/export/gguf/tuned-{qtype}.gguf" for qtype in config["export"]["gguf_types"]]


# ---- sources (rules/source.smk) ----

# Each step gets only the settings it uses (the fields of its settings dataclass), so changing a filter
# does not refetch transcripts.
from tubetune.source.models import FetchSettings, ListSettings  # noqa: E402

LIST_KEYS = tuple(field.name for field in dataclasses.fields(ListSettings))
FETCH_KEYS = tuple(field.name for field in dataclasses.fields(FetchSettings))


def source_settings(keys):
    return {key: config["source"][key] for key in keys}


def listing_input(wildcards):
    listing = config["source"]["listing"]
    return [listing] if listing else []


def local_transcript_files(wildcards):
    """local source: every transcript file, so adding or changing one reruns the listing."""
    folder = Path(config["source"]["transcripts_dir"] or "")
    if config["source"]["type"] != "local" or not folder.is_dir():
        return []
    suffixes = (".json", ".srt", ".vtt", ".txt")
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file())


_TRANSCRIPT_NAMES = {}


def _transcript_file(video):
    """local source: the transcript file of ``video`` (<id>.json before .srt, .vtt, .txt), or None;
    the folder is listed once per run."""
    if "names" not in _TRANSCRIPT_NAMES:
        _TRANSCRIPT_NAMES["names"] = {Path(path).name: path for path in local_transcript_files(None)}
    names = _TRANSCRIPT_NAMES["names"]
    for suffix in (".json", ".srt", ".vtt", ".txt"):
        if f"{video}{suffix}" in names:
            return names[f"{video}{suffix}"]
    return None


def shard_transcript_files(wildcards):
    """local source: the transcript file of each of one shard's videos that has one: an input of the
    transcripts rule, so that an edit to one of them reruns only its shard."""
    if config["source"]["type"] != "local":
        return []
    files = (_transcript_file(video) for video in shard_video_ids(wildcards))
    return [path for path in files if path is not None]


# ---- base model (rules/model.smk) ----

from tubetune.model.base import resolve_base as _resolve_base  # noqa: E402

BASE_SOURCE = _resolve_base(config["model"]["base"])


def base_model_input(wildcards):
    """Local sources are inputs (edits to them rerun the rule); a bundled GGUF or hub id is a param."""
    return BASE_SOURCE.input_files()


# ---- exports (rules/export.smk) ----

EXPORT_MODEL_DIRS = {"base": f"{R}/model/base", "tuned": f"{R}/fused"}


def export_model_dir(wildcards):
    return EXPORT_MODEL_DIRS[wildcards.model]


def export_winner(wildcards):
    """The tuned export waits for the compare checkpoint (see winner_chosen); the base export does not."""
    return winner_chosen() if wildcards.model == "tuned" else []


def tuned_modelfile_gguf(wildcards):
    return f"{R}/export/gguf/tuned-{config['export']['ollama_quant']}.gguf"


# ---- evaluation (rules/evaluate.smk) ----

from tubetune.evaluate.settings import AnswerSettings as _AnswerSettings  # noqa: E402
from tubetune.evaluate.settings import ReportSettings as _ReportSettings  # noqa: E402
from tubetune.evaluate.settings import section_part as _section_part  # noqa: E402


def eval_gguf(model):
    return f"{R}/export/gguf/{model}-{config['evaluate']['quant']}.gguf"


def answer_test_settings():
    """The evaluate keys answer_test reads (answering, test loss, scoring): no others, so that a report
    or interval setting does not rerun the models."""
    return _section_part(_AnswerSettings, config["evaluate"])


def report_settings():
    """The evaluate keys the evaluate rule reads (bootstrap seed and resamples, the report)."""
    return _section_part(_ReportSettings, config["evaluate"])


# ---- parity (rules/evaluate.smk) ----

# Parity compares the fused model with its f16 GGUF, requested by name, so that export_gguf builds
# tuned-f16.gguf also when export.gguf_types lacks f16.
PARITY_GGUF = f"{R}/export/gguf/tuned-f16.gguf"

from tubetune.evaluate.parity import ParitySettings as _ParitySettings  # noqa: E402


def parity_settings():
    """The evaluate keys the parity rule reads (no others, so that they alone rerun it)."""
    return {field.name: config["evaluate"][field.name] for field in dataclasses.fields(_ParitySettings)}


# ---- judge (rules/evaluate.smk) ----

def judge_llm_params():
    """The judge's llm settings that decide what is sent (a rerun trigger): llm_params() with the
    judge's request model (judge.model, null: llm.model); its output limit is judge.max_tokens."""
    params = {key: value for key, value in llm_params().items() if key != "max_tokens"}
    return {**params, "model": config["judge"]["model"] or config["llm"]["model"]}


def judge_settings():
    """The judge section without the prompt path (the prompt file is an input)."""
    return {key: value for key, value in config["judge"].items() if key != "prompt"}


def judge_bootstrap_settings():
    """The evaluate keys of the judge's bootstrap intervals."""
    return {key: config["evaluate"][key] for key in ("bootstrap_resamples", "seed")}


def judge_can_call():
    """Whether the judge can call its backend on a cache miss: llama_cpp, or anthropic with an API key."""
    return config["llm"]["backend"] != "anthropic" or bool(os.environ.get("ANTHROPIC_API_KEY", "").strip())


def judge_llm_requests():
    """The judge job's share of the llm_requests resource: as a per-shard LLM job online; one in batch
    mode, where the job runs the batch pass itself."""
    return 1 if llm_batch_mode() else llm_job_requests()


# ---- training (rules/train.smk) ----

from tubetune.train.sweep import sweep_runs as _sweep_runs  # noqa: E402

# Run name -> the full train settings of that run (the sweep over the resolved train section; without
# a sweep one run, "default"). Cross-key checks (iters vs epochs, ...) of every run fail here, before
# any job starts.
try:
    SWEEP_RUNS = _sweep_runs(config)
except ConfigError as _exc:
    raise WorkflowError(str(_exc)) from None

RUN_NAMES = list(SWEEP_RUNS)

wildcard_constraints:
    run="|".join(re.escape(name) for name in RUN_NAMES),


def run_train_settings(wildcards):
    """The train settings of one run (profile applied, defaults filled, sweep point applied): its params."""
    return dict(SWEEP_RUNS[wildcards.run])


def run_files(*names):
    """``results/train/<run>/<name>`` for every run and every name."""
    return [f"{R}/train/{run}/{name}" for run in RUN_NAMES for name in names]


def compare_outputs():
    return [
        f"{R}/sweep/ranking.md",
        f"{R}/sweep/ranking.json",
        f"{R}/sweep/loss_curves.png",
        f"{R}/sweep/winner.json",
    ]


def test_loss_settings():
    """The evaluate settings the per-run test loss uses (no others, so they alone rerun it); with
    evaluate.max_examples it scores the same first examples as the evaluate rule."""
    keys = ("loss_batch_size", "loss_max_seq_length", "max_examples")
    return {key: config["evaluate"][key] for key in keys}


def winner_run():
    """Name of the run the compare checkpoint picked (re-evaluated once it has run)."""
    import json

    with open(checkpoints.compare.get().output.winner, encoding="utf-8") as handle:
        return json.load(handle)["run"]


WINNER_FILES = {
    "adapters": "adapters/adapters.safetensors",
    "adapter_config": "adapters/adapter_config.json",
    "summary": "summary.json",
    "loss_png": "loss.png",
}


def winner_file(name):
    """Input function: one file of the winning run. winner.json itself is not an input, so a new point
    that does not win leaves fuse / export / evaluate alone; a new winner changes these paths."""

    def inputs(wildcards):
        return f"{R}/train/{winner_run()}/{WINNER_FILES[name]}"

    return inputs


def winner_chosen():
    """An input naming the compare checkpoint as a dependency: its winner.json, ancient().

    Snakemake 9 re-evaluates the jobs that depend on a checkpoint once it has run; a job further down
    keeps the rerun reason it got before (while fuse still looked due). fuse, export_hf and evaluate read
    the winner's files (winner_file), which depends on the checkpoint; the jobs after fuse that do not
    (the tuned GGUF export, the Modelfile, answer_test, judge, parity) take this input, so that when a new
    sweep point does not win, fuse and everything after it stay up to date. ancient(): a newer
    winner.json alone (the comparison reran, same winner) reruns nothing; a new winner changes the
    winner's files and so fuse and all after it.
    """
    return [ancient(f"{R}/sweep/winner.json")]


def winner_param(wildcards):
    """The winning run's name, a param of fuse / export_hf / evaluate (the card and report name it)."""
    return winner_run()


# ---- manifest (rules/manifest.smk) ----

# The workflow directory (its git state goes into the manifest), relative to the working directory the
# jobs run in: a param, so an absolute path would rerun every manifest when a clone or workdir moves.
WORKFLOW_DIR = os.path.relpath(workflow.basedir)


def manifest_config(wildcards):
    """The resolved config (validated, defaults filled) as this run saw it: ``train`` = the run's
    settings, the sweep lists emptied. Other points of the sweep are not part of it, so adding a point
    does not rerun the manifests of the runs that exist."""
    from tubetune.train.manifest import reproduce_config

    return reproduce_config(config, SWEEP_RUNS[wildcards.run])
