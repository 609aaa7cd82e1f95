"""Prices and dollars, the ledger of usage records, and the offline estimate before a run."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from tubetune.config import validate_config
from tubetune.dataset.build import DatasetSettings, Drops, filter_and_dedup
from tubetune.dataset.quality import PLACEHOLDERS as QUALITY_PLACEHOLDERS
from tubetune.dataset.quality import rating_plan
from tubetune.errors import ConfigError, InputFileError
from tubetune.generate.answers import answer_questions
from tubetune.generate.chunk import chunk
from tubetune.generate.prompts import load_prompt
from tubetune.generate.questions import (
    PLACEHOLDERS,
    QuestionSettings,
    extract_questions,
    extraction_plan,
    load_chunks,
    validate_questions,
)
from tubetune.jsonio import read_jsonl, write_json
from tubetune.llm.cache import CachedResponse, ResponseCache
from tubetune.llm.cost import Price, count_tokens, dollars, price_for, price_table, request_tokens
from tubetune.llm.estimate import DEFAULT_OUTPUT_TOKENS_PER_QUESTION, DEFAULT_OUTPUT_TOKENS_PER_UNIT, estimate
from tubetune.llm.estimate_downstream import DownstreamConfig
from tubetune.llm.ledger import ledger_total, llm_ledger
from tubetune.llm.request import LLMRequest, Message
from tubetune.llm.settings import LLMSettings
from tubetune.settings import settings_from
from tubetune.source import fetch_transcript, list_videos

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"
SONNET = Price(input=3.0, output=15.0, cache_write=3.75, cache_read=0.30, batch_discount=0.5)


def project_config() -> dict[str, Any]:
    """config.yaml with every default filled in from config.schema.yaml; paths made absolute."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    validate_config(config, ROOT / "config.schema.yaml")
    config["llm"]["seed_cache_dirs"] = [str(ROOT / d) for d in config["llm"]["seed_cache_dirs"]]
    for section in ("questions", "answers"):
        config[section]["prompt"] = str(ROOT / config[section]["prompt"])
    return config


def question_section(config: dict[str, Any]) -> dict[str, Any]:
    """The questions section without its prompt, as rules/generate.smk passes it."""
    return {k: v for k, v in config["questions"].items() if k != "prompt"}


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def make_chunks(tmp_path: Path, config: dict[str, Any], names: list[str] | None = None) -> list[Path]:
    """Chunk files of the sample's videos (all, or those in ``names``) made by the workflow's own steps."""
    source = dict(config["source"])
    source.update(
        listing=str(ROOT / source["listing"]), transcripts_dir=str(ROOT / source["transcripts_dir"])
    )
    listing = list_videos(source, tmp_path / "selected.json", tmp_path / "filtered.tsv")
    paths = []
    for video in listing.videos:
        if names is not None and video.id not in names:
            continue
        transcript = tmp_path / "transcripts" / f"{video.id}.json"
        local = SAMPLE / "transcripts" / f"{video.id}.json"
        fetch_transcript(video.model_dump(mode="json"), source, local, transcript)
        out = tmp_path / "chunks" / f"{video.id}.jsonl"
        chunk(transcript, out, tmp_path / "chunks" / f"{video.id}.status.json", config["chunk"])
        paths.append(out)
    assert paths
    return paths


def run_estimate(
    tmp_path: Path,
    config: dict[str, Any],
    chunk_paths: list[Path],
    downstream: DownstreamConfig | None = None,
) -> dict[str, Any]:
    result = estimate(
        chunk_paths,
        config["questions"]["prompt"],
        config["answers"]["prompt"],
        config["llm"],
        question_section(config),
        tmp_path / "estimate.json",
        tmp_path / "estimate.md",
        downstream,
    )
    assert json.loads((tmp_path / "estimate.json").read_text()) == result
    return result


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)


# ---------------------------------------------------------------------------------------------- cost


