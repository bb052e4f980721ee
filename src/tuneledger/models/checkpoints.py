"""Trainer checkpoints that are safe to resume: sealed when complete, tied to one configuration.

The HF Trainer writes `checkpoint-<step>/` file by file, so a kill can leave a half-written one.
A checkpoint only counts once `tuneledger-seal.json` exists in it: written last and atomically,
it names the configuration and the SHA-256 of every file, so a partial, corrupted or foreign
checkpoint is never resumed.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from tuneledger.core.fsutil import write_text_atomic
from tuneledger.core.hashing import sha256_files

SEAL = "tuneledger-seal.json"
_STEP = re.compile(r"^checkpoint-(\d+)$")


def seal(checkpoint: Path, config_id: str) -> None:
    """Mark a fully written checkpoint as resumable for `config_id`."""
    files = sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != SEAL)
    hashes = sha256_files(files)
    record = {
        "config_id": config_id,
        "files": {p.relative_to(checkpoint).as_posix(): h for p, h in hashes.items()},
    }
    write_text_atomic(checkpoint / SEAL, json.dumps(record, indent=1, sort_keys=True))


def _is_intact(checkpoint: Path, config_id: str) -> bool:
    try:
        record = json.loads((checkpoint / SEAL).read_text())
        if record.get("config_id") != config_id:
            return False
        expected = {checkpoint / name: digest for name, digest in record["files"].items()}
        return sha256_files(expected) == expected
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def checkpoint_dirs(root: Path) -> list[Path]:
    """`checkpoint-<step>` directories under root, oldest step first."""
    found = [p for p in root.glob("checkpoint-*") if p.is_dir() and _STEP.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP.match(p.name).group(1)))


def select_resumable(root: Path, config_id: str, remove: bool = True) -> tuple[Path | None, list[Path]]:
    """The newest sealed, intact checkpoint of this configuration, and the unusable ones removed.

    The trainer reuses `checkpoint-<step>` names, so a foreign or half-written directory left in
    place would be mixed with the new run's files; it is deleted instead of resumed.
    """
    usable, removed = [], []
    for checkpoint in checkpoint_dirs(root):
        if _is_intact(checkpoint, config_id):
            usable.append(checkpoint)
        else:
            if remove:  # under DDP only rank 0 removes; the others just skip what it removes
                shutil.rmtree(checkpoint, ignore_errors=True)
            removed.append(checkpoint)
    return (usable[-1] if usable else None), removed
