"""Publishing files and directories atomically: readers see the old version or the new one, never half."""

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


@contextlib.contextmanager
def staging_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty sibling directory of `target`; it is removed unless published."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with disk_space_errors(target.parent, f"the new {target}"):
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(staged: str | Path, target: str | Path) -> None:
    """Move a fully written directory into place, replacing `target` (two renames, no copying)."""
    staged, target = Path(staged), Path(target)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staged, 0o777 & ~umask)  # mkdtemp makes 0700; a published output gets normal permissions
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists() or target.is_symlink():
        os.replace(target, old)
    os.replace(staged, target)
    shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(target: str | Path) -> None:
    """Delete staging directories that an interrupted run left beside `target`."""
    target = Path(target)
    for leftover in target.parent.glob(f".{target.name}.*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
