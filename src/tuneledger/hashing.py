"""SHA-256 of files: streamed in chunks, many files in parallel (hashlib releases the GIL)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

CHUNK = 4 * 1024 * 1024


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of one file, reading it in fixed-size chunks into one reused buffer."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def sha256_files(paths: Iterable[str | Path], workers: int | None = None) -> dict[Path, str]:
    """Hex SHA-256 of many files at once, keyed by path."""
    paths = [Path(p) for p in paths]
    workers = workers or min(8, os.cpu_count() or 1, max(1, len(paths)))
    if workers == 1:
        return {p: sha256_file(p) for p in paths}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(paths, pool.map(sha256_file, paths), strict=True))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """One byte string per value: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def tree_digest(root: str | Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """Digest of a directory tree: per-file {sha256, size} and the SHA-256 over that listing."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    hashes = sha256_files(files)
    listing = {p.relative_to(root).as_posix(): {"sha256": hashes[p], "size": p.stat().st_size} for p in files}
    return sha256_bytes(canonical_json(listing)), listing