def test_dollars_on_known_numbers() -> None:
    million = 1_000_000
    assert dollars(million, million, price=SONNET) == pytest.approx(18.0)
    assert dollars(million, million, price=SONNET, batch=True) == pytest.approx(9.0)
    assert dollars(cache_read_tokens=million, price=SONNET) == pytest.approx(0.1 * SONNET.input)
    assert dollars(cache_write_tokens=million, price=SONNET) == pytest.approx(1.25 * SONNET.input)
    assert dollars(2_000, 500, 10_000, 1_000, price=SONNET) == pytest.approx(
        (2_000 * 3 + 500 * 15 + 10_000 * 0.3 + 1_000 * 3.75) / million
    )


def test_price_table_from_the_schema_defaults_and_unknown_models() -> None:
    prices = price_table(project_config()["llm"]["prices"])
    assert prices["claude-sonnet-4-6"] == SONNET
    assert prices["claude-haiku-4-5"].input == 1.0 and prices["claude-opus-4-5"].output == 25.0
    assert price_for(prices, "anthropic", "claude-unknown-9") is None
    local = price_for(prices, "llama_cpp", "gguf:model.gguf")
    assert local is not None and dollars(10**6, 10**6, price=local) == 0.0


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"input": 3, "output": 15, "cache_read": 0.3, "batch_discount": 0.5}, "missing cache_write"),
        ({"input": 3, "output": 15, "cache_write": 3, "cache_read": 0.3, "cost": 1}, "unknown key 'cost'"),
        ({"input": -1, "output": 15, "cache_write": 3, "cache_read": 0.3}, "'input' must be a number >= 0"),
        (
            {"input": 3, "output": 15, "cache_write": 3, "cache_read": 0.3, "batch_discount": 0},
            "in \\(0, 1\\]",
        ),
    ],
)
def test_bad_price_entries_are_one_line_errors(entry: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=f"^llm.prices.m: .*{message}") as info:
        price_table({"m": entry})
    assert "\n" not in str(info.value)


def test_offline_token_count() -> None:
    assert count_tokens("") == 0
    assert count_tokens("abcdefg") == 2
    assert count_tokens("x" * 3500) == 1000
    request = LLMRequest("anthropic", "m", "s" * 35, (Message("user", "u" * 70),), {"type": "object"}, 64)
    assert request_tokens(request) == 10 + 20 + count_tokens('{"type":"object"}')


# -------------------------------------------------------------------------------------------- ledger


def record(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "pass": "questions",
        "mode": "online",
        "backend": "anthropic",
        "model": "claude-sonnet-4-6",
        "job": "extract_questions/v1",
        "requests": 10,
        "cache_hits": 4,
        "calls": 7,
        "reasks": 1,
        "valid": 9,
        "invalid": 1,
        "batches": 0,
        "input_tokens": 20_000,
        "output_tokens": 3_000,
        "cache_read_input_tokens": 5_000,
        "cache_creation_input_tokens": 1_000,
        "wall_s": 12.5,
    }
    return base | changes


def write_records(tmp_path: Path, records: list[dict[str, Any]]) -> list[Path]:
    paths = []
    for number, data in enumerate(records):
        path = tmp_path / "usage" / f"{number}.json"
        write_json(path, data)
        paths.append(path)
    return paths


