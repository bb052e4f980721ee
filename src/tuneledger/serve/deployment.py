"""A registry stage made ready to answer: fetched, verified and loaded (base and adapter)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tuneledger.errors import TuneLedgerError
from tuneledger.layout import base_path_for
from tuneledger.predict import Predictor
from tuneledger.registry.fetch import Resolved, fetch, resolve

DEFAULT_CACHE = Path(".tuneledger/serve/versions")


@dataclass
class Deployment:
    name: str
    stage: str
    resolved: Resolved
    predictor: Predictor
    since: float = field(default_factory=time.time)
    # One generation at a time per loaded model: predictable latency, no oversubscribed CPU.
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def version(self) -> str:
        return self.resolved.version

    @property
    def content_id(self) -> str:
        return self.resolved.manifest.content_id

    def describe(self) -> dict:
        return {
            "name": self.name,
            "stage": self.stage,
            "version": self.version,
            "content_id": self.content_id,
            "commit": self.resolved.commit,
            "since": self.since,
        }

    def generate(self, prompt, params: dict) -> str:
        resolved_params = self.predictor.check(prompt, params)
        with self.lock:
            return self.predictor.generate(prompt, resolved_params)


def _reusable(package: Path, resolved: Resolved) -> bool:
    """A previous fetch of the same version that still verifies can be loaded again."""
    from tuneledger.package.verify import find_problems

    try:
        return (
            package.is_dir()
            and base_path_for(package).is_dir()
            and not find_problems(package, resolved.manifest)
        )
    except TuneLedgerError:
        return False


def deploy(name: str, stage: str, cache: Path = DEFAULT_CACHE, device: str | None = None) -> Deployment:
    """Resolve `stage` through the registry, fetch and verify that version, load it on one device."""
    resolved = resolve(name, stage=stage)
    package = Path(cache) / f"{name}@{resolved.version}"
    if not _reusable(package, resolved):
        fetch(resolved, package, with_base=True)
    predictor = Predictor.open(package, base=base_path_for(package), device=device)
    return Deployment(name, stage, resolved, predictor)


def current_version(name: str, stage: str) -> str | None:
    from tuneledger.registry import tags

    return tags.stage_holder(name, stage)
