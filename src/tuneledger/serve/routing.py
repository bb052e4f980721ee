"""The `model` field in the registry's language, and the canary split.

A request names what should answer:
- `NAME`: the version in the stage the server follows (prod by default), or the canary's share;
- `NAME@STAGE`: the version in any stage;
- `NAME@vX.Y.Z`: a pinned version;
- a content-id prefix of at least 8 hex characters.
Names resolve against the registry as the server last read it (`RegistryView`, refreshed every
--sync-seconds); anything else is unknown, and nothing is loaded for it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from dataclasses import dataclass

from tuneledger.core.errors import TuneLedgerError
from tuneledger.registry import tags
from tuneledger.registry.versions import Resolved, resolve_at

VERSION = re.compile(r"v\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?")
CONTENT_PREFIX = re.compile(r"[0-9a-f]{8,64}")
MIN_PREFIX = 8
STABLE, CANARY = "stable", "canary"  # the two arms of the followed name under --canary


class UnknownName(TuneLedgerError):
    """The requested name resolves to no registered version (answered 404)."""


@dataclass(frozen=True)
class Name:
    """A parsed `model` field: `kind` is follow, stage, version or content."""

    kind: str
    value: str | None = None


def parse(requested: str, name: str) -> Name:
    if requested == name:
        return Name("follow")
    if requested.startswith(f"{name}@"):
        rest = requested[len(name) + 1 :]
        return Name("version" if VERSION.fullmatch(rest) else "stage", rest)
    if CONTENT_PREFIX.fullmatch(requested):
        return Name("content", requested)
    raise UnknownName(
        f"model {requested!r} is not served here; use {name!r} (the followed stage), {name}@STAGE, "
        f"{name}@vX.Y.Z or a content-id prefix of at least {MIN_PREFIX} hex characters"
    )


def in_canary(key: str | None, percent: float) -> bool:
    """Whether a request goes to the canary arm. With a key the answer is the same every time (a
    hash of the key), so a user stays in one arm; without one it is drawn afresh."""
    draw = (
        int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 10_000
        if key is not None
        else secrets.randbelow(10_000)
    )
    return draw < percent * 100


class RegistryView:
    """The registry as the server last read it: registered versions (commit) and stage holders,
    read in one pass over the tags. A version's manifest, once read, is kept: versions are
    immutable."""

    def __init__(self, name: str):
        self.name = name
        self.commits: dict[str, str] = {}
        self.holders: dict[str, str] = {}
        self._resolved: dict[tuple[str, str], Resolved] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        commits, holders = {}, {}
        for event in tags.events(self.name):
            if event.kind == "registration":
                commits[event.version] = event.commit
            elif event.kind == "assignment" and event.version:
                holders[event.stage] = event.version
        self.commits, self.holders = commits, holders  # two reference assignments: readers see either

    def resolved(self, version: str) -> Resolved:
        """The version's commit and committed manifest (read once per version, from the commit
        the last refresh saw, without reading the tags again)."""
        key = (version, self.commits.get(version, ""))
        with self._lock:
            known = self._resolved.get(key)
        if known is None:
            known = resolve_at(self.name, version, key[1])
            with self._lock:
                self._resolved[key] = known
        return known

    def version_for(self, name: Name, followed_stage: str) -> tuple[str, str | None]:
        """(version, stage it resolved through) for a parsed name; UnknownName if there is none."""
        if name.kind == "follow":
            name = Name("stage", followed_stage)
        if name.kind == "stage":
            if name.value not in self.holders:
                held = ", ".join(f"{self.name}@{s}" for s in sorted(self.holders)) or "none"
                raise UnknownName(
                    f"no version of {self.name} is in stage {name.value!r}; stages held: {held}"
                )
            return self.holders[name.value], name.value
        if name.kind == "version":
            if name.value not in self.commits:
                raise UnknownName(f"{self.name}@{name.value} is not a registered version")
            return name.value, None
        return self._by_content_prefix(name.value), None

    def _by_content_prefix(self, prefix: str) -> str:
        """The one version whose content id starts with `prefix`. Reads the manifests of versions
        not read before (once each: at 1,000 versions the first such lookup reads them all)."""
        matches = {
            version
            for version in self.commits
            if self.resolved(version).manifest.content_id.startswith(prefix)
        }
        if not matches:
            raise UnknownName(f"no registered version of {self.name} has a content id starting {prefix}")
        if len(matches) > 1:
            raise UnknownName(
                f"content-id prefix {prefix} matches {len(matches)} versions ({', '.join(sorted(matches))}); "
                "give more characters"
            )
        return matches.pop()
