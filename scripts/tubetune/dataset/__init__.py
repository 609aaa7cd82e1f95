"""Step 7 (rules/dataset.smk): dedup, filter, chat JSONL, split by video, statistics."""
