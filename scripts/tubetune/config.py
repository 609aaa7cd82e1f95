"""Config validation against config.schema.yaml, with defaults filled in and one-line errors.

The schema is the only place that holds defaults and bounds. A step's settings object is a dataclass
with required fields, built by :func:`tubetune.settings.settings_from` from its validated config
section; the dataclass itself checks only what the schema cannot (relations between keys).
:func:`section_config` gives a validated section with the schema's defaults (for code and tests that
run a step without a workflow).
"""

from __future__ import annotations

import copy
import difflib
import logging
import re
from collections.abc import Iterator, Mapping, MutableMapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema import Draft202012Validator, FormatChecker

from tubetune.errors import ConfigError

logger = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config.schema.yaml"


def _extend_with_default(validator_class: Any) -> Any:
    """A validator that also writes each property's ``default`` into the instance."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Any, instance: Any, schema: Any) -> Iterator[Any]:
        if isinstance(instance, MutableMapping):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


DefaultFillingValidator = _extend_with_default(Draft202012Validator)


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    return _load_schema(str(Path(path).resolve()))


@cache
def _load_schema(path: str) -> dict[str, Any]:
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
    return f"{where}: {error.message}"


# PyYAML (YAML 1.1) reads 1e-4 and 5E-6 as text: a float needs a dot there (1.0e-4).
_YAML11_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _coerce_exponent_numbers(
    config: MutableMapping[str, Any], errors: list[jsonschema.ValidationError]
) -> int:
    """Turn strings such as ``1e-4`` that the schema wants as numbers into floats, in place.

    YAML 1.2 and JSON read ``1e-4`` as a number; PyYAML (and so Snakemake) reads it as text. The
    schema decides: only where a number is expected and text is not allowed. Returns how many.
    """
    fixed = 0
    for error in errors:
        value = error.validator_value
        allowed = value if isinstance(value, list) else [value]
        if (
            error.validator != "type"
            or "number" not in allowed
            or "string" in allowed
            or not isinstance(error.instance, str)
            or not _YAML11_EXPONENT.match(error.instance.strip())
            or not error.absolute_path
        ):
            continue
        *parents, last = error.absolute_path
        container: Any = config
        for key in parents:
            container = container[key]
        container[last] = float(error.instance)
        logger.debug("config: read '%s' at %s as a number", error.instance, _where(error))
        fixed += 1
    return fixed


def validate_config(config: MutableMapping[str, Any], schema_path: str | Path) -> MutableMapping[str, Any]:
    """Fill defaults into ``config`` in place and check it; raise :class:`ConfigError` with one line.

    The train profile is applied first: ``train_profiles[train.profile]`` supplies values that
    keys given directly under ``train`` override.
    """
    schema = load_schema(schema_path)
    apply_train_profile(config)
    validator = DefaultFillingValidator(schema, format_checker=FormatChecker())
    errors = list(validator.iter_errors(config))
    if _coerce_exponent_numbers(config, errors):
        errors = list(validator.iter_errors(config))
    errors.sort(key=lambda e: (len(e.absolute_path), str(e.path)))
    if errors:
        first = errors[0]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"config error: {_describe(first, schema)}{more}")
    _schema_order(config, schema, schema)
    return config


def _schema_order(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> None:
    """Put the keys of every mapping in ``value`` in the schema's order, in place (keys the schema does
    not name, such as model names in ``llm.prices``, after them, sorted).

    Rules get config sections as params, and Snakemake compares params by their text: without a fixed
    order, writing a default value into config.yaml would move its key and rerun the rule.
    """
    while isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#/"):
        target: Any = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        schema = target
    if isinstance(value, MutableMapping):
        properties: Mapping[str, Any] = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        other: Mapping[str, Any] = extra if isinstance(extra, Mapping) else {}
        keys = [key for key in properties if key in value]
        keys += sorted((key for key in value if key not in properties), key=str)
        items = [(key, value[key]) for key in keys]
        value.clear()
        for key, item in items:
            _schema_order(item, properties.get(key, other), root)
            value[key] = item
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for item in value:
            _schema_order(item, schema["items"], root)


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


def section_config(
    section: str, values: Mapping[str, Any] | None = None, schema_path: str | Path = SCHEMA_PATH
) -> dict[str, Any]:
    """One config section: ``values`` checked against the schema, the schema's defaults filled in."""
    config: dict[str, Any] = {section: copy.deepcopy(dict(values or {}))}
    validate_config(config, schema_path)
    result: dict[str, Any] = config[section]
    return result
