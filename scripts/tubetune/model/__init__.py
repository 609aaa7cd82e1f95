"""Base model conversion and exports (GGUF, Hugging Face, Ollama)."""
