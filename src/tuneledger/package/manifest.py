"""The manifest: SHA-256 and size of every file in a version package, and its content id.

The manifest lives beside the package (`models/export.manifest.json`), is committed to git, and
is therefore the trusted record of what the package's bytes must be.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tuneledger.core.errors import TuneLedgerError, broken_json
from tuneledger.core.hashing import canonical_json, sha256_bytes, sha256_files
from tuneledger.package.adapter_config import canonical, read_adapter_config
from tuneledger.package.files import ADAPTER_CONFIG, METADATA, PICKLE_SUFFIXES, SIGNATURE
from tuneledger.package.safetensors_io import tensor_digest

SCHEMA_VERSION = 1
# Files that describe a version rather than define the model; they stay out of the content id.
DESCRIPTIVE_FILES = frozenset({"README.md", METADATA, SIGNATURE, "requirements.txt"})


@dataclass
class Manifest:
    content_id: str
    files: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> str:
        body = {"schema_version": SCHEMA_VERSION, "content_id": self.content_id, "files": self.files}
        return json.dumps(body, indent=2, sort_keys=True) + "\n"


def package_files(package: Path) -> list[str]:
    """Relative paths of every file in a package; symlinks and pickles are refused."""
    package = Path(package)
    if not package.is_dir():
        raise TuneLedgerError(f"{package}: no such package directory; run `dvc repro` or `tuneledger fetch`")
    names = []
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(package).as_posix()
        if path.is_symlink():
            raise TuneLedgerError(
                f"{package}/{relative}: symlink inside a package is refused (it can point anywhere)"
            )
        if path.is_file():
            if path.suffix in PICKLE_SUFFIXES:
                raise TuneLedgerError(
                    f"{package}/{relative}: pickle file in a package is refused (loading it can run code)"
                )
            names.append(relative)
    return names


def defining_files(names: list[str]) -> list[str]:
    """The files that define the model (everything but the descriptive ones)."""
    return [n for n in names if n.split("/")[0] not in DESCRIPTIVE_FILES]


def adapter_config_meaning(path: Path) -> bytes:
    """adapter_config.json as canonical JSON with its set-valued lists sorted: one byte string per meaning."""
    return canonical_json(canonical(read_adapter_config(path)))


def _identity(package: Path, name: str, plain: dict[Path, str]) -> list[str]:
    if name.endswith(".safetensors"):
        return ["tensors", tensor_digest(package / name)]
    if PurePosixPath(name).name == ADAPTER_CONFIG:
        return ["config", sha256_bytes(adapter_config_meaning(package / name))]
    return ["file", plain[package / name]]


def identities(package: Path, names: list[str]) -> dict[str, list[str]]:
    """What each model-defining file *is*: safetensors by tensor content (not header), the adapter
    config by meaning (not serialization order), others by bytes."""
    defining = defining_files(names)
    plain = sha256_files([package / n for n in defining if not n.endswith(".safetensors")])
    return {n: _identity(package, n, plain) for n in defining}


def content_id(package: Path, names: list[str]) -> str:
    """SHA-256 over the identities of the model-defining files: equal weights and config, equal id."""
    return sha256_bytes(canonical_json(identities(package, names)))


def build(package: Path, known_content_id: str | None = None) -> Manifest:
    """Hash every file of a package (in parallel) into a manifest."""
    package = Path(package)
    names = package_files(package)
    hashes = sha256_files([package / n for n in names])
    files = {n: {"sha256": hashes[package / n], "size": (package / n).stat().st_size} for n in names}
    return Manifest(content_id=known_content_id or content_id(package, names), files=files)


def _safe_relative(name: str, source: Path) -> str:
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name or not name:
        raise TuneLedgerError(f"{source}: refused path {name!r}: manifest paths must stay inside the package")
    return pure.as_posix()


def parse(text: str, source: Path) -> Manifest:
    """A manifest from JSON text, with file/line/column for broken JSON and refused unsafe paths."""
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise broken_json(source, exc, "corrupt manifest") from None
    try:
        files = body["files"]
        entries = {
            _safe_relative(name, source): {"sha256": str(e["sha256"]), "size": int(e["size"])}
            for name, e in files.items()
        }
        return Manifest(content_id=str(body["content_id"]), files=entries)
    except (TypeError, KeyError, ValueError, AttributeError):
        raise TuneLedgerError(
            f"{source}: corrupt manifest: needs content_id and files {{path: {{sha256, size}}}}"
        ) from None


def read(path: Path) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise TuneLedgerError(f"{path}: manifest not found; run `dvc repro export`, or pass --manifest")
    return parse(path.read_text(encoding="utf-8"), path)
