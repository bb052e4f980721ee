"""Keeping credentials out of everything TuneLedger writes: metadata, model cards, tags and logs."""

from __future__ import annotations

import os
import re
from typing import Any

_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY|ACCESS_KEY|PRIVATE_KEY)", re.I)
_ALWAYS = ("AWS_", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AZURE_", "GOOGLE_APPLICATION_CREDENTIALS")
MIN_LENGTH = 8  # shorter values ("1", "true", "us-east-1") are settings, and would redact ordinary words


def is_secret_name(name: str) -> bool:
    return name.startswith(_ALWAYS) or bool(_SECRET_NAME.search(name))


def secret_values() -> list[str]:
    """Values of secret-looking environment variables, longest first."""
    values = {v for k, v in os.environ.items() if is_secret_name(k) and len(v) >= MIN_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every secret value from the environment replaced by `***`."""
    for value in secret_values():
        text = text.replace(value, "***")
    return text


def redact_data(value: Any) -> Any:
    """A copy of JSON-like data with secrets removed from every string (keys and values)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_data(k): redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value
