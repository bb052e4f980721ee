"""SHA-256 of files: streamed in chunks, many files in parallel (hashlib releases the GIL)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

CHUNK = 4 * 1024 * 1024


class NotARegularFile(OSError):
    """The opened path is a FIFO, a socket or a device: reading it could block or never end."""

    def __init__(self, path: str | Path, kind: str):
        self.kind = kind
        super().__init__(f"{path}: not a regular file ({kind})")


def file_kind(mode: int) -> str:
    kinds = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device"}
    return kinds.get(stat.S_IFMT(mode), "a device" if stat.S_ISBLK(mode) else "a special file")


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of one regular file, reading it in fixed-size chunks into one reused buffer.

    The type is checked on the opened descriptor (opened O_NONBLOCK, so a FIFO cannot hang the
    open), not on the path, which could be swapped between a check and the open."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(descriptor, "rb", buffering=0) as handle:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(path, file_kind(mode))
        os.set_blocking(descriptor, True)
        digest = hashlib.sha256()
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def sha256_files(
    paths: Iterable[str | Path], workers: int | None = None, digest=sha256_file
) -> dict[Path, Any]:
    """`digest` (hex SHA-256 by default) of many files at once, keyed by path."""
    paths = [Path(p) for p in paths]
    workers = workers or min(8, os.cpu_count() or 1, max(1, len(paths)))
    if workers == 1:
        return {p: digest(p) for p in paths}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(paths, pool.map(digest, paths), strict=True))


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
