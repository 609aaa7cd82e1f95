"""Hyper-parameter sweep: the ``sweep`` section of the config expanded into named training runs.

Every non-empty list under ``sweep`` (``learning_rate``, ``rank``, ``num_layers``) is a swept key;
the runs are the cartesian product of those lists applied over the resolved ``train`` section
(profile applied, defaults filled). Without a swept key there is exactly one run, ``default``.

Run names are built from the swept keys only, so they are readable and stay the same when another
point is added (``lr5e-05``, ``lr1e-04_r16_l8``, ``l-1`` is spelled ``lall``); the learning rate is
written with the fewest digits that still read back as the same number, so two different rates never
share a name.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from tubetune.errors import ConfigError
from tubetune.settings import settings_from
from tubetune.train.settings import TrainSettings

DEFAULT_RUN = "default"
SWEPT_KEYS: tuple[str, ...] = ("learning_rate", "rank", "num_layers")
PREFIXES: dict[str, str] = {"learning_rate": "lr", "rank": "r", "num_layers": "l"}


def format_learning_rate(value: float) -> str:
    """The shortest ``%e`` form that reads back as ``value``: 5e-5 -> ``5e-05``, 2.5e-5 -> ``2.5e-05``."""
    number = float(value)
    for digits in range(17):
        text = f"{number:.{digits}e}"
        if float(text) == number:
            return text
    return repr(number)


def format_value(key: str, value: Any) -> str:
    """One swept value as it appears in a run name."""
    if key == "learning_rate":
        return format_learning_rate(value)
    if key == "num_layers" and int(value) == -1:
        return "all"
    return str(int(value))


def run_name(point: Mapping[str, Any]) -> str:
    """Name of a sweep point (swept key -> value), keys in :data:`SWEPT_KEYS` order."""
    parts = [f"{PREFIXES[key]}{format_value(key, point[key])}" for key in SWEPT_KEYS if key in point]
    return "_".join(parts) or DEFAULT_RUN


def swept_values(sweep: Mapping[str, Any] | None) -> dict[str, list[Any]]:
    """The swept keys (non-empty lists) in :data:`SWEPT_KEYS` order, with their values."""
    sweep = sweep or {}
    unknown = sorted(set(sweep) - set(SWEPT_KEYS) - {"select_by"})
    if unknown:
        raise ConfigError(
            f"config error: unknown sweep key(s) {', '.join(unknown)} (known: {', '.join(SWEPT_KEYS)})"
        )
    values: dict[str, list[Any]] = {}
    for key in SWEPT_KEYS:
        items = sweep.get(key) or []
        if not isinstance(items, Sequence) or isinstance(items, str):
            raise ConfigError(f"config error: sweep.{key} must be a list")
        if items:
            values[key] = list(items)
    return values


def sweep_points(sweep: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The cartesian product of the swept lists, as swept key -> value dicts (one empty dict: no sweep)."""
    values = swept_values(sweep)
    keys = list(values)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(values[k] for k in keys))]


def _point_error(
    train: Mapping[str, Any], point: Mapping[str, Any], name: str, exc: ConfigError
) -> ConfigError:
    """The one-line error of a bad point, naming the sweep key whose value alone breaks the settings."""
    culprit = ", ".join(f"sweep.{key} = {value}" for key, value in point.items())
    for key, value in point.items():
        try:
            settings_from(TrainSettings, {**train, key: value}, "train")
        except ConfigError:
            culprit = f"sweep.{key} = {value}"
            break
    reason = str(exc).removeprefix("config error: ")
    return ConfigError(f"config error: sweep run '{name}' ({culprit}): {reason}")


def sweep_runs(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Run name -> the full train settings of that run (``config`` validated, train profile applied).

    Every run's settings are built as :class:`TrainSettings`, so a bad point stops the workflow before
    any job starts, with one line naming the sweep key.
    """
    train = dict(config["train"])
    settings_from(TrainSettings, train, "train")  # an error of the train section itself names no sweep key
    runs: dict[str, dict[str, Any]] = {}
    for point in sweep_points(config.get("sweep")):
        name = run_name(point)
        if name in runs:
            raise ConfigError(f"config error: two sweep points are both named '{name}': remove the duplicate")
        settings = {**train, **point}
        try:
            settings_from(TrainSettings, settings, "train")
        except ConfigError as exc:
            raise _point_error(train, point, name, exc) from None
        runs[name] = settings
    return runs
