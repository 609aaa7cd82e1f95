"""LLM throughput benchmark: ``snakemake dataset`` on a synthetic channel, online at several concurrencies
and in Message Batches mode, against the fake Anthropic API with a latency model.

Not a test: run it by hand and read the table.

    .venv/bin/python bench/llm_throughput.py                         # 100 videos, every configuration
    .venv/bin/python bench/llm_throughput.py --videos 3 --configs online1,batch

Each configuration runs in its own copy of the workflow (tests/workflow.py ``copy_workflow``) with a
fresh LLM cache and no seed cache, on the same ``--videos`` synthetic transcripts (a ``local`` source
with a saved listing; 2,000-3,000 words of lowercase auto-caption-like speech per video, 10-20 minutes,
about 6 chunks at chunk.max_tokens 600; the same for the same ``--seed``). A fresh fake server
(tests/fake_anthropic.py) answers with ``channel_responder`` after ``Latency(--first-token-s,
--tokens-per-s)``; batches take ``--batch-processing-s`` to end. Snakemake runs as
``snakemake --cores 2 --resources llm_requests=<max(16, concurrency)> dataset`` with
``ANTHROPIC_API_KEY=sk-bench`` and ``llm.base_url`` set to the fake server.

Configurations: online1, online2, online8, online16 (llm.mode online, llm.concurrency 1/2/8/16) and
batch (llm.mode batch, llm.batch_poll_s ``--batch-poll-s``). Columns: wall time of the Snakemake run,
backend calls (/v1/messages requests plus batch items the fake served), the most /v1/messages requests
in flight at once, Snakemake jobs run, examples in the dataset (train + valid + test) and the speed-up
over online1 (when online1 ran). Results: ``<out>/llm_throughput.json`` and ``<out>/llm_throughput.md``.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import logging
import os
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests")]

from fake_anthropic import FakeAnthropic, Latency, channel_responder  # noqa: E402
from workflow import copy_workflow, edit_config, snakemake  # noqa: E402

logger = logging.getLogger("llm_throughput")

# name -> (llm.mode, llm.concurrency)
CONFIGS: dict[str, tuple[str, int]] = {
    "online1": ("online", 1),
    "online2": ("online", 2),
    "online8": ("online", 8),
    "online16": ("online", 16),
    "batch": ("batch", 8),
}
SAMPLE_LISTING = ROOT / "data" / "sample" / "channel.json"
CHANNEL = "Proof & Crumb"

# ----------------------------------------------------------------------------- synthetic channel

TOPICS: dict[str, list[str]] = {
    "sourdough": [
        "starter", "levain", "flour", "rye", "spelt", "banneton", "dough", "crumb", "crust", "hydration",
        "autolyse", "salt", "water", "jar", "hooch", "discard", "loaf", "boule", "batard", "scoring", "lame",
        "bench", "scraper", "dutch", "oven", "steam",
    ],
    "pizza": [
        "pizza", "neapolitan", "semolina", "peel", "stone", "steel", "mozzarella", "basil", "tomatoes",
        "passata", "cornicione", "leopard", "spotting", "dough", "balls", "tray", "fridge", "oregano",
        "pepperoni", "calzone", "char", "blister",
    ],
    "pastry": [
        "butter", "lamination", "croissant", "puff", "pastry", "danish", "egg", "wash", "sugar", "syrup",
        "glaze", "folds", "block", "sheeter", "rolling", "pin", "almond", "cream", "chocolate", "batons",
        "proofing", "cabinet", "layers",
    ],
    "bagels": [
        "bagel", "malt", "barley", "syrup", "poppy", "sesame", "everything", "seasoning", "boil", "kettle",
        "lye", "pretzel", "knots", "buns", "brioche", "challah", "braid", "milk", "bread", "tangzhong",
        "roux", "sandwich", "tin",
    ],
    "flatbread": [
        "naan", "pita", "tortilla", "lavash", "griddle", "cast", "iron", "skillet", "yogurt", "ghee",
        "garlic", "nigella", "chapati", "roti", "paratha", "masa", "harina", "comal", "pocket", "puff",
        "charring",
    ],
    "cakes": [
        "sponge", "genoise", "chiffon", "meringue", "whites", "yolks", "cream", "cheese", "frosting",
        "buttercream", "ganache", "springform", "parchment", "crumb", "coat", "turntable", "offset",
        "spatula", "vanilla", "caramel",
    ],
}
VERBS = [
    "feed", "mix", "fold", "shape", "score", "bake", "proof", "rest", "stretch", "knead", "cool", "slice",
    "weigh", "whisk", "chill", "roll", "laminate", "divide", "preshape", "degas", "steam", "brush", "dust",
    "sprinkle", "soak", "toast", "melt", "temper", "pipe", "glaze", "boil", "simmer",
]
ADJECTIVES = [
    "bubbly", "sticky", "slack", "tight", "jiggly", "glossy", "dense", "airy", "open", "tangy", "mild",
    "crisp", "golden", "blistered", "tender", "chewy", "flaky", "smooth", "domed", "flat", "springy", "pale",
    "dark", "sour", "sweet", "nutty", "buttery",
]
NUMBERS = (
    "two", "three", "four", "five", "six", "eight", "ten", "twelve", "fifteen", "twenty", "twenty five",
    "thirty", "forty", "fifty", "sixty", "seventy", "seventy five", "eighty", "ninety", "a hundred",
    "two hundred", "two hundred and thirty",
)
UNITS = ("minutes", "hours", "grams", "degrees", "percent", "seconds")
FILLERS = ("um", "so", "okay", "and", "now", "honestly", "basically", "right")
SENTENCES = (
    "so the first thing i do is {verb} the {noun} for about {num} {unit}",
    "you want the {noun} to feel {adj} before you {verb} it",
    "if the {noun} looks {adj} that usually means the {noun2} was too {adj2}",
    "i like to {verb} my {noun} at around {num} {unit}",
    "a lot of you asked about {noun} and honestly it comes down to the {noun2}",
    "now watch what happens when i {verb} the {noun}",
    "the trick with {noun} is to {verb} it slowly and keep the {noun2} {adj}",
    "this is where most people go wrong with {noun}",
    "give it {num} {unit} and check the {noun} again",
    "let me show you the {noun} after {num} {unit}",
    "see how {adj} that is that is exactly what a good {noun} looks like",
    "i used to {verb} the {noun} every time but now i {verb2} it instead",
    "if you do not have a {noun} a {noun2} works fine too",
    "the {noun} should be {adj} not {adj2}",
    "for the {noun} i use {num} {unit} of {noun2}",
)
TITLES = (
    "How I {Verb} {Noun} Every Time",
    "{Num} {Noun} Mistakes and How to Fix Them",
    "The {Adj} {Noun} Method",
    "Why Your {Noun} Is {Adj}",
    "{Noun} for Beginners: Start to Finish",
    "{Adj} {Noun}, {Adj2} {Noun2}",
    "I Tried {Num} Ways to {Verb} {Noun}",
    "Everything About {Noun}",
)


@dataclass(frozen=True)
class SyntheticVideo:
    video_id: str
    title: str
    duration: float
    snippets: list[dict[str, Any]]

    @property
    def words(self) -> int:
        return sum(len(s["text"].split()) for s in self.snippets)


def video_id(seed: int, index: int) -> str:
    digest = hashlib.sha256(f"bench-video-{seed}-{index}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:11]


def _sentence(rng: random.Random, nouns: list[str]) -> str:
    noun, noun2 = rng.sample(nouns, 2)
    adj, adj2 = rng.sample(ADJECTIVES, 2)
    verb, verb2 = rng.sample(VERBS, 2)
    text = rng.choice(SENTENCES).format(
        noun=noun,
        noun2=noun2,
        adj=adj,
        adj2=adj2,
        verb=verb,
        verb2=verb2,
        num=rng.choice(NUMBERS),
        unit=rng.choice(UNITS),
    )
    if rng.random() < 0.3:
        text = f"{rng.choice(FILLERS)} {text}"
    return text


def synthetic_video(seed: int, index: int) -> SyntheticVideo:
    """One video: 2,000-3,000 words spoken at 2.2-3.0 words/s (10-20 minutes), 4-10 words a caption."""
    rng = random.Random(f"{seed}-{index}")
    topics = list(TOPICS)
    main = topics[index % len(topics)]
    nouns = TOPICS[main] + rng.sample(TOPICS[rng.choice(topics)], 8)
    target = rng.randint(2000, 3000)
    rate = min(3.0, max(2.2, target / rng.uniform(600, 1200)))
    words: list[str] = []
    while len(words) < target:
        words.extend(_sentence(rng, nouns).split())
    snippets: list[dict[str, Any]] = [{"text": "[Music]", "start": 0.3, "duration": 4.0}]
    clock = 4.3
    position = 0
    while position < len(words):
        size = rng.randint(4, 10)
        text = " ".join(words[position : position + size])
        spoken = len(text.split()) / rate
        snippets.append({"text": text, "start": round(clock, 3), "duration": round(spoken * 1.4, 3)})
        clock += spoken
        position += size
    snippets.append({"text": "[Music]", "start": round(clock, 3), "duration": 4.0})
    fields = {
        "Noun": rng.choice(nouns).title(),
        "Noun2": rng.choice(nouns).title(),
        "Verb": rng.choice(VERBS).title(),
        "Adj": rng.choice(ADJECTIVES).title(),
        "Adj2": rng.choice(ADJECTIVES).title(),
        "Num": str(rng.randint(3, 9)),
    }
    title = TITLES[index % len(TITLES)].format(**fields)
    return SyntheticVideo(video_id(seed, index), title, round(clock + 4.0, 1), snippets)


def write_channel(folder: Path, n_videos: int, seed: int) -> list[SyntheticVideo]:
    """``folder``/transcripts/<id>.json (youtube-transcript-api format) and ``folder``/channel.json
    (a yt-dlp flat listing shaped like data/sample/channel.json)."""
    transcripts = folder / "transcripts"
    transcripts.mkdir(parents=True, exist_ok=True)
    videos = [synthetic_video(seed, index) for index in range(n_videos)]
    sample = json.loads(SAMPLE_LISTING.read_text(encoding="utf-8"))
    template = sample["entries"][0]
    entries = []
    for index, video in enumerate(videos):
        (transcripts / f"{video.video_id}.json").write_text(json.dumps(video.snippets), encoding="utf-8")
        entry = copy.deepcopy(template)
        entry.update(
            id=video.video_id,
            url=f"https://www.youtube.com/watch?v={video.video_id}",
            title=video.title,
            duration=video.duration,
            view_count=1000 + 37 * index,
            thumbnails=[],
        )
        entries.append(entry)
    listing = {**sample, "channel": CHANNEL, "title": f"{CHANNEL} - Videos", "entries": entries}
    (folder / "channel.json").write_text(json.dumps(listing, indent=1), encoding="utf-8")
    return videos


# ----------------------------------------------------------------------------- one configuration

_STEPS = re.compile(r"^(\d+) of (\d+) steps", re.MULTILINE)


@dataclass
class Result:
    config: str
    mode: str
    concurrency: int
    ok: bool
    wall_s: float
    backend_calls: int
    batches: int
    max_in_flight: int
    jobs: int
    examples: int
    error: str = ""


def count_examples(workdir: Path) -> int:
    total = 0
    for split in ("train", "valid", "test"):
        path = workdir / "results" / "dataset" / f"{split}.jsonl"
        if path.exists():
            total += sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return total


def run_config(name: str, channel: Path, n_videos: int, work: Path, args: argparse.Namespace) -> Result:
    mode, concurrency = CONFIGS[name]
    workdir = copy_workflow(work / name)
    latency = Latency(first_token_s=args.first_token_s, tokens_per_s=args.tokens_per_s)
    with FakeAnthropic(latency=latency, batch_processing_s=args.batch_processing_s) as server:
        server.respond_with(channel_responder)
        edit_config(
            workdir,
            source={
                "type": "local",
                "channel": CHANNEL,
                "listing": str(channel / "channel.json"),
                "transcripts_dir": str(channel / "transcripts"),
                "max_videos": n_videos,
            },
            llm={
                "backend": "anthropic",
                "base_url": server.base_url,
                "cache_dir": "cache/llm",
                "seed_cache_dirs": [],
                "mode": mode,
                "concurrency": concurrency,
                "batch_poll_s": args.batch_poll_s,
            },
        )
        resources = f"llm_requests={max(16, concurrency)}"
        logger.info("%s: snakemake --cores 2 --resources %s dataset (%s)", name, resources, workdir)
        started = time.monotonic()
        env = {"ANTHROPIC_API_KEY": "sk-bench"}
        run = snakemake(workdir, "dataset", "--resources", resources, env=env, timeout=args.timeout)
        wall = time.monotonic() - started
        steps = _STEPS.findall(run.output)
        result = Result(
            config=name,
            mode=mode,
            concurrency=concurrency,
            ok=run.returncode == 0,
            wall_s=round(wall, 1),
            backend_calls=server.backend_calls(),
            batches=len(server.batches),
            max_in_flight=server.max_in_flight,
            jobs=int(steps[-1][0]) if steps else 0,
            examples=count_examples(workdir),
        )
    if not result.ok:
        tail = [line for line in run.output.splitlines() if line.strip()][-15:]
        result.error = "\n".join(tail)
        logger.error("%s failed (exit %d):\n%s", name, run.returncode, result.error)
    logger.info("%s: %.1f s, %d backend calls, %d jobs", name, wall, result.backend_calls, result.jobs)
    return result


# ----------------------------------------------------------------------------- report


def markdown(results: list[Result], settings: dict[str, Any]) -> str:
    base = next((r for r in results if r.config == "online1" and r.ok), None)
    lines = [
        f"{settings['videos']} synthetic videos ({settings['words']} words), "
        f"Latency({settings['first_token_s']} s first token, {settings['tokens_per_s']} tokens/s), "
        f"batches end after {settings['batch_processing_s']} s, llm.batch_poll_s {settings['batch_poll_s']}.",
        "",
        "| configuration | wall s | backend calls | max in flight | Snakemake jobs | examples "
        "| speed-up vs online1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        label = f"online, concurrency {r.concurrency}"
        if r.mode == "batch":
            label = f"batch ({r.batches} batches)"
        speedup = f"{base.wall_s / r.wall_s:.1f}x" if base and r.ok and r.wall_s else ""
        wall = f"{r.wall_s:.1f}" if r.ok else f"failed after {r.wall_s:.1f}"
        cells = (label, wall, r.backend_calls, r.max_in_flight, r.jobs, r.examples, speedup)
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def parse_configs(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown or not names:
        given = ", ".join(unknown) or "(none given)"
        raise SystemExit(f"--configs: unknown {given}; choose from {', '.join(CONFIGS)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=100, help="synthetic videos (default 100)")
    choices = ",".join(CONFIGS)
    parser.add_argument("--configs", default=choices, help=f"comma-separated subset of {choices}")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic transcripts")
    parser.add_argument("--first-token-s", type=float, default=0.6)
    parser.add_argument("--tokens-per-s", type=float, default=60.0)
    parser.add_argument("--batch-processing-s", type=float, default=5.0, help="seconds until a batch ends")
    parser.add_argument("--batch-poll-s", type=float, default=1.0, help="llm.batch_poll_s of the batch run")
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per Snakemake run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--keep", action="store_true", help="keep the temp workflow copies (path is logged)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.videos < 3:
        raise SystemExit("--videos: at least 3 (one video each for train, valid and test)")
    names = parse_configs(args.configs)

    load_before = round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="tubetune-llm-throughput-"))
    try:
        channel = work / "channel"
        videos = write_channel(channel, args.videos, args.seed)
        words = sum(video.words for video in videos)
        logger.info("%d synthetic videos, %d words, in %s", len(videos), words, channel)
        results = [run_config(name, channel, args.videos, work, args) for name in names]
    finally:
        if args.keep:
            logger.info("workflow copies kept in %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)

    settings = {
        "videos": args.videos,
        "words": words,
        "seed": args.seed,
        "first_token_s": args.first_token_s,
        "tokens_per_s": args.tokens_per_s,
        "batch_processing_s": args.batch_processing_s,
        "batch_poll_s": args.batch_poll_s,
        "cores": 2,
        "cpu_count": os.cpu_count(),
        "load_before": load_before,
    }
    table = markdown(results, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "llm_throughput.md").write_text(table, encoding="utf-8")
    report = {"settings": settings, "results": [asdict(r) for r in results]}
    (args.out / "llm_throughput.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(table)
    if not all(r.ok for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
