"""Comparing two versions by what they are: params, adapter shape read from weights, metrics,
benchmarks, ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneledger.core.layout import manifest_path_for
from tuneledger.package import benchmarks, manifest, metadata, weights
from tuneledger.package.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS, METADATA

# The files a comparison needs; large merged weights are never downloaded for a diff.
DESCRIBING_FILES = (METADATA, ADAPTER_CONFIG, ADAPTER_WEIGHTS)


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
    meta = metadata.read(package / METADATA)
    manifest_file = manifest_file or manifest_path_for(package)
    content_id = manifest.read(manifest_file).content_id if manifest_file.is_file() else meta["content_id"]
    facts = {"content_id": content_id, "git.commit": meta["git"]["commit"]}
    facts.update(_flatten(weights.describe_adapter(package), "adapter."))
    facts.update(_flatten(meta["metrics"], "metrics."))
    facts.update(_flatten(_benchmark_rows(meta.get("benchmarks") or {}), "benchmarks."))
    facts.update(_flatten(meta["params"], "params."))
    return facts


def _benchmark_rows(tasks: dict[str, dict]) -> dict[str, dict]:
    """Per task: the scores and the setup that decides whether they are comparable (no stderr)."""
    shown = ("metric", "base", "tuned", "change", *benchmarks.SETUP, "samples")
    return {task: {key: record.get(key) for key in shown} for task, record in tasks.items()}


def compare(a: str, left: dict[str, Any], b: str, right: dict[str, Any]) -> dict[str, Any]:
    """Both sides' facts (from `describe`) and the keys whose values differ."""
    keys = list(dict.fromkeys([*left, *right]))
    differing = [k for k in keys if json.dumps(left.get(k)) != json.dumps(right.get(k))]
    return {"a": {"ref": a, **left}, "b": {"ref": b, **right}, "keys": keys, "differing": differing}
