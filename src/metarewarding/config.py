"""Experiment config: JSON-Schema validation, defaults, and per-iteration settings.

``validate_config`` is the first thing the Snakefile calls. It fills defaults, merges each entry
of ``iterations`` over ``iteration_defaults`` and checks the result, so that a bad key or value
stops the run before any job starts, with a message naming the key.
"""

from __future__ import annotations

import copy
import hashlib
from importlib import resources
from typing import Any

import jsonschema
import yaml

ITERATION_SECTIONS = ("generation", "judge", "meta_judge", "pairs", "dpo")


class ConfigError(ValueError):
    """The experiment config does not match the schema."""


def load_schema() -> dict:
    text = resources.files("metarewarding").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def _key_path(error: jsonschema.ValidationError, prefix: str) -> str:
    parts = [prefix] if prefix else []
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}" if parts else str(part))
    return "".join(parts) or "(top level)"


def _check(instance: Any, schema: dict, root: dict, prefix: str = "") -> None:
    validator = jsonschema.Draft202012Validator(schema, registry=_registry(root))
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"config key {_key_path(e, prefix)}: {e.message}" for e in errors]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))


def _registry(root: dict):
    from referencing import Registry, Resource

    return Registry().with_resource("urn:config", Resource.from_contents(root))


def _resolve_ref(schema: dict, root: dict) -> dict:
    ref = schema.get("$ref")
    if not ref:
        return schema
    target = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


def fill_defaults(instance: dict, schema: dict, root: dict) -> dict:
    """Return a copy of ``instance`` with every missing key that has a schema default set."""
    schema = _resolve_ref(schema, root)
    out = copy.deepcopy(instance)
    for key, sub in schema.get("properties", {}).items():
        sub_resolved = _resolve_ref(sub, root)
        has_default = "default" in sub or "default" in sub_resolved
        if key not in out and has_default:
            out[key] = copy.deepcopy(sub.get("default", sub_resolved.get("default")))
        if isinstance(out.get(key), dict) and "properties" in sub_resolved:
            out[key] = fill_defaults(out[key], sub_resolved, root)
    return out


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` laid over it, recursing into nested objects."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def validate_config(config: dict) -> dict:
    """Check the config and return it with defaults filled and ``resolved_iterations`` added:
    a list whose entry t-1 holds the full settings of iteration t."""
    if not isinstance(config, dict):
        raise ConfigError(f"invalid config: expected a mapping at the top level, got {type(config).__name__}")
    root = load_schema()
    _check(config, root, root)
    filled = fill_defaults(config, root, root)
    iteration_schema = {"$ref": "urn:config#/$defs/iteration"}
    resolved = []
    for index, override in enumerate(filled["iterations"]):
        merged = deep_merge(filled["iteration_defaults"], override)
        _check(merged, iteration_schema, root, prefix=f"iterations[{index}]")
        merged = fill_defaults(merged, root["$defs"]["iteration"], root)
        _check_ranges(merged, f"iterations[{index}]")
        resolved.append(merged)
    filled["resolved_iterations"] = resolved
    return _sorted(filled)


def workflow_config(config: dict) -> dict:
    """The validated config, defaults filled, as a workflow script sees it in
    ``snakemake.config`` (which may already carry ``resolved_iterations``): how the scripts
    read execution settings that are deliberately not rule params."""
    return validate_config({k: v for k, v in config.items() if k != "resolved_iterations"})


def _sorted(value: Any) -> Any:
    """Mappings with their keys sorted, recursively: settings reach the rules' params in one
    order however the YAML was written, so reordering keys never looks like a change."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _check_ranges(settings: dict, where: str) -> None:
    """Cross-field checks JSON Schema cannot express."""
    judge = settings["judge"]
    if judge["score_min"] >= judge["score_max"]:
        raise ConfigError(
            f"invalid config:\n  config key {where}.judge.score_min: {judge['score_min']} "
            f"must be below score_max {judge['score_max']}"
        )
    if settings["meta_judge"]["enabled"] and judge["judgments"] < 2:
        raise ConfigError(
            f"invalid config:\n  config key {where}.judge.judgments: the meta-judge compares "
            f"pairs of judgments, so it needs at least 2 (got {judge['judgments']})"
        )


def stage_seed(master: int, iteration: int, stage: str) -> int:
    """A seed for one stage of one iteration, independent of every other stage's."""
    digest = hashlib.sha256(f"{master}:{iteration}:{stage}".encode()).hexdigest()
    return int(digest[:8], 16)
