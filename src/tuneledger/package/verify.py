"""Checking a package against its manifest: every file present, nothing extra, every byte as recorded.

`verified_copy` is what loading uses: the package is copied into a private directory and the copy
is hashed, so the bytes that were checked are the bytes that get loaded, whatever happens to the
package directory in between.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.hashing import CHUNK, NotARegularFile, file_kind, sha256_file, sha256_files
from tuneledger.core.layout import manifest_path_for
from tuneledger.package import manifest
from tuneledger.package.manifest import Manifest


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str  # "changed", "missing", "unexpected" or "special"
    expected: str | None
    actual: str | None

    def __str__(self) -> str:
        if self.kind == "special":
            return f"{self.path}: not a regular file ({self.actual}); a package holds only regular files"
        if self.kind == "missing":
            return f"{self.path}: missing (expected sha256 {self.expected})"
        if self.kind == "unexpected":
            return f"{self.path}: unexpected file, not in the manifest (sha256 {self.actual})"
        return f"{self.path}: sha256 mismatch: expected {self.expected}, got {self.actual}"


def find_problems(
    package: Path, recorded: Manifest, label: str | None = None, only: list[str] | None = None
) -> list[Problem]:
    """Every difference between a directory and its manifest (`recorded`), hashing files in parallel.

    `label` names the package in messages (say, the destination of a download still being
    staged); `only` limits the check to some files, for a partial download.
    """
    package = Path(package)
    label = label or str(package)
    present = set(manifest.package_files(package))
    expected = {n: e for n, e in recorded.files.items() if only is None or n in only}
    special = dict(special_files(package))
    problems = [Problem(f"{label}/{n}", "special", None, kind) for n, kind in special.items()]
    problems += [
        Problem(f"{label}/{n}", "missing", expected[n]["sha256"], None)
        for n in sorted(expected.keys() - present - special.keys())
    ]
    hashes = sha256_files([package / n for n in sorted(present)], digest=_digest_or_kind)
    for name in sorted(present):
        actual = hashes[package / name]
        if isinstance(actual, NotARegularFile):  # swapped for a FIFO or device after the listing
            problems.append(Problem(f"{label}/{name}", "special", None, actual.kind))
        elif name not in expected:
            problems.append(Problem(f"{label}/{name}", "unexpected", None, actual))
        elif actual != expected[name]["sha256"]:
            problems.append(Problem(f"{label}/{name}", "changed", expected[name]["sha256"], actual))
    return problems


def _digest_or_kind(path: Path) -> str | NotARegularFile:
    try:
        return sha256_file(path)
    except NotARegularFile as refused:
        return refused


def special_files(package: Path) -> list[tuple[str, str]]:
    """(relative path, kind) of every entry that is neither a directory, a regular file nor a
    symlink (those are refused on their own): reading a FIFO or a device can block or never end."""
    found = []
    for path in sorted(Path(package).rglob("*")):
        mode = path.lstat().st_mode
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            found.append((path.relative_to(package).as_posix(), file_kind(mode)))
    return found


class VerificationFailed(TuneLedgerError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def verify(package: Path, manifest_file: Path | None = None) -> Manifest:
    """Raise VerificationFailed (one line per problem) unless the package matches its manifest."""
    package = Path(package)
    if not package.is_dir():
        raise TuneLedgerError(f"{package}: no such package directory; run `dvc repro` or `tuneledger fetch`")
    recorded = manifest.read(manifest_file or manifest_path_for(package))
    problems = find_problems(package, recorded)
    if problems:
        raise VerificationFailed(problems)
    return recorded


def _copy_regular(source: Path, target: Path, follow_symlinks: bool, link_read_only: bool) -> str | None:
    """Copy one file; return the kind of file instead when it is not a regular one.

    The type is checked on the opened descriptor (O_NONBLOCK, so opening a FIFO cannot hang), not
    on the path: a path checked first could be swapped for a FIFO before it is opened. With
    `link_read_only`, a file nobody may write (DVC's cache protects its objects so) is hard-linked
    instead, kept only when it is the very file opened, so a swap of the path changes nothing that
    is loaded; across filesystems it is copied after all.
    """
    mode = os.lstat(source).st_mode
    if not (stat.S_ISREG(mode) or (follow_symlinks and stat.S_ISLNK(mode))):
        return "a symlink" if stat.S_ISLNK(mode) else file_kind(mode)
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        descriptor = os.open(source, flags)
    except OSError as exc:
        raise TuneLedgerError(f"{source}: cannot be read ({exc.strerror}); nothing was loaded") from None
    with open(descriptor, "rb") as reader:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            return file_kind(mode)
        os.set_blocking(descriptor, True)
        if link_read_only and not mode & 0o222 and _link_opened(source, descriptor, target):
            return None
        with open(target, "xb") as writer:
            shutil.copyfileobj(reader, writer, CHUNK)
    return None


def _link_opened(source: Path, descriptor: int, target: Path) -> bool:
    """Hard-link `target` to the file open as `descriptor`: linked by path, then kept only if it
    is the very file opened (the path may have been swapped in between)."""
    try:
        os.link(os.path.realpath(source), target)
    except OSError:  # another filesystem, or links not allowed
        return False
    opened, linked = os.fstat(descriptor), os.lstat(target)
    if (linked.st_dev, linked.st_ino) == (opened.st_dev, opened.st_ino):
        return True
    target.unlink()
    return False


def copy_private(
    source: Path, target: Path, follow_symlinks: bool = False, link_read_only: bool = False
) -> list[tuple[str, str]]:
    """Copy the regular files of `source` into the new directory `target` (hard-link the read-only
    ones with `link_read_only`); return the entries that were not copied because they are not
    regular files, with their kind."""
    source = Path(source)
    target.mkdir(mode=0o700)
    skipped = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_dir() and (follow_symlinks or not path.is_symlink()):
            (target / relative).mkdir(mode=0o700, exist_ok=True)
            continue
        (target / relative).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        kind = _copy_regular(path, target / relative, follow_symlinks, link_read_only)
        if kind:
            skipped.append((relative.as_posix(), kind))
    return skipped


@contextlib.contextmanager
def private_directory(prefix: str, near: Path | None = None) -> Iterator[Path]:
    """A new directory only this user can open (mode 0700), removed afterwards; beside `near` when
    that directory can hold it (the same filesystem, so files can be hard-linked), else in /tmp."""
    try:
        holder = Path(tempfile.mkdtemp(prefix=f".{prefix}", dir=near)) if near else None
    except OSError:  # a read-only directory
        holder = None
    holder = holder or Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield holder
    finally:
        shutil.rmtree(holder, ignore_errors=True)


@contextlib.contextmanager
def verified_copy(package: Path, manifest_file: Path | None = None) -> Iterator[tuple[Path, Manifest]]:
    """A private copy of a package that matches its manifest, and the manifest.

    The copy, not the package, is hashed and then loaded: a file swapped in the package after the
    check changes nothing that is loaded. VerificationFailed (one line per problem) otherwise.
    """
    package = Path(package)
    if not package.is_dir():
        raise TuneLedgerError(f"{package}: no such package directory; run `dvc repro` or `tuneledger fetch`")
    recorded = manifest.read(manifest_file or manifest_path_for(package))
    manifest.package_files(package)  # symlinks and pickles are refused by name, as by `verify`
    with private_directory("tuneledger-load-") as holder:
        copy = holder / package.name
        skipped = copy_private(package, copy)
        problems = [Problem(f"{package}/{n}", "special", None, kind) for n, kind in skipped]
        problems += find_problems(copy, recorded, label=str(package))
        if problems:
            raise VerificationFailed(problems)
        yield copy, recorded
