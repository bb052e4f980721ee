"""Comparing two versions by what they are: params, adapter shape read from weights, metrics, ids."""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tuneledger import git
from tuneledger.errors import TuneLedgerError
from tuneledger.layout import EXPORT_DIR, MANIFEST_FILE
from tuneledger.package import metadata as metadata_format
from tuneledger.package import weights
from tuneledger.package.manifest import manifest_path_for
from tuneledger.package.manifest import read as read_manifest

# The files a comparison needs; large merged weights are never downloaded for a diff.
DESCRIBING_FILES = ("metadata.json", weights.CONFIG, weights.WEIGHTS)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def describe(package: Path, manifest_file: Path | None = None) -> dict[str, Any]:
    """The comparable facts of one package, as flat `section.key` → value."""
    package = Path(package)
    meta = metadata_format.read(package / "metadata.json")
    manifest_file = manifest_file or manifest_path_for(package)
    content_id = read_manifest(manifest_file).content_id if manifest_file.is_file() else meta["content_id"]
    facts = {"content_id": content_id, "git.commit": meta["git"]["commit"]}
    facts.update(_flatten(weights.describe_adapter(package), "adapter."))
    facts.update(_flatten(meta["metrics"], "metrics."))
    facts.update(_flatten(meta["params"], "params."))
    return facts


@contextmanager
def materialize(ref: str):
    """A local directory for `ref`: a package directory as is, or a git revision via DVC."""
    path = Path(ref)
    if path.is_dir():
        yield path, None
        return
    from dvc.api import DVCFileSystem

    commit = git.resolve_commit(ref)
    if commit is None:
        raise TuneLedgerError(f"{ref}: neither a package directory nor a git revision of this repository")
    tmp = Path(tempfile.mkdtemp(prefix="tuneledger-diff-"))
    try:
        fs = DVCFileSystem(".", rev=commit)
        package = tmp / EXPORT_DIR.name
        package.mkdir()
        for name in DESCRIBING_FILES:
            try:
                fs.get_file(f"{EXPORT_DIR.as_posix()}/{name}", str(package / name))
            except FileNotFoundError:
                raise TuneLedgerError(
                    f"{ref}: has no {EXPORT_DIR}/{name}; was the export committed there?"
                ) from None
        manifest = tmp / MANIFEST_FILE.name
        try:
            fs.get_file(MANIFEST_FILE.as_posix(), str(manifest))
        except FileNotFoundError:
            manifest = None
        yield package, manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def compare(a: str, b: str) -> dict[str, Any]:
    """Both sides' facts and the keys whose values differ."""
    with materialize(a) as (pa, ma), materialize(b) as (pb, mb):
        left, right = describe(pa, ma), describe(pb, mb)
    keys = list(dict.fromkeys([*left, *right]))
    differing = [k for k in keys if json.dumps(left.get(k)) != json.dumps(right.get(k))]
    return {"a": {"ref": a, **left}, "b": {"ref": b, **right}, "keys": keys, "differing": differing}
