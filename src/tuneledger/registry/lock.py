"""One registry writer at a time per repository; a second one fails at once instead of racing."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from tuneledger.core import git
from tuneledger.core.errors import TuneLedgerError


@contextlib.contextmanager
def registry_lock(action: str) -> Iterator[None]:
    path = Path(git.run_git("rev-parse", "--git-common-dir")) / "tuneledger-registry.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise TuneLedgerError(
                f"{action}: the registry is busy ({holder}); nothing was changed, retry when it finishes"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{action}, pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
