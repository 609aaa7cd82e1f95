# Shared setup: config validation, paths and input functions used by every rule file.

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


wildcard_constraints:
    video=r"[A-Za-z0-9_-]{11}",


def selected_videos():
    """Video ids chosen by the list_videos checkpoint (re-evaluated once it has run)."""
    import json

    listing = checkpoints.list_videos.get().output.selected
    with open(listing, encoding="utf-8") as handle:
        return [video["id"] for video in json.load(handle)["videos"]]


def per_video(pattern):
    """Input function: ``pattern`` expanded over the selected videos."""

    def inputs(wildcards):
        return expand(pattern, video=selected_videos())

    return inputs


def prompt_file(step):
    return config[step]["prompt"]


def question_settings():
    """Question settings without the prompt path (the prompt file is an input, tracked by content)."""
    return {key: value for key, value in config["questions"].items() if key != "prompt"}


def dataset_outputs():
    return [
        f"{R}/dataset/train.jsonl",
        f"{R}/dataset/valid.jsonl",
        f"{R}/dataset/test.jsonl",
        f"{R}/dataset/stats.json",
        f"{R}/dataset/stats.md",
        f"{R}/review/index.md",
    ]


def train_outputs():
    return dataset_outputs() + [
        f"{R}/train/adapters/adapters.safetensors",
        f"{R}/train/metrics.jsonl",
        f"{R}/train/loss.png",
    ]


def all_outputs():
    return train_outputs() + [
        f"{R}/fused",
        f"{R}/export/hf",
        f"{R}/export/gguf/Modelfile",
        f"{R}/eval/metrics.json",
        f"{R}/eval/report.html",
    ] + [f"{R}/export/gguf/tuned-{qtype}.gguf" for qtype in config["export"]["gguf_types"]]


# ---- sources (rules/source.smk) ----

# Each step gets only the settings it uses, so changing a filter does not refetch transcripts.
LIST_KEYS = (
    "type", "channel", "listing", "transcripts_dir", "max_videos", "skip_shorts", "skip_live",
    "min_duration_s", "title_include", "title_exclude", "request_timeout_s", "max_retries",
    "backoff_s", "cookies_file", "proxy",
)
FETCH_KEYS = (
    "type", "languages", "request_timeout_s", "max_retries", "backoff_s", "request_interval_s",
    "ip_block_limit", "cookies_file", "proxy",
)


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


def local_transcript(wildcards):
    """local source: the transcript file of one video (json, srt, vtt or txt)."""
    if config["source"]["type"] != "local":
        return []
    folder = Path(config["source"]["transcripts_dir"])
    for suffix in (".json", ".srt", ".vtt", ".txt"):
        candidate = folder / f"{wildcards.video}{suffix}"
        if candidate.exists():
            return [str(candidate)]  # a list, also when empty: the script reads input.transcript[0]
    return []


def video_meta(wildcards):
    """Title, duration and URL of one video, as listed by the checkpoint."""
    import json

    listing = checkpoints.list_videos.get().output.selected
    with open(listing, encoding="utf-8") as handle:
        videos = {video["id"]: video for video in json.load(handle)["videos"]}
    return videos[wildcards.video]


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


# ---- evaluation (rules/evaluate.smk) ----

def eval_gguf(model):
    return f"{R}/export/gguf/{model}-{config['evaluate']['quant']}.gguf"


# ---- training (rules/train.smk) ----

from tubetune.train.settings import TrainSettings as _TrainSettings  # noqa: E402

# Cross-key checks (iters vs epochs, ...) fail here, before any job starts.
try:
    _TrainSettings.from_config(config["train"])
except ConfigError as _exc:
    raise WorkflowError(str(_exc)) from None


def train_settings():
    """The resolved train settings (profile applied, schema defaults filled): the rule's params."""
    return dict(config["train"])
