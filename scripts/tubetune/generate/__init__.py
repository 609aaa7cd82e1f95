"""Steps 3-6 (rules/generate.smk): chunk transcripts, extract questions, validate them, answer them
grounded in their chunk, and write review pages."""
