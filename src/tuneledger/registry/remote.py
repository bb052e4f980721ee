"""The DVC remote: downloading a revision's outputs, pushing outputs, checking a commit's outputs are
there, naming an unreachable one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tuneledger.errors import TuneLedgerError


def describe_remote(repo) -> str:
    """`'storage' (s3://bucket/path via http://127.0.0.1:9000)` for messages; never credentials."""
    try:
        name = repo.config["core"].get("remote")
        settings = repo.config["remote"][name]
    except KeyError:
        return "(no default remote)"
    endpoint = settings.get("endpointurl")
    return f"{name!r} ({settings.get('url')}{f' via {endpoint}' if endpoint else ''})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def remote_errors(repo, doing: str) -> Iterator[None]:
    """Turn the many ways a remote fails into one line naming it and what to check."""
    from dvc.exceptions import DvcException

    try:
        yield
    except TuneLedgerError:
        raise
    except (DvcException, OSError, Exception) as exc:  # botocore/aiohttp errors have no common base
        reason = _first_line(exc)
        raise TuneLedgerError(
            f"{doing}: remote {describe_remote(repo)} failed: {reason}; check that the endpoint is up, "
            f"the bucket exists and the credentials (.dvc/config.local or AWS_* env) are valid"
        ) from None


def open_repo(root: str = "."):
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Repo(root)
    except NotDvcRepoError:
        raise TuneLedgerError(
            f"{root}: not a DVC repository; run tuneledger from the repository root"
        ) from None


def missing_on_remote(commit: str, targets: list[str], root: str = ".") -> list[str]:
    """Outputs of `targets` at `commit` that the default remote does not hold."""
    with open_repo(root) as repo, remote_errors(repo, "checking the remote"):
        with repo.switch(commit):  # that commit's outputs only, not the workspace's
            used = repo.index.used_objs(targets, force=True, push=True)
        missing: list[str] = []
        for odb, objs in used.items():
            if odb is not None:  # imported from another repository: not ours to push
                continue
            status = repo.cloud.status(objs)
            missing += sorted(h.obj_name or h.value for h in [*status.new, *status.missing])
        return missing


def push(targets: list[str] | None = None, root: str = ".") -> int:
    with open_repo(root) as repo, remote_errors(repo, "dvc push"):
        return repo.push(targets=targets)


def download(
    rev: str, path: str, dest: Path, names: list[str] | None = None, *, doing: str, root: str = "."
) -> None:
    """Copy the files under `path` at commit `rev` (or just `names`, relative to it) into `dest`,
    from DVC's local cache or else the remote. Failures are one line that starts with `doing`."""
    from dvc.api import DVCFileSystem
    from dvc_data.index import DataIndexDirError

    prefix = path.rstrip("/") + "/"
    with open_repo(root) as repo, remote_errors(repo, doing):
        fs = DVCFileSystem(root, rev=rev)
        try:
            if names is None:
                names = [f.removeprefix("/").removeprefix(prefix) for f in fs.find(path)]
            for name in names:
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(prefix + name, str(target))
        except DataIndexDirError as exc:
            cause = _first_line(exc.__cause__) if exc.__cause__ else "it does not hold it"
            raise TuneLedgerError(
                f"{doing}: {path} of commit {rev[:12]} is neither in the local DVC cache nor available "
                f"from the remote {describe_remote(repo)} ({cause}); `dvc pull` it from a reachable "
                "remote, or rebuild it with `dvc repro` at that commit"
            ) from None
        except FileNotFoundError:
            missing = next((prefix + n for n in names if not fs.exists(prefix + n)), path)
            raise TuneLedgerError(f"{doing}: commit {rev[:12]} has no {missing}") from None