def test_ledger_rows_and_total_are_the_sums_of_the_records(tmp_path: Path) -> None:
    records = [
        record(),
        record(job="extract_questions/v2", calls=3, input_tokens=8_000, wall_s=4.0),
        record(**{"pass": "answers"}, job="answer_questions/v1", output_tokens=9_000),
        record(mode="batch", job="batch/questions", batches=2, reasks=0),
        record(backend="llama_cpp", model="gguf:m.gguf", **{"pass": "answers"}),
    ]
    prices = project_config()["llm"]["prices"]
    ledger = llm_ledger(write_records(tmp_path, records), prices, tmp_path / "l.json", tmp_path / "l.md")
    assert [(r["pass"], r["mode"], r["jobs"]) for r in ledger["rows"]] == [
        ("questions", "online", 2),
        ("answers", "online", 2),
        ("questions", "batch", 1),
    ]
    total = ledger["total"]
    for key in ("requests", "cache_hits", "calls", "reasks", "batches", "input_tokens", "output_tokens"):
        assert total[key] == sum(r[key] for r in records)
        assert total[key] == sum(row[key] for row in ledger["rows"])
    assert total["wall_s"] == pytest.approx(sum(r["wall_s"] for r in records))

    def cost(r: dict[str, Any], batch: bool = False) -> float:
        tokens = (
            r["input_tokens"],
            r["output_tokens"],
            r["cache_read_input_tokens"],
            r["cache_creation_input_tokens"],
        )
        return dollars(*tokens, price=SONNET, batch=batch)

    online = cost(records[0]) + cost(records[1]) + cost(records[2])
    batch = cost(records[3], batch=True)
    assert batch == pytest.approx(cost(records[3]) / 2)
    assert total["dollars"] == pytest.approx(online + batch)
    assert ledger["rows"][1]["dollars"] == pytest.approx(cost(records[2]))  # the llama_cpp job is free
    markdown = (tmp_path / "l.md").read_text()
    assert total["dollars"] < 1
    assert f"Total: ${total['dollars']:,.4f} for {total['calls']} LLM calls" in markdown
    assert ledger_total(tmp_path / "l.json") == {
        key: total[key]
        for key in (
            "requests",
            "cache_hits",
            "calls",
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "dollars",
        )
    }


def test_a_model_without_a_price_makes_dollars_unknown_not_zero(tmp_path: Path) -> None:
    records = [
        record(),
        record(model="claude-future-7"),
        record(
            model="claude-idle-1",
            **dict.fromkeys(
                ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"), 0
            ),
        ),
    ]
    prices = {"claude-sonnet-4-6": vars(SONNET)}
    ledger = llm_ledger(write_records(tmp_path, records), prices, tmp_path / "l.json", tmp_path / "l.md")
    assert ledger["rows"][0]["dollars"] is None and ledger["total"]["dollars"] is None
    assert ledger["unpriced_models"] == ["claude-future-7"]  # no tokens, nothing billed: not unknown
    assert json.loads((tmp_path / "l.json").read_text())["total"]["dollars"] is None
    assert (
        "Total dollars unknown: no price for claude-future-7 (add it to llm.prices)"
        in (tmp_path / "l.md").read_text()
    )
    assert ledger_total(tmp_path / "l.json")["dollars"] is None


def test_bad_usage_record_names_the_file_and_field(tmp_path: Path) -> None:
    [path] = write_records(tmp_path, [record(calls="many")])
    with pytest.raises(InputFileError, match=f"^{path}: usage record field 'calls': "):
        llm_ledger([path], {}, tmp_path / "l.json", tmp_path / "l.md")
    [path] = write_records(tmp_path, [{k: v for k, v in record().items() if k != "pass"}])
    with pytest.raises(InputFileError, match="usage record field 'pass': Field required"):
        llm_ledger([path], {}, tmp_path / "l.json", tmp_path / "l.md")


# ------------------------------------------------------------------------------------------ estimate


def test_estimate_of_the_sample_is_all_cache_hits(tmp_path: Path, offline: None) -> None:
    config = project_config()
    config["llm"]["cache_dir"] = str(tmp_path / "cache")
    config["llm"]["base_url"] = f"http://127.0.0.1:{closed_port()}"
    result = run_estimate(tmp_path, config, make_chunks(tmp_path, config))
    questions, answers = result["passes"]["questions"], result["passes"]["answers"]
    assert questions["requests"] > 10 and answers["requests"] > 10
    assert questions["hits"] == questions["requests"] and answers["hits"] == answers["requests"]
    assert result["totals"]["misses"] == 0 and result["totals"]["input_tokens"] == 0
    assert result["totals"]["dollars_online"] == 0.0 and result["totals"]["dollars_batch"] == 0.0
    assert result["calibration"] == {
        "entries": 0,
        "ratio": None,
        "applied": False,
        "note": "no cache entry written by an API call for claude-sonnet-4-6: counts uncorrected",
    }
    assert questions["output_tokens_source"] == "default measured on data/sample/llm_cache"
    assert "expected cost $0.0000 (online)" in (tmp_path / "estimate.md").read_text()


