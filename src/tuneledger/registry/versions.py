"""Registered versions, from a name to verified bytes: resolve through the registry's tags, download
through DVC, check every file against the manifest committed in git at that version, and only then
publish."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.git import git_process
from tuneledger.core.hashing import tree_digest
from tuneledger.core.layout import BASE_DIR, base_path_for, manifest_path_for
from tuneledger.core.publication import Publication, roll_forward
from tuneledger.package import manifest, metadata
from tuneledger.package.files import METADATA
from tuneledger.package.manifest import Manifest
from tuneledger.package.verify import VerificationFailed, find_problems
from tuneledger.registry import remote, tags


@dataclass(frozen=True)
class Resolved:
    name: str
    version: str
    commit: str
    path: str  # package directory inside the repository at that commit
    manifest: Manifest
    manifest_text: str


def git_show(commit: str, path: str) -> str | None:
    """A file's exact text at a commit (None if the commit has no such file)."""
    done = git_process("show", f"{commit}:{path}")
    return done.stdout if done.returncode == 0 else None


def resolve(name: str, version: str | None = None, stage: str | None = None) -> Resolved:
    """The commit and trusted manifest of a version, or of the version a stage points at."""
    if (version is None) == (stage is None):
        raise TuneLedgerError("give exactly one of --version and --stage")
    if stage is not None:
        version = tags.stage_holder(name, stage)
        if version is None:
            raise TuneLedgerError(
                f"no version of {name} is in stage {stage!r}; "
                f"run `tuneledger promote VERSION --stage {stage}`"
            )
    registered = tags.registered_versions(name)
    if version not in registered:
        known = ", ".join(registered) or "none yet (run `tuneledger register`)"
        raise TuneLedgerError(f"version {version} of {name} not found; registered versions: {known}")
    return resolve_at(name, version, registered[version].commit)


def resolve_at(name: str, version: str, commit: str) -> Resolved:
    """The trusted manifest of `version`, registered on `commit` (for callers that read the tags)."""
    spec = yaml.safe_load(git_show(commit, "dvc.yaml") or "{}") or {}
    declared = (spec.get("artifacts") or {}).get(name)
    if not declared:
        raise TuneLedgerError(
            f"{name} {version}: commit {commit[:12]} declares no artifact {name!r} in dvc.yaml"
        )
    path = declared["path"]
    manifest_file = str(manifest_path_for(Path(path)))
    text = git_show(commit, manifest_file)
    if text is None:
        raise TuneLedgerError(
            f"{name} {version}: commit {commit[:12]} holds no {manifest_file}; it cannot be verified"
        )
    return Resolved(
        name, version, commit, path, manifest.parse(text, Path(f"{commit[:12]}:{manifest_file}")), text
    )


def download(resolved: Resolved, dest: Path, names: list[str] | None = None) -> None:
    """Copy the package's files (or some of them) at its commit into `dest`, via DVC's cache or remote."""
    doing = f"downloading {resolved.name} {resolved.version}"
    remote.download(resolved.commit, resolved.path, dest, names, doing=doing)


def download_verified(resolved: Resolved, dest: Path, names: list[str]) -> Path:
    """Some files of a version, each checked against the committed manifest."""
    download(resolved, dest, names)
    problems = find_problems(dest, resolved.manifest, label=f"{resolved.name}@{resolved.version}", only=names)
    if problems:
        raise VerificationFailed(problems)
    return dest


def _fetch_base(resolved: Resolved, package: Path, dest: Path) -> None:
    """The base model snapshot of that commit, checked against the digest in the verified metadata."""
    expected = metadata.read(package / METADATA)["base_model"]
    doing = f"downloading the base model of {resolved.version}"
    remote.download(resolved.commit, BASE_DIR.as_posix(), dest, doing=doing)
    digest, files = tree_digest(dest)
    if digest != expected["sha256"]:
        wrong = sorted(n for n in {*files, *expected["files"]} if files.get(n) != expected["files"].get(n))
        raise TuneLedgerError(f"base model of {resolved.version}: sha256 mismatch in {', '.join(wrong)}")


def publish_verified(resolved: Resolved, out: Path, with_base: bool = False, force: bool = False) -> Path:
    """Download, verify, then publish into `out` (with `<out>.manifest.json` beside it).

    All or nothing: on any failure, or a kill at any point, the next fetch into `out` finds the
    previous content of `out` or the new version, never a mixture. `out` is replaced only when it
    is empty or a previous fetch, or with `force`: never a directory of the user's.
    """
    out = Path(out)
    manifest_out = manifest_path_for(out)
    base = base_path_for(out) if with_base else None
    publication = Publication(*[out, manifest_out, *([base] if base else [])])
    roll_forward(publication.journal)  # a fetch killed while publishing is finished before judging `out`
    if not force:
        refuse_foreign(out, base)  # before anything is touched, staging names included
    with publication as outputs:
        staged = outputs.staged_dir(out)
        download(resolved, staged)
        problems = find_problems(staged, resolved.manifest, label=str(out))
        if problems:
            raise VerificationFailed(problems)
        if base:
            _fetch_base(resolved, staged, outputs.staged_dir(base))
        outputs.staged_file(manifest_out).write_text(resolved.manifest_text, encoding="utf-8")
    return out


def _files_under(directory: Path) -> set[str]:
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*") if not p.is_dir()}


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def _previous_fetch(out: Path) -> Manifest | None:
    """The manifest of an earlier fetch into `out`: beside it, and listing exactly its files."""
    try:
        previous = manifest.read(manifest_path_for(out))
    except (TuneLedgerError, OSError, UnicodeDecodeError):
        return None
    if out.is_dir() and not out.is_symlink() and _files_under(out) == set(previous.files):
        return previous
    return None


def _is_manifest(path: Path) -> bool:
    try:
        manifest.read(path)
    except (TuneLedgerError, OSError, UnicodeDecodeError):
        return False
    return path.is_file() and not path.is_symlink()


def _previous_base(out: Path, base: Path) -> bool:
    """`base` holds exactly the base files that the earlier fetch's metadata names."""
    try:
        expected = metadata.read(out / METADATA)["base_model"]["files"]
    except (TuneLedgerError, OSError, KeyError, TypeError, ValueError):
        return False
    return base.is_dir() and not base.is_symlink() and _files_under(base) == set(expected)


def refuse_foreign(out: Path, base: Path | None) -> None:
    """Refuse to replace what an earlier fetch did not make (into `out`, and `base` if given): it
    may be the user's own work."""
    fix = "choose another --output, or pass --force to replace it"
    manifest_out = manifest_path_for(out)
    if os.path.lexists(manifest_out) and not _is_manifest(manifest_out):
        raise TuneLedgerError(
            f"{manifest_out}: exists and is not a fetch's manifest; nothing was changed — {fix}"
        )
    ours = _previous_fetch(out) is not None
    if os.path.lexists(out) and not _is_empty_dir(out) and not ours:
        raise TuneLedgerError(
            f"{out}: exists and is not a previous fetch (no {manifest_path_for(out).name} "
            f"beside it listing exactly its files); nothing was changed — {fix}"
        )
    foreign_base = base and os.path.lexists(base) and not _is_empty_dir(base)
    if foreign_base and not (ours and _previous_base(out, base)):
        raise TuneLedgerError(
            f"{base}: exists and is not the base of a previous fetch into {out}; nothing was changed — {fix}"
        )


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="tuneledger-"))


def discard(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
