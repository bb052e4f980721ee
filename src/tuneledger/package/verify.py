"""Checking a package against its manifest: every file present, nothing extra, every byte as recorded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuneledger.errors import TuneLedgerError
from tuneledger.hashing import sha256_files
from tuneledger.package import manifest as manifest_format


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str  # "changed", "missing" or "unexpected"
    expected: str | None
    actual: str | None

    def __str__(self) -> str:
        if self.kind == "missing":
            return f"{self.path}: missing (expected sha256 {self.expected})"
        if self.kind == "unexpected":
            return f"{self.path}: unexpected file, not in the manifest (sha256 {self.actual})"
        return f"{self.path}: sha256 mismatch: expected {self.expected}, got {self.actual}"


def find_problems(
    package: Path, manifest: manifest_format.Manifest, label: str | None = None, only: list[str] | None = None
) -> list[Problem]:
    """Every difference between a directory and its manifest, hashing files in parallel.

    `label` names the package in messages (say, the destination of a download still being
    staged); `only` limits the check to some files, for a partial download.
    """
    package = Path(package)
    label = label or str(package)
    present = set(manifest_format.package_files(package))
    expected = {n: e for n, e in manifest.files.items() if only is None or n in only}
    problems = [
        Problem(f"{label}/{n}", "missing", expected[n]["sha256"], None)
        for n in sorted(expected.keys() - present)
    ]
    hashes = sha256_files([package / n for n in sorted(present)])
    for name in sorted(present):
        actual = hashes[package / name]
        if name not in expected:
            problems.append(Problem(f"{label}/{name}", "unexpected", None, actual))
        elif actual != expected[name]["sha256"]:
            problems.append(Problem(f"{label}/{name}", "changed", expected[name]["sha256"], actual))
    return problems


class VerificationFailed(TuneLedgerError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def verify(package: Path, manifest_file: Path | None = None) -> manifest_format.Manifest:
    """Raise VerificationFailed (one line per problem) unless the package matches its manifest."""
    package = Path(package)
    if not package.is_dir():
        raise TuneLedgerError(f"{package}: no such package directory; run `dvc repro` or `tuneledger fetch`")
    manifest = manifest_format.read(manifest_file or manifest_format.manifest_path_for(package))
    problems = find_problems(package, manifest)
    if problems:
        raise VerificationFailed(problems)
    return manifest