def test_estimate_with_an_empty_cache_projects_every_request(tmp_path: Path, offline: None) -> None:
    config = project_config()
    config["llm"].update(
        cache_dir=str(tmp_path / "cache"), seed_cache_dirs=[], base_url=f"http://127.0.0.1:{closed_port()}"
    )
    chunk_paths = make_chunks(tmp_path, config, ["Fh7Rt1xWb3E"])
    n_chunks = len(load_chunks(chunk_paths[0]))
    assert n_chunks > 1
    result = run_estimate(tmp_path, config, chunk_paths)
    questions, answers = result["passes"]["questions"], result["passes"]["answers"]
    assert questions["misses"] == questions["requests"] == n_chunks and questions["hits"] == 0
    assert answers["misses"] == answers["projected"] == n_chunks
    assert questions["input_tokens"] > 0 and answers["input_tokens"] > questions["input_tokens"]
    settings = settings_from(QuestionSettings, question_section(config), "questions")
    asked = sum(settings.count_for(c.n_tokens) for c in load_chunks(chunk_paths[0]))
    assert questions["expected_output_tokens"] == round(
        asked * DEFAULT_OUTPUT_TOKENS_PER_QUESTION["questions"]
    )
    assert 0 < result["totals"]["dollars_batch"] < result["totals"]["dollars_online"]
    assert result["totals"]["dollars_batch"] == pytest.approx(
        result["totals"]["dollars_online"] / 2, abs=1e-6
    )
    assert result["totals"]["dollars"] == result["totals"]["dollars_online"]
    assert not questions["prompt_caching"] and not answers["prompt_caching"]
    assert questions["prompt_caching_note"].endswith(
        "< 2,048 minimum for claude-sonnet-4-6: no prompt caching"
    )
    markdown = (tmp_path / "estimate.md").read_text()
    assert f"{n_chunks} answer requests are projected" in markdown
    assert not (tmp_path / "cache").exists()  # nothing was called, nothing stored


def test_estimate_calibrates_on_real_api_replies(tmp_path: Path, offline: None) -> None:
    config = project_config()
    config["llm"].update(cache_dir=str(tmp_path / "cache"), seed_cache_dirs=[])
    chunk_paths = make_chunks(tmp_path, config, ["Fh7Rt1xWb3E"])
    uncalibrated = run_estimate(tmp_path, config, chunk_paths)["passes"]["questions"]

    llm = settings_from(LLMSettings, config["llm"], "llm")
    prompt = load_prompt(config["questions"]["prompt"], PLACEHOLDERS)
    settings = settings_from(QuestionSettings, question_section(config), "questions")
    [(_, _, first), *rest] = extraction_plan(load_chunks(chunk_paths[0]), prompt, settings, llm)
    real = 2 * request_tokens(first)  # the API counted twice as many tokens as the offline count
    reply = {"questions": ["How long should the dough rest before shaping it?"] * 3}
    usage = {"input_tokens": real - 100, "cache_read_input_tokens": 100, "output_tokens": 60}
    ResponseCache(llm.cache_dir).put(first, CachedResponse(first.key(), json.dumps(reply), usage, "end_turn"))

    result = run_estimate(tmp_path, config, chunk_paths)
    calibration, questions = result["calibration"], result["passes"]["questions"]
    assert calibration["entries"] == 1 and calibration["ratio"] == 2.0 and calibration["applied"]
    assert questions["hits"] == 1 and questions["misses"] == len(rest)
    assert questions["counted_input_tokens"] == sum(request_tokens(r) for _, _, r in rest)
    assert questions["input_tokens"] == 2 * questions["counted_input_tokens"]
    assert questions["input_tokens"] > uncalibrated["input_tokens"] - 2 * request_tokens(first)
    assert questions["output_tokens_per_unit"] == 20.0  # 60 output tokens for 3 questions
    assert questions["output_tokens_source"] == "mean of real replies in the cache (3 questions)"
    # the cached reply's questions are validated (duplicates dropped) and answered for real: a miss
    assert result["passes"]["answers"]["projected"] == len(rest)
    assert result["passes"]["answers"]["misses"] == len(rest) + 1


