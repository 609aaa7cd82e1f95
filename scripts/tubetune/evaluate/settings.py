"""The ``evaluate:`` section of config.yaml, split by the rule that uses each key.

The section also holds keys of other evaluation rules (the judge, the parity check); each rule gets
only the keys of its own settings class (:func:`section_keys`), so that changing one rule's setting
does not rerun the others. Defaults and bounds: config.schema.yaml.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from tubetune.settings import settings_from

SettingsT = TypeVar("SettingsT")


@dataclass(frozen=True)
class AnswerSettings:
    """Rule answer_test: the greedy answers (llama.cpp), the masked test loss (MLX) and their scores."""

    quant: str
    max_new_tokens: int
    seed: int
    repeat_penalty: float
    n_ctx: int
    max_examples: int | None
    loss_batch_size: int
    loss_max_seq_length: int
    refusal_patterns: tuple[str, ...]
    leak_markers: tuple[str, ...]


@dataclass(frozen=True)
class ReportSettings:
    """Rule evaluate: the bootstrap intervals (seed, resamples) and the report."""

    seed: int
    bootstrap_resamples: int
    n_side_by_side: int


def section_keys(cls: type[Any]) -> tuple[str, ...]:
    """The config keys of a settings class (its field names)."""
    return tuple(field.name for field in dataclasses.fields(cls))


def section_part(cls: type[Any], section: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``cls`` from a validated ``evaluate:`` section (a rule's params)."""
    return {key: section[key] for key in section_keys(cls) if key in section}


def evaluate_settings(cls: type[SettingsT], values: Mapping[str, Any]) -> SettingsT:
    """``cls`` built from ``values``: its own keys (a rule's params, or the whole section)."""
    return settings_from(cls, section_part(cls, values), "evaluate")


__all__ = ["AnswerSettings", "ReportSettings", "evaluate_settings", "section_keys", "section_part"]
