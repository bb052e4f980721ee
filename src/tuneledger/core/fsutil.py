"""Writing files atomically, and turning a full disk into one clear line."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tuneledger.core.errors import TuneLedgerError

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


FICLONE = 0x40049409  # linux/fs.h: share the source's extents copy-on-write (btrfs, XFS, bcachefs)


def own_bytes(path: Path) -> None:
    """Give a file that shares its inode (a hard link into a cache) bytes of its own.

    A write into a hard link writes into every name of that inode: into DVC's cache and the
    workspace package too. A reflink shares nothing that a write can reach, and costs no space
    until written; where the filesystem has none, the bytes are copied. Python has no reflink
    call (shutil copies), hence the ioctl."""
    path = Path(path)
    if os.stat(path, follow_symlinks=False).st_nlink <= 1:
        return
    private = path.with_name(f".{path.name}.tuneledger-own")
    try:
        with open(path, "rb") as source, open(private, "xb") as target:
            _reflink_or_copy(source, target)
        shutil.copymode(path, private)
        os.replace(private, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(private)
        raise


def _reflink_or_copy(source, target) -> None:
    import fcntl

    try:
        fcntl.ioctl(target.fileno(), FICLONE, source.fileno())
    except OSError:  # no reflinks here (ext4, tmpfs, another filesystem): copy
        shutil.copyfileobj(source, target, 4 * 1024 * 1024)
