"""Steps 10-11 (rules/export.smk): the Hugging Face export, GGUF files and the Ollama Modelfile."""
