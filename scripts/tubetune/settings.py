"""Settings dataclasses from validated config sections: :func:`settings_from`.

A settings dataclass has required fields only (config.schema.yaml holds the defaults and bounds, and
:func:`tubetune.config.validate_config` fills them in). This module imports no schema validator, so a
per-video job pays only for pydantic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping
from functools import cache
from typing import Any, TypeVar, cast

import pydantic

from tubetune.errors import ConfigError

SettingsT = TypeVar("SettingsT")


def settings_from(cls: type[SettingsT], values: Mapping[str, Any], section: str) -> SettingsT:
    """A settings dataclass from a validated config section (its keys are the dataclass's fields).

    Values are converted to the field types (a YAML list to a tuple, an int to a float); a key that
    is not a field, or a field missing from ``values``, is an error naming ``section``. The
    dataclass's ``__post_init__`` runs its cross-key checks and raises :class:`ConfigError`.
    """
    names = [field.name for field in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown key '{section}.{unknown[0]}' (known keys: {', '.join(names)})")
    missing = [name for name in names if name not in values]
    if missing:
        raise ConfigError(f"{section}: missing key '{missing[0]}' (a config validated by the schema has it)")
    try:
        return _adapter(cls).validate_python(dict(values))
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in (section, *error["loc"]))
        raise ConfigError(f"config error: {where}: {error['msg']}") from None


@cache
def _adapter_of(cls: Hashable) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(cast(Any, cls))


def _adapter(cls: type[SettingsT]) -> pydantic.TypeAdapter[SettingsT]:
    """One pydantic adapter per settings class (building one takes milliseconds; sweeps build many)."""
    return cast("pydantic.TypeAdapter[SettingsT]", _adapter_of(cast(Hashable, cls)))
