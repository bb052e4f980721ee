"""A registry stage made ready to answer on its own (the shadow's process): fetched, verified and
loaded, base and adapter. The server's resident versions share one base (serve.residents)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.layout import SERVE_CACHE, base_path_for
from tuneledger.inference.predict import Predictor
from tuneledger.registry.versions import Resolved, publish_verified, resolve


@dataclass(eq=False)
class Deployment:
    """A version loaded to answer: the artifact, the resolved version, its predictor."""

    name: str
    resolved: Resolved
    predictor: Predictor
    since: float = field(default_factory=time.time)

    @property
    def version(self) -> str:
        return self.resolved.version

    @property
    def content_id(self) -> str:
        return self.resolved.manifest.content_id

    @property
    def model_id(self) -> str:
        """How replies name what answered: the artifact and its exact version."""
        return f"{self.name}@{self.version}"

    def headers(self) -> dict[str, str]:
        """Sent with every answer, streamed or not, whatever the route."""
        return {"X-TuneLedger-Version": self.version, "X-TuneLedger-Content-Id": self.content_id}

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "content_id": self.content_id,
            "commit": self.resolved.commit,
            "since": self.since,
        }


def reusable_fetch(package: Path, resolved: Resolved, with_base: bool = True) -> bool:
    """A previous fetch of the same version that still verifies can be loaded again."""
    from tuneledger.package.verify import find_problems

    try:
        return (
            package.is_dir()
            and (base_path_for(package).is_dir() or not with_base)
            and not find_problems(package, resolved.manifest)
        )
    except TuneLedgerError:
        return False


class DeployFailed(TuneLedgerError):
    """A stage could not be made ready. `reason` is short and safe to show to any client; the
    message (the cause, which may name endpoints and local paths) is for the server's log."""

    def __init__(self, reason: str, cause: BaseException):
        self.reason = reason
        super().__init__(f"{reason}: {cause}")


def deploy(name: str, stage: str, cache: Path = SERVE_CACHE, device: str | None = None) -> Deployment:
    """Resolve `stage` through the registry, fetch and verify that version, load it on one device."""
    step = f"resolving stage {stage}"
    try:
        resolved = resolve(name, stage=stage)
        package = Path(cache) / f"{name}@{resolved.version}"
        if not reusable_fetch(package, resolved):
            step = f"fetching {resolved.version}"
            publish_verified(resolved, package, with_base=True)
        step = f"loading {resolved.version}"
        predictor = Predictor.open(package, base=base_path_for(package), device=device)
    except Exception as exc:
        raise DeployFailed(f"{step} failed", exc) from exc
    return Deployment(name, resolved, predictor)


def current_version(name: str, stage: str) -> str | None:
    from tuneledger.registry import tags

    return tags.stage_holder(name, stage)
