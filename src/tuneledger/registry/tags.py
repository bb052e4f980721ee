"""Registry state on git tags, through gto: the one place that writes and reads registry tags.

Versions are `NAME@vX.Y.Z` tags; stage moves are `NAME#STAGE#N` tags. Every tag message ends with
a `tuneledger: {json}` line (content id, who, why), which `show` and `history` read back.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tuneledger.errors import TuneLedgerError
from tuneledger.secrets import redact

STAGES = ("dev", "staging", "prod")
FIRST_VERSION = "v1.0.0"
INFO_PREFIX = "tuneledger: "
_TAG_NUMBER = re.compile(r"#(\d+)$")


@dataclass(frozen=True)
class Event:
    time: datetime
    kind: str  # registration, assignment, deprecation, ...
    version: str | None
    stage: str | None
    tag: str
    commit: str
    author: str | None
    message: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def order(self) -> tuple:
        number = _TAG_NUMBER.search(self.tag)
        return self.time, int(number.group(1)) if number else 0


def compose_message(summary: str, info: dict[str, Any]) -> str:
    return redact(f"{summary}\n\n{INFO_PREFIX}{json.dumps(info, sort_keys=True)}")


def parse_info(message: str | None) -> dict[str, Any]:
    for line in reversed((message or "").splitlines()):
        if line.startswith(INFO_PREFIX):
            try:
                info = json.loads(line[len(INFO_PREFIX) :])
                return info if isinstance(info, dict) else {}
            except json.JSONDecodeError:
                return {}
    return {}


def events(name: str, repo: str = ".") -> list[Event]:
    """Every registry event of an artifact, oldest first (ties broken by the tag's number)."""
    from gto import api

    try:
        raw = api.history(repo, name, ascending=True)
    except Exception as exc:  # gto raises its own types for a repo without tags or commits
        if "Nothing found" in str(exc) or "not found" in str(exc).lower():
            return []
        raise TuneLedgerError(f"registry: could not read git tags: {exc}") from None
    found = [
        Event(
            time=e["timestamp"],
            kind=e["event"],
            version=e.get("version"),
            stage=e.get("stage"),
            tag=e.get("ref") or "",
            commit=e["commit"],
            author=e.get("author"),
            message=e.get("message") or "",
            info=parse_info(e.get("message")),
        )
        for e in raw
        if e.get("artifact") == name
    ]
    return sorted(found, key=lambda e: e.order)


def registered_versions(name: str, repo: str = ".") -> dict[str, Event]:
    return {e.version: e for e in events(name, repo) if e.kind == "registration"}


def stage_assignments(name: str, stage: str, repo: str = ".") -> list[Event]:
    return [e for e in events(name, repo) if e.kind == "assignment" and e.stage == stage]


def stage_holder(name: str, stage: str, repo: str = ".") -> str | None:
    """The version the newest tag of `stage` points at: what `dvc artifacts get --stage` fetches."""
    assigned = stage_assignments(name, stage, repo)
    return assigned[-1].version if assigned else None


def holders_stack(name: str, stage: str, repo: str = ".") -> list[str]:
    """Versions that held `stage`, oldest first, with rolled-back holders popped (undo semantics)."""
    stack: list[str] = []
    for event in stage_assignments(name, stage, repo):
        if event.info.get("action") == "rollback" and event.version in stack:
            while stack and stack[-1] != event.version:
                stack.pop()
        elif not stack or stack[-1] != event.version:
            stack.append(event.version)
    return stack


def wait_for_next_second(name: str, repo: str = ".") -> None:
    """Tag times have one-second resolution and tools order stage tags by time: never share a second."""
    known = events(name, repo)
    if known:
        newest = max(e.time for e in known).timestamp()
        while time.time() < newest + 1:
            time.sleep(min(0.05, newest + 1 - time.time() + 0.001))


def register(name: str, commit: str, version: str | None, bump: str, message: str, repo: str = ".") -> str:
    from gto import api

    if version is None and not registered_versions(name, repo):
        version = FIRST_VERSION  # gto cannot bump from nothing
    wait_for_next_second(name, repo)
    try:
        event = api.register(
            repo,
            name,
            commit,
            version=version,
            message=message,
            bump_major=bump == "major" and not version,
            bump_minor=bump == "minor" and not version,
            bump_patch=bump == "patch" and not version,
        )
    except Exception as exc:  # VersionExistsForCommit, VersionAlreadyRegistered, WrongArgs, git errors
        raise TuneLedgerError(f"register {name}: {exc}") from None
    return event.version if isinstance(event.version, str) else event.version.version


def assign(name: str, version: str, stage: str, message: str, force: bool, repo: str = ".") -> str:
    """Point `stage` at `version` with a new tag; return the tag name."""
    from gto import api

    if stage not in STAGES:
        raise TuneLedgerError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    wait_for_next_second(name, repo)
    try:
        event = api.assign(repo, name, stage, version=version, message=message, force=force)
    except Exception as exc:
        raise TuneLedgerError(f"assign {name} {version} → {stage}: {exc}") from None
    return event.tag.name if hasattr(event, "tag") and hasattr(event.tag, "name") else f"{name}#{stage}"