def test_estimate_with_a_local_model_counts_tokens_at_no_cost(tmp_path: Path, offline: None) -> None:
    config = project_config()
    config["llm"].update(
        backend="llama_cpp",
        gguf=str(tmp_path / "tiny.gguf"),
        cache_dir=str(tmp_path / "cache"),
        seed_cache_dirs=[],
    )
    result = run_estimate(tmp_path, config, make_chunks(tmp_path, config, ["Fh7Rt1xWb3E"]))
    assert result["model"] == "gguf:tiny.gguf"
    assert result["totals"]["misses"] > 0 and result["totals"]["input_tokens"] > 0
    assert result["totals"]["dollars_online"] == 0.0 and result["totals"]["dollars_batch"] == 0.0
    assert (
        result["passes"]["questions"]["prompt_caching_note"]
        == "llama_cpp runs locally: no prompt caching, no cost"
    )


def test_prompt_caching_where_the_system_prompt_reaches_the_minimum(tmp_path: Path, offline: None) -> None:
    config = project_config()
    config["llm"].update(cache_dir=str(tmp_path / "cache"), seed_cache_dirs=[])
    chunk_paths = make_chunks(tmp_path, config, ["Fh7Rt1xWb3E"])
    plain = run_estimate(tmp_path, config, chunk_paths)["passes"]["questions"]
    config["llm"]["cache_min_tokens"] = {"claude-sonnet-4-6": 100}
    cached = run_estimate(tmp_path, config, chunk_paths)["passes"]["questions"]
    system, misses = cached["system_prompt_tokens"], cached["misses"]
    assert cached["prompt_caching"] and system >= 100 and misses > 1
    assert cached["prompt_caching_note"].startswith(f"system prompt ~{system:,} tokens >= 100 minimum")
    assert cached["cache_write_tokens"] == system and cached["cache_read_tokens"] == system * (misses - 1)
    plain_input = cached["input_tokens"] - system * misses
    expected = dollars(
        plain_input, cached["expected_output_tokens"], system * (misses - 1), system, price=SONNET
    )
    assert cached["dollars_online"] == pytest.approx(expected, abs=1e-6)
    assert cached["dollars_online"] < plain["dollars_online"]
    del config["llm"]["cache_min_tokens"]["claude-sonnet-4-6"]
    none = run_estimate(tmp_path, config, chunk_paths)["passes"]["questions"]
    assert (
        none["prompt_caching_note"]
        == "no llm.cache_min_tokens entry for claude-sonnet-4-6: no prompt caching"
    )


# ------------------------------------------------------------ estimate: quality, augment and the judge


def downstream_config(
    config: dict[str, Any], tmp_path: Path, *, quality: bool = False, paraphrases: int = 0, judge: bool = True
) -> DownstreamConfig:
    """The passes after the answers as rule estimate passes them: a section (with its prompt) per pass
    that is on, None for a pass that is off."""

    def section(name: str, **changes: Any) -> dict[str, Any]:
        return {**config[name], **changes, "prompt": str(ROOT / config[name]["prompt"])}

    return DownstreamConfig(
        selected=tmp_path / "selected.json",  # written by make_chunks
        dataset=config["dataset"],
        quality=section("quality", enabled=True) if quality else None,
        augment=section("augment", paraphrases=paraphrases) if paraphrases else None,
        judge=section("judge") if judge else None,
        max_new_tokens=config["evaluate"]["max_new_tokens"],
    )


