# Steps 1-2: list the channel's videos, fetch one transcript per video.


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
    threads: 1
    resources:
        **job_resources("light"),
        youtube=1,
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/list_videos.py"


# The listing is an input only so that Snakemake knows the params come from the checkpoint; ancient()
# keeps a re-listing from refetching every transcript: a video reruns when its own entry (params) changes.
rule fetch_transcript:
    input:
        transcript=local_transcript,
        listing=ancient(f"{R}/videos/selected.json"),
    output:
        transcript=f"{R}/transcripts/{{video}}.json",
    params:
        video=video_meta,
        source=source_settings(FETCH_KEYS),
    log:
        f"{LOGS}/fetch_transcript/{{video}}.log",
    threads: 1
    resources:
        **job_resources("light"),
        youtube=1,
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/fetch_transcript.py"
