"""metadata.json: what a version is, how and from what it was made. Never a secret."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneledger.core.errors import TuneLedgerError, broken_json
from tuneledger.core.secrets import redact_data

SCHEMA_VERSION = 1


def build(**sections: Any) -> dict:
    """Assemble the record; every string passes through secret redaction on the way."""
    record = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **sections,
    }
    return redact_data(record)


def to_json(record: dict) -> str:
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


def read(path: Path) -> dict:
    """metadata.json of a package; broken JSON is reported by file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TuneLedgerError(f"{path}: not found; is this a TuneLedger version package?") from None
    except UnicodeDecodeError:
        raise TuneLedgerError(f"{path}: corrupt metadata: not UTF-8 text") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise broken_json(path, exc, "corrupt metadata") from None
    if not isinstance(record, dict) or record.get("schema_version") != SCHEMA_VERSION:
        raise TuneLedgerError(f"{path}: corrupt metadata: expected schema_version {SCHEMA_VERSION}")
    return record
