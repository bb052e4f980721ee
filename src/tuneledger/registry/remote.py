"""The DVC remote: downloading a revision's outputs, pushing outputs, checking a commit's outputs are
there, naming an unreachable one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tuneledger.core.errors import TuneLedgerError, first_line
from tuneledger.core.fsutil import own_bytes


def describe_remote(repo) -> str:
    """`'storage' (s3://bucket/path via http://127.0.0.1:9000)` for messages; never credentials."""
    try:
        name = repo.config["core"].get("remote")
        settings = repo.config["remote"][name]
    except KeyError:
        return "(no default remote)"
    endpoint = settings.get("endpointurl")
    return f"{name!r} ({settings.get('url')}{f' via {endpoint}' if endpoint else ''})"


def _remote_failures() -> tuple[type[BaseException], ...]:
    """What a failing remote raises: the own exception types of DVC and of the libraries under it,
    which share no base class, and OSError, which fsspec filesystems raise for network failures."""
    import dvc_data.index.index
    import dvc_objects.errors
    import dvc_objects.fs.errors
    import scmrepo.exceptions
    from dvc.exceptions import DvcException

    found: list[type[BaseException]] = [
        DvcException,
        dvc_data.index.index.DataIndexError,
        dvc_data.index.index.StorageError,
        dvc_objects.errors.ObjectDBError,
        dvc_objects.errors.ObjectFormatError,
        dvc_objects.fs.errors.AuthError,
        dvc_objects.fs.errors.ConfigError,
        dvc_objects.fs.errors.RemoteMissingDepsError,
        scmrepo.exceptions.SCMError,
        OSError,
    ]
    with contextlib.suppress(ImportError):  # an S3 remote's libraries, when installed
        import botocore.exceptions

        found += [botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError]
    with contextlib.suppress(ImportError):
        import aiohttp

        found.append(aiohttp.ClientError)
    return tuple(found)


@contextlib.contextmanager
def remote_errors(repo, doing: str) -> Iterator[None]:
    """Turn the many ways a remote fails into one line naming it and what to check."""
    try:
        yield
    except TuneLedgerError:
        raise
    except _remote_failures() as exc:
        raise _remote_failed(repo, doing, first_line(exc)) from None


def _remote_failed(repo, doing: str, reason: str, missing: str = "", or_else: str = "") -> TuneLedgerError:
    return TuneLedgerError(
        f"{doing}: {missing}remote {describe_remote(repo)} failed: {reason}; check that the endpoint is "
        f"up, the bucket exists and the credentials (.dvc/config.local or AWS_* env) are valid{or_else}"
    )


def open_repo():
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Repo(".")
    except NotDvcRepoError:
        raise TuneLedgerError("not a DVC repository here; run tuneledger from the repository root") from None


def missing_on_remote(commit: str, targets: list[str]) -> list[str]:
    """Outputs of `targets` at `commit` that the default remote does not hold."""
    with open_repo() as repo, remote_errors(repo, "checking the remote"):
        with repo.switch(commit):  # that commit's outputs only, not the workspace's
            used = repo.index.used_objs(targets, force=True, push=True)
        missing: list[str] = []
        for odb, objs in used.items():
            if odb is not None:  # imported from another repository: not ours to push
                continue
            status = repo.cloud.status(objs)
            missing += sorted(h.obj_name or h.value for h in [*status.new, *status.missing])
        return missing


def push(targets: list[str] | None = None) -> int:
    with open_repo() as repo, remote_errors(repo, "dvc push"):
        return repo.push(targets=targets)


def download(rev: str, path: str, dest: Path, names: list[str] | None = None, *, doing: str) -> None:
    """Copy the files under `path` at commit `rev` (or just `names`, relative to it) into `dest`,
    from DVC's local cache or else the remote. Failures are one line that starts with `doing`."""
    from dvc.api import DVCFileSystem
    from dvc_data.index import DataIndexDirError

    prefix = path.rstrip("/") + "/"
    with open_repo() as repo, remote_errors(repo, doing):
        fs = DVCFileSystem(".", rev=rev)
        try:
            if names is None:
                names = [f.removeprefix("/").removeprefix(prefix) for f in fs.find(path)]
            for name in names:
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(prefix + name, str(target))
                own_bytes(target)  # DVC may hard-link its cache object here: a deploy copy never shares it
        except DataIndexDirError as exc:  # the tree itself: neither cached nor from the remote
            raise _not_available(repo, doing, path, rev, exc.__cause__) from None
        except FileNotFoundError as exc:
            wanted = [path] if names is None else [prefix + n for n in names]
            absent = next((name for name in wanted if not fs.exists(name)), None)
            if absent is not None:
                raise TuneLedgerError(f"{doing}: commit {rev[:12]} has no {absent}") from None
            raise _not_available(repo, doing, path, rev, exc) from None  # in git, on no storage


def _not_available(repo, doing: str, path: str, rev: str, cause: BaseException | None) -> TuneLedgerError:
    return _remote_failed(
        repo,
        doing,
        first_line(cause) if cause else "it does not hold it",
        missing=f"{path} of commit {rev[:12]} is not in the local DVC cache and the ",
        or_else=", or rebuild it with `dvc repro` at that commit",
    )
