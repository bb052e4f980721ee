"""adapter_config.json, read once for everyone: the manifest (its meaning), the weights (scaling,
ranks), and the train stage (which writes it in canonical order)."""

from __future__ import annotations

import json
from pathlib import Path

from tuneledger.core.errors import TuneLedgerError, broken_json
from tuneledger.core.hashing import canonical_json

# peft keeps these as sets and writes them in set order, which changes with PYTHONHASHSEED from
# one process to the next; their order means nothing. (`layers_to_transform` is ordered: kept.)
UNORDERED_KEYS = ("target_modules", "exclude_modules", "modules_to_save", "feedforward_modules")


def read_adapter_config(path: Path) -> dict:
    """The config as a dict; one line naming the file when it is missing, broken or not an object."""
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TuneLedgerError(f"{path}: not found; is this a LoRA adapter package?") from None
    except json.JSONDecodeError as exc:
        raise broken_json(path, exc, "corrupt adapter config") from None
    except UnicodeDecodeError:
        raise TuneLedgerError(f"{path}: corrupt adapter config: not UTF-8 text") from None
    if not isinstance(config, dict):
        raise TuneLedgerError(f"{path}: corrupt adapter config: expected a JSON object")
    return config


def canonical(config: dict) -> dict:
    """The same config with its set-valued lists sorted: one form per meaning."""
    ordered = dict(config)
    for key in UNORDERED_KEYS:
        if isinstance(ordered.get(key), list):
            ordered[key] = sorted(ordered[key], key=canonical_json)
    return ordered
