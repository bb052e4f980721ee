"""From a registry name to verified bytes: resolve through gto, download through DVC, check
every file against the manifest committed in git at that version, and only then publish."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from tuneledger.errors import TuneLedgerError
from tuneledger.fsutil import publish_dir, remove_leftovers, staging_dir, write_text_atomic
from tuneledger.hashing import tree_digest
from tuneledger.layout import BASE_DIR
from tuneledger.package import manifest as manifest_format
from tuneledger.package import metadata as metadata_format
from tuneledger.package.verify import VerificationFailed, find_problems
from tuneledger.registry import tags
from tuneledger.registry.remote import open_repo, remote_errors


@dataclass(frozen=True)
class Resolved:
    name: str
    version: str
    commit: str
    path: str  # package directory inside the repository at that commit
    manifest: manifest_format.Manifest
    manifest_text: str


def _git_show(commit: str, path: str) -> str | None:
    """A file's exact text at a commit (None if the commit has no such file)."""
    import subprocess

    done = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, text=True)
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
    commit = registered[version].commit
    spec = yaml.safe_load(_git_show(commit, "dvc.yaml") or "{}") or {}
    declared = (spec.get("artifacts") or {}).get(name)
    if not declared:
        raise TuneLedgerError(
            f"{name} {version}: commit {commit[:12]} declares no artifact {name!r} in dvc.yaml"
        )
    path = declared["path"]
    manifest_file = str(manifest_format.manifest_path_for(Path(path)))
    text = _git_show(commit, manifest_file)
    if text is None:
        raise TuneLedgerError(
            f"{name} {version}: commit {commit[:12]} holds no {manifest_file}; it cannot be verified"
        )
    return Resolved(
        name, version, commit, path, manifest_format.parse(text, Path(f"{commit[:12]}:{manifest_file}")), text
    )


def download(resolved: Resolved, dest: Path, names: list[str] | None = None, root: str = ".") -> None:
    """Copy the package's files (or some of them) at its commit into `dest`, via DVC's cache or remote."""
    from dvc.api import DVCFileSystem

    with open_repo(root) as repo, remote_errors(repo, f"downloading {resolved.name} {resolved.version}"):
        _get_tree(DVCFileSystem(root, rev=resolved.commit), resolved.path, dest, names)


def _get_tree(fs, path: str, dest: Path, names: list[str] | None = None) -> None:
    """Copy the files under `path` (or just `names` relative to it) into `dest`."""
    prefix = path.rstrip("/") + "/"
    if names is None:
        names = [f.removeprefix("/").removeprefix(prefix) for f in fs.find(path)]
    for name in names:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(prefix + name, str(target))


def download_verified(resolved: Resolved, dest: Path, names: list[str], root: str = ".") -> Path:
    """Some files of a version, each checked against the committed manifest."""
    download(resolved, dest, names, root)
    problems = find_problems(dest, resolved.manifest, label=f"{resolved.name}@{resolved.version}", only=names)
    if problems:
        raise VerificationFailed(problems)
    return dest


def _fetch_base(resolved: Resolved, package: Path, dest: Path, root: str) -> None:
    """The base model snapshot of that commit, checked against the digest in the verified metadata."""
    from dvc.api import DVCFileSystem

    expected = metadata_format.read(package / "metadata.json")["base_model"]
    with open_repo(root) as repo, remote_errors(repo, f"downloading the base model of {resolved.version}"):
        _get_tree(DVCFileSystem(root, rev=resolved.commit), BASE_DIR.as_posix(), dest)
    digest, files = tree_digest(dest)
    if digest != expected["sha256"]:
        wrong = sorted(n for n in {*files, *expected["files"]} if files.get(n) != expected["files"].get(n))
        raise TuneLedgerError(f"base model of {resolved.version}: sha256 mismatch in {', '.join(wrong)}")


def fetch(resolved: Resolved, out: Path, with_base: bool = False, root: str = ".") -> Path:
    """Download, verify, then publish into `out` (with `<out>.manifest.json` beside it).

    On any failure nothing of the new version is left where it could be loaded; a previous
    content of `out` stays as it was.
    """
    out = Path(out)
    base_out = out.with_name(out.name + ".base")
    remove_leftovers(out)
    with staging_dir(out) as staged:
        download(resolved, staged, root=root)
        problems = find_problems(staged, resolved.manifest, label=str(out))
        if problems:
            raise VerificationFailed(problems)
        if with_base:
            with staging_dir(base_out) as base_staged:
                _fetch_base(resolved, staged, base_staged, root)
                publish_dir(base_staged, base_out)
        publish_dir(staged, out)
    write_text_atomic(manifest_format.manifest_path_for(out), resolved.manifest_text)
    return out


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="tuneledger-"))


def discard(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
