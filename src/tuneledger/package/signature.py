"""signature.json: what a version accepts and returns. Requests are checked against it before
any model work, and a candidate must accept everything the version it replaces accepted.

A request gives one input: `prompt` (plain text; /generate and /v1/completions) or, for a chat
package, `messages` (a conversation that the package's chat template renders; /v1/chat/completions).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneledger.core.errors import TuneLedgerError, broken_json

SCHEMA_VERSION = 1
_TYPES = {"string": str, "integer": int, "number": (int, float)}
CHAT_ROLES = ("system", "user", "assistant")
MAX_TURNS = 64
MAX_SEED = 2**63 - 1


def build(
    max_prompt_chars: int,
    max_prompt_tokens: int,
    max_new_tokens: int,
    default_new_tokens: int,
    conversational: bool = False,
) -> dict:
    inputs: dict[str, dict] = {
        "prompt": {
            "type": "string",
            "min_length": 1,
            "max_length": max_prompt_chars,
            "max_tokens": max_prompt_tokens,
        },
    }
    if conversational:
        inputs["messages"] = {
            "type": "messages",
            "required": False,  # an alternative to `prompt`, taken by the chat route
            "items": {
                "role": {"type": "string", "enum": list(CHAT_ROLES)},
                "content": {"type": "string"},
            },
            "min_items": 1,
            "max_items": MAX_TURNS,
            "max_length": max_prompt_chars,  # all turns' content together, in characters
            "max_tokens": max_prompt_tokens,  # the conversation as the chat template renders it
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "inputs": inputs,
        "params": {
            "max_new_tokens": {
                "type": "integer",
                "minimum": 1,
                "maximum": max_new_tokens,
                "default": min(default_new_tokens, max_new_tokens),
            },
            "temperature": {"type": "number", "minimum": 0.0, "maximum": 2.0, "default": 0.0},
            "top_p": {"type": "number", "minimum": 0.0, "maximum": 1.0, "default": 1.0},
            "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED, "default": None},
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
        raise broken_json(path, exc, "corrupt signature") from None
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
        if "enum" in spec and value not in spec["enum"]:
            raise SignatureViolation(name, f"must be one of {', '.join(spec['enum'])}, got {value!r}")
        return
    if not spec.get("minimum", value) <= value <= spec.get("maximum", value):
        raise SignatureViolation(
            name, f"must be between {spec['minimum']} and {spec['maximum']}, got {value}"
        )


def check_params(signature: dict, params: dict[str, Any]) -> dict[str, Any]:
    """Validate generation params; return all of them with defaults filled in (None: unset)."""
    allowed = signature["params"]
    for name in params:
        if name not in allowed:
            raise SignatureViolation(name, f"unknown parameter; accepted: {', '.join(sorted(allowed))}")
    resolved = {}
    for name, spec in allowed.items():
        value = params.get(name)
        if value is None:
            value = spec["default"]
        if value is not None:
            _check_value(name, spec, value)
        resolved[name] = value
    return resolved


def check_request(signature: dict, prompt: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Validate a prompt request; return the generation params with defaults filled in."""
    _check_value("prompt", signature["inputs"]["prompt"], prompt)
    return check_params(signature, params)


def check_messages(signature: dict, messages: Any) -> None:
    """Validate a conversation against `inputs.messages` (the field named as in `messages.2.role`)."""
    spec = signature["inputs"].get("messages")
    if spec is None:
        raise SignatureViolation("messages", "this version is not a chat model; send `prompt` instead")
    if not isinstance(messages, list):
        raise SignatureViolation("messages", f"must be a list of turns, got {type(messages).__name__}")
    if not spec["min_items"] <= len(messages) <= spec["max_items"]:
        raise SignatureViolation(
            "messages", f"must have {spec['min_items']} to {spec['max_items']} turns, got {len(messages)}"
        )
    for index, turn in enumerate(messages):
        if not isinstance(turn, dict) or set(turn) != set(spec["items"]):
            raise SignatureViolation(
                f"messages.{index}", f"must be an object with {' and '.join(spec['items'])}"
            )
        for key, item_spec in spec["items"].items():
            _check_value(f"messages.{index}.{key}", item_spec, turn[key])
    total = sum(len(turn["content"]) for turn in messages)
    if total > spec["max_length"]:
        raise SignatureViolation(
            "messages", f"must have at most {spec['max_length']} characters of content, got {total}"
        )


def check_prompt_tokens(signature: dict, count: int, field: str = "prompt") -> None:
    limit = signature["inputs"][field].get("max_tokens")
    if limit is not None and count > limit:
        raise SignatureViolation(field, f"must have at most {limit} tokens, got {count}")


def _narrowed(where: str, old: dict, new: dict) -> list[str]:
    problems = []
    if new.get("type") != old.get("type"):
        problems.append(f"{where}: type {old.get('type')} → {new.get('type')}")
    for key in ("minimum", "min_length", "min_items"):
        if key in old and new.get(key, old[key]) > old[key]:
            problems.append(f"{where}: {key} raised {old[key]} → {new[key]}")
    for key in ("maximum", "max_length", "max_tokens", "max_items"):
        if key in old and new.get(key, old[key]) < old[key]:
            problems.append(f"{where}: {key} lowered {old[key]} → {new[key]}")
    if "enum" in old and not set(old["enum"]) <= set(new.get("enum", old["enum"])):
        dropped = sorted(set(old["enum"]) - set(new["enum"]))
        problems.append(f"{where}: no longer accepts {', '.join(dropped)}")
    for key, old_item in old.get("items", {}).items():
        new_item = new.get("items", {}).get(key)
        if new_item is None:
            problems.append(f"{where}.{key}: removed")
        else:
            problems += _narrowed(f"{where}.{key}", old_item, new_item)
    return problems


def incompatibilities(current: dict, candidate: dict) -> list[str]:
    """Why `candidate` would reject or misread requests that `current` serves (empty: compatible)."""
    problems = []
    for section in ("inputs", "params"):
        for name, old in current.get(section, {}).items():
            new = candidate.get(section, {}).get(name)
            if new is None:
                problems.append(f"{section}.{name}: removed")
            else:
                problems += _narrowed(f"{section}.{name}", old, new)
        for name, new in candidate.get(section, {}).items():
            if name in current.get(section, {}):
                continue
            if section == "inputs" and new.get("required", True):
                problems.append(f"inputs.{name}: new required input")
            elif section == "params" and "default" not in new:
                problems.append(f"params.{name}: new parameter without a default")
    for name, old in current.get("outputs", {}).items():
        new = candidate.get("outputs", {}).get(name)
        if new is None or new.get("type") != old.get("type"):
            problems.append(f"outputs.{name}: removed or retyped")
    return problems
