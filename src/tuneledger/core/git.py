"""The few git facts TuneLedger records and checks, read through the git command line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.layout import MANIFEST_FILE, RESULTS_DIR

# Files a pipeline run rewrites by itself; they do not make the *code* dirty.
PIPELINE_OUTPUTS = ("dvc.lock", MANIFEST_FILE.as_posix(), RESULTS_DIR.as_posix())


def git_process(
    *args: str, cwd: Path | str = ".", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """git run to completion, for callers that judge its exit code themselves: every git call of
    TuneLedger goes through here. `env` adds to the inherited environment."""
    try:
        return subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **env} if env else None,
        )
    except FileNotFoundError:
        raise TuneLedgerError("git is not installed or not on PATH") from None


def run_git(*args: str, cwd: Path | str = ".", check: bool = True, env: dict[str, str] | None = None) -> str:
    """git's output (stripped); with `check`, one line naming the command when it fails."""
    done = git_process(*args, cwd=cwd, env=env)
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise TuneLedgerError(f"git {' '.join(args)}: {detail[-1] if detail else 'failed'}")
    return done.stdout.strip()


def head_commit(cwd: Path | str = ".") -> str | None:
    """The checked-out commit, or None outside a repository or before the first commit."""
    out = git_process("rev-parse", "--verify", "HEAD", cwd=cwd)
    return out.stdout.strip() if out.returncode == 0 else None


def resolve_commit(rev: str, cwd: Path | str = ".") -> str | None:
    """The commit a revision (branch, tag, sha) names, or None if it names none."""
    out = git_process("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", cwd=cwd)
    return out.stdout.strip() if out.returncode == 0 else None


def dirty_paths(cwd: Path | str = ".", ignore: tuple[str, ...] = PIPELINE_OUTPUTS) -> list[str] | None:
    """Tracked or untracked changes outside `ignore`; None outside a repository."""
    out = git_process("status", "--porcelain", "--untracked-files=normal", cwd=cwd)
    if out.returncode != 0:
        return None
    paths = [line[3:].split(" -> ")[-1].strip('"') for line in out.stdout.splitlines() if line.strip()]
    return [p for p in paths if not any(p == i or p.startswith(i.rstrip("/") + "/") for i in ignore)]


def tag_refs_state(git_dir: Path) -> tuple:
    """A cheap fingerprint of the repository's tags: the modification times of the directories
    holding loose tag refs, and of packed-refs. Adding, moving or deleting a tag (a promote, a
    rollback, a push into this repository) changes it; reading it costs a few stat calls, so it
    can be polled several times a second where `git for-each-ref` could not."""
    state = []
    for directory, _, _ in os.walk(git_dir / "refs" / "tags"):
        state.append((directory, os.stat(directory).st_mtime_ns))
    packed = git_dir / "packed-refs"
    if packed.exists():
        info = packed.stat()
        state.append((str(packed), info.st_mtime_ns, info.st_size))
    return tuple(sorted(state))


def common_dir(cwd: Path | str = ".") -> Path:
    """The repository's git directory (shared by its worktrees)."""
    return Path(cwd, run_git("rev-parse", "--git-common-dir", cwd=cwd)).resolve()
