"""signature.json: what a version accepts and returns. Requests are checked against it before
any model work, and a candidate must accept everything the version it replaces accepted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneledger.errors import TuneLedgerError

SCHEMA_VERSION = 1
_TYPES = {"string": str, "integer": int, "number": (int, float)}


def build(
    max_prompt_chars: int, max_prompt_tokens: int, max_new_tokens: int, default_new_tokens: int
) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "inputs": {
            "prompt": {
                "type": "string",
                "min_length": 1,
                "max_length": max_prompt_chars,
                "max_tokens": max_prompt_tokens,
            },
        },
        "params": {
            "max_new_tokens": {
                "type": "integer",
                "minimum": 1,
                "maximum": max_new_tokens,
                "default": min(default_new_tokens, max_new_tokens),
            },
            "temperature": {"type": "number", "minimum": 0.0, "maximum": 2.0, "default": 0.0},
        },
        "outputs": {"text": {"type": "string"}},
    }


def read(path: Path) -> dict:
    path = Path(path)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TuneLedgerError(f"{path}: no signature; is this a TuneLedger version package?") from None
    except json.JSONDecodeError as exc:
        raise TuneLedgerError(f"{path}:{exc.lineno}:{exc.colno}: corrupt signature: {exc.msg}") from None
    if not isinstance(body, dict) or not {"inputs", "params", "outputs"} <= body.keys():
        raise TuneLedgerError(f"{path}: corrupt signature: needs inputs, params and outputs")
    return body


class SignatureViolation(TuneLedgerError):
    """A request outside the signature; `field` names the offending input or parameter."""

    def __init__(self, field: str, rule: str):
        self.field, self.rule = field, rule
        super().__init__(f"{field}: {rule}")


def _check_value(name: str, spec: dict, value: Any) -> None:
    expected = _TYPES[spec["type"]]
    if isinstance(value, bool) or not isinstance(value, expected):
        raise SignatureViolation(name, f"must be {spec['type']}, got {type(value).__name__}")
    if spec["type"] == "string":
        if len(value) < spec.get("min_length", 0):
            raise SignatureViolation(name, f"must have at least {spec['min_length']} characters")
        if len(value) > spec.get("max_length", len(value)):
            raise SignatureViolation(
                name, f"must have at most {spec['max_length']} characters, got {len(value)}"
            )
        return
    if not spec.get("minimum", value) <= value <= spec.get("maximum", value):
        raise SignatureViolation(
            name, f"must be between {spec['minimum']} and {spec['maximum']}, got {value}"
        )


def check_request(signature: dict, prompt: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Validate a request; return the generation params with defaults filled in."""
    _check_value("prompt", signature["inputs"]["prompt"], prompt)
    allowed = signature["params"]
    for name in params:
        if name not in allowed:
            raise SignatureViolation(name, f"unknown parameter; accepted: {', '.join(sorted(allowed))}")
    resolved = {}
    for name, spec in allowed.items():
        value = params.get(name)
        if value is None:
            value = spec["default"]
        _check_value(name, spec, value)
        resolved[name] = value
    return resolved


def check_prompt_tokens(signature: dict, count: int) -> None:
    limit = signature["inputs"]["prompt"].get("max_tokens")
    if limit is not None and count > limit:
        raise SignatureViolation("prompt", f"must have at most {limit} tokens, got {count}")


def incompatibilities(current: dict, candidate: dict) -> list[str]:
    """Why `candidate` would reject or misread requests that `current` serves (empty: compatible)."""
    problems = []
    for section in ("inputs", "params"):
        for name, old in current.get(section, {}).items():
            new = candidate.get(section, {}).get(name)
            if new is None:
                problems.append(f"{section}.{name}: removed")
                continue
            if new["type"] != old["type"]:
                problems.append(f"{section}.{name}: type {old['type']} → {new['type']}")
            for key in ("minimum", "min_length"):
                if key in old and new.get(key, old[key]) > old[key]:
                    problems.append(f"{section}.{name}: {key} raised {old[key]} → {new[key]}")
            for key in ("maximum", "max_length", "max_tokens"):
                if key in old and new.get(key, old[key]) < old[key]:
                    problems.append(f"{section}.{name}: {key} lowered {old[key]} → {new[key]}")
        for name, new in candidate.get(section, {}).items():
            if name not in current.get(section, {}) and section == "inputs":
                problems.append(f"inputs.{name}: new required input")
            elif name not in current.get(section, {}) and "default" not in new:
                problems.append(f"params.{name}: new parameter without a default")
    for name, old in current.get("outputs", {}).items():
        new = candidate.get("outputs", {}).get(name)
        if new is None or new.get("type") != old.get("type"):
            problems.append(f"outputs.{name}: removed or retyped")
    return problems