def test_estimate_of_the_sample_with_the_default_passes(tmp_path: Path, offline: None) -> None:
    config = project_config()
    config["llm"]["cache_dir"] = str(tmp_path / "cache")
    chunk_paths = make_chunks(tmp_path, config)
    result = run_estimate(tmp_path, config, chunk_paths, downstream_config(config, tmp_path))
    passes = result["passes"]
    assert list(passes) == ["questions", "answers", "judge"]  # quality and augment are off by default
    assert passes["questions"]["misses"] == passes["answers"]["misses"] == 0
    judge = passes["judge"]
    # two requests per question of the sample's test split (26 questions, config.yaml dataset.split);
    # the answers to judge come from training, so every request is projected
    assert judge["requests"] == judge["misses"] == judge["projected"] == 2 * 26 and judge["hits"] == 0
    assert judge["output_tokens_source"] == "default measured on data/sample/llm_cache"
    assert judge["expected_output_tokens"] == round(52 * DEFAULT_OUTPUT_TOKENS_PER_UNIT["judge"])
    assert result["totals"]["misses"] == 52 and result["totals"]["dollars_online"] > 0
    markdown = (tmp_path / "estimate.md").read_text()
    assert "| judge | 52 | 0 | 52 | 52 |" in markdown
    assert (
        "52 judge requests are projected (the base and tuned answers exist only after training): two per "
        "test question, the 26 questions of the test split, known from the cached replies" in markdown
    )

    # augmentation: the seed cache holds the paraphrases of the sample's train split, so every request
    # the run would send is rendered exactly and found; the judge off: no row
    result = run_estimate(
        tmp_path, config, chunk_paths, downstream_config(config, tmp_path, paraphrases=3, judge=False)
    )
    augment = result["passes"]["augment"]
    assert list(result["passes"]) == ["questions", "answers", "augment"]
    assert augment["requests"] == augment["hits"] == 28 and augment["misses"] == 0
    assert result["totals"]["misses"] == 0


def test_estimate_with_an_empty_cache_projects_the_later_passes(tmp_path: Path, offline: None) -> None:
    config = project_config()
    config["llm"].update(cache_dir=str(tmp_path / "cache"), seed_cache_dirs=[])
    chunk_paths = make_chunks(tmp_path, config, ["Fh7Rt1xWb3E"])
    chunks = load_chunks(chunk_paths[0])
    settings = settings_from(QuestionSettings, question_section(config), "questions")
    asked = sum(settings.count_for(c.n_tokens) for c in chunks)
    downstream = downstream_config(config, tmp_path, quality=True, paraphrases=2)
    result = run_estimate(tmp_path, config, chunk_paths, downstream)
    passes = result["passes"]
    assert list(passes) == ["questions", "answers", "quality", "augment", "judge"]
    split = config["dataset"]["split"]
    expected = {
        "quality": len(chunks),  # one per chunk
        "augment": round(split["train"] * len(chunks)),  # one per train chunk
        "judge": 2 * round(split["test"] * asked),  # two per test question
    }
    for name, requests in expected.items():
        data = passes[name]
        assert data["requests"] == data["misses"] == data["projected"] == requests > 0, name
        assert data["input_tokens"] > 0 and data["dollars_online"] > data["dollars_batch"] > 0, name
    assert passes["quality"]["units_in_misses"] == asked  # every pair expected is rated
    assert passes["augment"]["output_unit"] == "paraphrase"
    totals = result["totals"]
    assert totals["requests"] == sum(p["requests"] for p in passes.values())
    assert totals["dollars_online"] == pytest.approx(sum(p["dollars_online"] for p in passes.values()))
    markdown = (tmp_path / "estimate.md").read_text()
    for name in expected:
        assert f"{expected[name]} {name} requests are projected" in markdown
    assert f"dataset.split.train {split['train']:g} of the {len(chunks)} chunks with pairs" in markdown
    assert not (tmp_path / "cache").exists()

    disabled = downstream_config(config, tmp_path, judge=False)
    config["judge"]["enabled"] = False  # a section that is passed but off: no row either
    off = DownstreamConfig(**{**vars(disabled), "judge": {**config["judge"], "prompt": "unused.md"}})
    for item in (disabled, off):
        assert list(run_estimate(tmp_path, config, chunk_paths, item)["passes"]) == ["questions", "answers"]


