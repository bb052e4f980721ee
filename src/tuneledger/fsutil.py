"""Writing files atomically, and turning a full disk into one clear line."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tuneledger.errors import TuneLedgerError

DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a file through a temporary sibling and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def disk_space_errors(where: Path, what: str) -> Iterator[None]:
    """A full disk (or quota, or file size limit) becomes one line saying where and what filled."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        free = shutil.disk_usage(where).free if where.exists() else 0
        raise TuneLedgerError(
            f"{where}: no space left while writing {what} ({exc.strerror}; {free} bytes free there); "
            "free some space and rerun — outputs published before are intact"
        ) from None
