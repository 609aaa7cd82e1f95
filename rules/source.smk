# Steps 1-2: list the channel's videos, fetch one transcript per video.


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


checkpoint list_videos:
    input:
        listing_input,
        local_transcript_files,
    output:
        selected=f"{R}/videos/selected.json",
        filtered=f"{R}/videos/filtered.tsv",
    params:
        source=source_settings(LIST_KEYS),
    log:
        f"{LOGS}/list_videos.log",
    resources:
        youtube=1,
    script:
        "../scripts/list_videos.py"


# The listing is an input only so that Snakemake knows the params come from the checkpoint; ancient()
# keeps a re-listing from refetching every transcript: a video reruns when its own entry (params) changes.
rule fetch_transcript:
    input:
        transcript=local_transcript,
        listing=ancient(f"{R}/videos/selected.json"),
    output:
        f"{R}/transcripts/{{video}}.json",
    params:
        video=video_meta,
        source=source_settings(FETCH_KEYS),
    log:
        f"{LOGS}/fetch_transcript/{{video}}.log",
    resources:
        youtube=1,
    script:
        "../scripts/fetch_transcript.py"
