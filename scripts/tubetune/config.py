"""Config validation against config.schema.yaml, with defaults filled in and one-line errors."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema import Draft202012Validator, FormatChecker

from tubetune.errors import ConfigError


def _extend_with_default(validator_class: Any) -> Any:
    """A validator that also writes each property's ``default`` into the instance."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Any, instance: Any, schema: Any) -> Iterator[Any]:
        if isinstance(instance, MutableMapping):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    default = subschema["default"]
                    instance[name] = (
                        dict(default)
                        if isinstance(default, dict)
                        else (list(default) if isinstance(default, list) else default)
                    )
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


DefaultFillingValidator = _extend_with_default(Draft202012Validator)


def load_schema(path: str | Path) -> dict[str, Any]:
    with Path(path).open(encoding="utf-8") as handle:
        schema: dict[str, Any] = yaml.safe_load(handle)
    return schema


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _describe(error: jsonschema.ValidationError, schema: Mapping[str, Any]) -> str:
    where = _where(error)
    if error.validator == "additionalProperties":
        unexpected = re.findall(r"'([^']+)'", error.message.split(" was unexpected")[0].split("(")[-1])
        props = error.schema.get("properties") if isinstance(error.schema, dict) else None
        known = sorted((props or {}).keys())
        parts = []
        for key in unexpected or ["?"]:
            full = key if where == "(top level)" else f"{where}.{key}"
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
            parts.append(f"unknown key '{full}'{hint}")
        return "; ".join(parts)
    hint = ""
    expects_number = "number" in str(error.validator_value)
    if error.validator == "type" and isinstance(error.instance, str) and expects_number:
        try:
            float(error.instance)
        except ValueError:
            pass
        else:  # PyYAML (YAML 1.1) reads 1e-4 as text; 1.0e-4 is a number
            hint = " (quoted, or YAML read it as text: YAML needs a dot in 1.0e-4, not 1e-4)"
    return f"{where}: {error.message}{hint}"


def validate_config(config: MutableMapping[str, Any], schema_path: str | Path) -> MutableMapping[str, Any]:
    """Fill defaults into ``config`` in place and check it; raise :class:`ConfigError` with one line.

    The train profile is applied first: ``train_profiles[train.profile]`` supplies values that
    keys given directly under ``train`` override.
    """
    schema = load_schema(schema_path)
    apply_train_profile(config)
    validator = DefaultFillingValidator(schema, format_checker=FormatChecker())
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.path)))
    if errors:
        first = errors[0]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"config error: {_describe(first, schema)}{more}")
    return config


def apply_train_profile(config: MutableMapping[str, Any]) -> None:
    train = config.get("train")
    if not isinstance(train, MutableMapping):
        return
    profiles = config.get("train_profiles") or {}
    name = train.get("profile")
    if name is None:
        return
    if name not in profiles:
        raise ConfigError(
            f"config error: train.profile '{name}' is not defined in train_profiles "
            f"(defined: {', '.join(sorted(profiles)) or 'none'})"
        )
    for key, value in (profiles[name] or {}).items():
        train.setdefault(key, value)
