# Steps 1-3: list the channel's videos; per shard of videos, each transcript and its chunks.


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
        youtube=youtube_jobs(),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/list_videos.py"


# Step 2 and 3 for one shard of videos: each video's transcript (read from its file, or fetched from
# YouTube through the transcript store) and its chunks. The listing is an input only so that Snakemake
# knows the params come from the checkpoint; ancient() keeps a re-listing from rerunning every shard: a
# shard reruns when its own videos' entries (params) change.
rule transcripts:
    input:
        files=shard_transcript_files,
        listing=ancient(f"{R}/videos/selected.json"),
    output:
        transcripts=directory(f"{R}/transcripts/{{shard}}"),
        chunks=directory(f"{R}/chunks/{{shard}}"),
    params:
        videos=shard_videos,
        source=source_settings(FETCH_KEYS),
        chunk=config["chunk"],
    log:
        f"{LOGS}/transcripts/{{shard}}.log",
    threads: 1
    resources:
        **job_resources("light"),
        youtube=youtube_jobs(),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/transcripts.py"
