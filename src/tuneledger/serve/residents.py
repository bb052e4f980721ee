"""The versions a server holds: one base in memory, each version an adapter on it, at most
`max_versions` of them, the least recently used unloaded first.

Every version is fetched and SHA-256-verified as `tuneledger fetch` does (versions.publish_verified),
then loaded from a private verified copy (loader.load_package), before any byte is deserialized.
The model belongs to the batcher's thread: adapters go on and off there, between batches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.layout import base_path_for
from tuneledger.inference.predict import Predictor
from tuneledger.package import metadata
from tuneledger.package.files import METADATA
from tuneledger.package.loader import SharedBase, load_package
from tuneledger.registry.versions import Resolved, publish_verified
from tuneledger.serve.deployment import DeployFailed, Deployment, reusable_fetch


@dataclass(eq=False)
class Resident(Deployment):
    """A version resident on the shared base, answering through its adapter."""

    mixable: bool = True  # may share a batch with other adapters (peft cannot mix DoRA adapters)
    last_used: float = field(default_factory=time.monotonic)
    pins: int = 0  # requests holding it: a pinned version is never unloaded


class ResidentVersions:
    """Loads versions on demand (one download at a time per version), pins them for requests,
    and unloads the least recently used beyond `max_versions`."""

    def __init__(
        self,
        name: str,
        cache: Path,
        max_versions: int,
        on_model_thread: Callable[[Callable[[], Any]], Any],
        device: str | None = None,
    ):
        self.name, self.cache, self.max_versions, self.device = name, Path(cache), max_versions, device
        self.on_model_thread = on_model_thread
        self.base: SharedBase | None = None
        self._by_version: dict[str, Resident] = {}
        self._loading: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.loads = self.evictions = 0

    @property
    def model(self):
        return self.base.model if self.base else None

    def get(self, version: str) -> Resident | None:
        with self._lock:
            return self._by_version.get(version)

    def pinned(self, version: str) -> Resident | None:
        """The version if resident, pinned (unpin it when done)."""
        with self._lock:
            resident = self._by_version.get(version)
            if resident is not None:
                self._pin(resident)
            return resident

    def all(self) -> list[Resident]:
        with self._lock:
            return list(self._by_version.values())

    def pin(self, resident: Resident) -> None:
        with self._lock:
            self._pin(resident)

    @staticmethod
    def _pin(resident: Resident) -> None:
        resident.pins += 1
        resident.last_used = time.monotonic()

    def unpin(self, resident: Resident) -> None:
        with self._lock:
            resident.pins -= 1

    def ensure(self, resolved: Resolved) -> Resident:
        """The version, pinned (unpin it when done), loaded if it is not resident (blocking: fetch,
        verify, load). Pinned from the moment it is there, so no eviction can take it in between."""
        while True:
            with self._lock:
                if (resident := self._by_version.get(resolved.version)) is not None:
                    self._pin(resident)
                    return resident
                waiting = self._loading.get(resolved.version)
                if waiting is None:
                    self._loading[resolved.version] = threading.Event()
                    break
            waiting.wait()  # another request is loading it; then look again
            with self._lock:
                if resolved.version not in self._by_version and resolved.version not in self._loading:
                    break  # that load failed: try it ourselves (and report our own error)
        try:
            resident = self._load(resolved)
        finally:
            with self._lock:
                self._loading.pop(resolved.version).set()
        return resident

    def _load(self, resolved: Resolved) -> Resident:
        step = f"fetching {resolved.version}"
        package = self.cache / f"{self.name}@{resolved.version}"
        try:
            if not reusable_fetch(package, resolved, with_base=self.base is None):
                publish_verified(resolved, package, with_base=self.base is None)
            step = f"loading {resolved.version}"
            loaded = self.on_model_thread(lambda: self._put_on(package))
        except TuneLedgerError as exc:
            raise DeployFailed(f"{step} failed", exc) from exc
        content_id = resolved.manifest.content_id  # the registry's name for it, and the adapter's
        config = loaded.model.peft_config[content_id]
        predictor = Predictor(
            loaded.model,
            loaded.tokenizer,
            loaded.signature,
            {"content_id": content_id},
            loaded.eos_token_ids,
            adapter=content_id,
        )
        resident = Resident(self.name, resolved, predictor, mixable=not getattr(config, "use_dora", False))
        with self._lock:
            self._pin(resident)
            self._by_version[resolved.version] = resident
            self.loads += 1
        return resident

    def _put_on(self, package: Path):
        """On the model thread: the shared base on first use, then the adapter on it."""
        if self.base is None:
            meta = metadata.read(package / METADATA)  # which base; its bytes are verified at load
            self.base = SharedBase(package, meta, self.device, base=base_path_for(package))
        return load_package(package, onto=self.base)

    def evict_beyond_capacity(self, busy: set[str]) -> list[Resident]:
        """On the model thread, between batches: unload the least recently used versions beyond
        max_versions, never one that is pinned or `busy` (content ids of queued rows, and of the
        versions the server follows)."""
        with self._lock:
            spare = sorted(
                (r for r in self._by_version.values() if r.pins == 0 and r.content_id not in busy),
                key=lambda r: r.last_used,
            )
            gone = spare[: max(0, len(self._by_version) - self.max_versions)]
            for resident in gone:
                del self._by_version[resident.version]
        for resident in gone:
            self.base.remove(resident.content_id)
            self.evictions += 1
        return gone