def qa_files(tmp_path: Path, config: dict[str, Any], chunk_paths: list[Path]) -> list[Path]:
    """The Q&A files of the workflow's own passes (extract, validate, answer) from the seed cache."""
    paths = []
    for chunks in chunk_paths:
        folder = tmp_path / "qa"
        raw, questions = folder / f"{chunks.stem}.raw.jsonl", folder / f"{chunks.stem}.jsonl"
        extract_questions(chunks, config["questions"]["prompt"], raw, config["llm"], question_section(config))
        quarantine = folder / f"{chunks.stem}.quarantine.jsonl"
        validate_questions(raw, chunks, questions, quarantine, question_section(config))
        qa, dropped = folder / f"{chunks.stem}.qa.jsonl", folder / f"{chunks.stem}.dropped.jsonl"
        answer_questions(questions, chunks, config["answers"]["prompt"], qa, dropped, config["llm"])
        paths.append(qa)
    return paths


def test_a_cached_quality_rating_is_a_hit(tmp_path: Path, offline: None) -> None:
    config = project_config()
    config["llm"].update(cache_dir=str(tmp_path / "cache"), base_url=f"http://127.0.0.1:{closed_port()}")
    chunk_paths = make_chunks(tmp_path, config)
    # the pairs build_dataset would rate, and the first request the quality pass would send for them
    rows = sorted((row for path in qa_files(tmp_path, config, chunk_paths) for row in read_jsonl(path)),
                  key=lambda row: str(row["qa_id"]))
    dataset = settings_from(DatasetSettings, config["dataset"], "dataset")
    channel = json.loads((tmp_path / "selected.json").read_text())["channel"]["name"]
    kept = filter_and_dedup(rows, dataset, dataset.system_prompt.replace("{channel}", channel), Drops())
    llm = settings_from(LLMSettings, config["llm"], "llm")
    prompt = load_prompt(ROOT / config["quality"]["prompt"], QUALITY_PLACEHOLDERS)
    chunks = {chunk.chunk_id: chunk for chunk in load_chunks(*chunk_paths)}
    plan = rating_plan(kept, chunks, prompt, llm)
    _, pairs, request = plan[0]
    ratings = [
        {"index": i, "grounded": 5, "self_contained": 5, "useful": 5, "reason": "Stated in the excerpt."}
        for i in range(1, len(pairs) + 1)
    ]
    reply = json.dumps({"ratings": ratings})
    ResponseCache(llm.cache_dir).put(request, CachedResponse(request.key(), reply, {}, "end_turn"))

    result = run_estimate(tmp_path, config, chunk_paths, downstream_config(config, tmp_path, quality=True))
    quality = result["passes"]["quality"]
    assert quality["requests"] == len(plan) > 1
    assert quality["hits"] == 1 and quality["misses"] == len(plan) - 1 and quality["projected"] == 0
    assert quality["output_tokens_per_unit"] == DEFAULT_OUTPUT_TOKENS_PER_UNIT["quality"]
    # the other chunks' ratings are missing: the judge's test split assumes the quality judge drops none
    assert "assuming the quality judge drops none" in (tmp_path / "estimate.md").read_text()
