"""Registry state on git tags, in gto's format: the one place that writes and reads registry tags.

Versions are `NAME@vX.Y.Z` tags; stage moves are `NAME#STAGE#N` tags, N counting up over all the
artifact's tags. Every tag message ends with a `tuneledger: {json}` line (content id, who, why),
which `show` and `history` read back.

Tags are read in one `git for-each-ref` pass and written with `git tag -a`, rather than through
gto's Python API: gto rebuilds its whole registry state on every call and costs 0.7 s just to
import, so at 150 versions `rollback` took 8.7 s (0.76 s with two). gto, `gto check-ref` and
`dvc artifacts get --stage` read the same tags (tests/test_registry_scale.py proves they agree).
Only the stages `.gto` declares are read through gto (its config reader), when `promote` checks one.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.git import run_git
from tuneledger.core.secrets import redact, redact_data

FIRST_VERSION = "v1.0.0"
INFO_PREFIX = "tuneledger: "
GTO_CONFIG = Path(".gto")
# gto's tag grammar (gto/constants.py `tag_re`) for one artifact: version, stage and deprecation
# tags, `!` for a cancellation, and the `#N` counter.
_SEMVER = r"v(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?"
_STAGE = r"[a-zA-Z0-9](?:[a-zA-Z0-9-/_]*[a-zA-Z0-9])?"
_KINDS = {
    ("version", ""): "registration",
    ("version", "!"): "deregistration",
    ("stage", ""): "assignment",
    ("stage", "!"): "unassignment",
}
# Fields of one tag, separated by ASCII unit separators; records end with a record separator.
_FIELDS = ["refname:strip=2", "*objectname", "creatordate:unix", "taggername", "contents"]
_TAG_NUMBER = re.compile(r"#(\d+)$")
_FORMAT = "%1f".join(f"%({f})" for f in _FIELDS) + "%1e"


def check_stage(stage: str) -> None:
    """Refuse a stage that gto would refuse: one `.gto` does not declare (gto reads it; with no
    stages declared, any valid name is a stage). Stages added to `.gto` are accepted at once."""
    from gto.config import read_registry_config
    from gto.exceptions import UnknownStage, ValidationError, WrongConfig

    try:
        config = read_registry_config(str(GTO_CONFIG))
    except WrongConfig as exc:
        cause = " ".join(line.strip() for line in str(exc.__cause__ or exc).strip().splitlines()[:3])
        raise TuneLedgerError(
            f"{GTO_CONFIG}: not a valid gto config ({cause}); fix it, e.g. `stages: [dev, prod]`"
        ) from None
    try:
        config.assert_stage(stage)
    except (UnknownStage, ValidationError) as exc:
        if config.stages:
            raise TuneLedgerError(
                f"unknown stage {stage!r}; stages are {', '.join(config.stages)} (see .gto)"
            ) from None
        raise TuneLedgerError(f"stage {stage!r}: {exc}") from None


def _grammar(name: str) -> re.Pattern:
    artifact = re.escape(name.replace(":", "="))
    return re.compile(
        rf"^{artifact}(?:@(?P<version>{_SEMVER})(?P<vcancel>!?)|#(?P<stage>{_STAGE})(?P<scancel>!?)"
        rf"|@(?P<deprecated>deprecated))(?:#(?P<counter>\d+))?$"
    )


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
    """A tag message; `info` is redacted before it is encoded, where escaping cannot hide a secret."""
    return f"{redact(summary)}\n\n{INFO_PREFIX}{json.dumps(redact_data(info), sort_keys=True)}"


def parse_info(message: str | None) -> dict[str, Any]:
    for line in reversed((message or "").splitlines()):
        if line.startswith(INFO_PREFIX):
            try:
                info = json.loads(line[len(INFO_PREFIX) :])
                return info if isinstance(info, dict) else {}
            except json.JSONDecodeError:
                return {}
    return {}


def _tag_records() -> list[list[str]]:
    """Name, target commit, time, tagger and message of every annotated tag, in one git call."""
    out = run_git("for-each-ref", f"--format={_FORMAT}", "refs/tags", check=False)
    records = [r.lstrip("\n").split("\x1f") for r in out.split("\x1e")]
    return [r for r in records if len(r) == len(_FIELDS) and r[1]]  # lightweight tags: not gto's


def _event(match: re.Match, record: list[str], versions_by_commit: dict[str, str]) -> Event:
    tag, commit, stamp, tagger, message = record
    if match["deprecated"]:
        kind, version = "deprecation", None
    elif match["version"]:
        kind, version = _KINDS["version", match["vcancel"]], match["version"]
    else:
        kind, version = _KINDS["stage", match["scancel"]], versions_by_commit.get(commit)
    return Event(
        time=datetime.fromtimestamp(int(stamp), tz=UTC),
        kind=kind,
        version=version,
        stage=match["stage"],
        tag=tag,
        commit=commit,
        author=tagger or None,
        message=message.strip(),
        info=parse_info(message),
    )


def events(name: str) -> list[Event]:
    """Every registry event of an artifact, oldest first (ties broken by the tag's number)."""
    grammar = _grammar(name)
    matched = [(m, r) for r in _tag_records() if (m := grammar.match(r[0]))]
    # A stage tag names a commit; the version is the one registered on that commit, as in gto.
    versions_by_commit = {r[1]: m["version"] for m, r in matched if m["version"] and not m["vcancel"]}
    found = [_event(m, r, versions_by_commit) for m, r in matched]
    return sorted(found, key=lambda e: e.order)


def registered_versions(name: str) -> dict[str, Event]:
    return {e.version: e for e in events(name) if e.kind == "registration"}


def stage_assignments(name: str, stage: str) -> list[Event]:
    return [e for e in events(name) if e.kind == "assignment" and e.stage == stage]


def stage_holder(name: str, stage: str) -> str | None:
    """The version the newest tag of `stage` points at: what `dvc artifacts get --stage` fetches."""
    assigned = stage_assignments(name, stage)
    return assigned[-1].version if assigned else None


def holders_stack(name: str, stage: str) -> list[str]:
    """Versions that held `stage`, oldest first, with rolled-back holders popped (undo semantics)."""
    stack: list[str] = []
    for event in stage_assignments(name, stage):
        if event.info.get("action") == "rollback" and event.version in stack:
            while stack and stack[-1] != event.version:
                stack.pop()
        elif not stack or stack[-1] != event.version:
            stack.append(event.version)
    return stack


def _tag_time(known: list[Event]) -> dict[str, str]:
    """The environment that stamps a new tag one second after the artifact's newest tag.

    Tag times have one-second resolution and gto and DVC order stage tags by time, so two tags must
    never share a second. Waiting for the wall clock is not enough: git reads the kernel's coarse
    clock, which lags `time.time()` by up to a tick, so a tag made just after the second turned was
    stamped with the old second. The wait keeps tags from running ahead of the clock; the explicit
    date keeps their order."""
    newest = int(max(e.time for e in known).timestamp()) if known else 0
    # A tag from a clock more than a second ahead is not waited for: it is followed at once.
    while time.time() < newest + 1 <= time.time() + 1:
        time.sleep(min(0.05, newest + 1 - time.time() + 0.001))
    return {"GIT_COMMITTER_DATE": f"@{max(newest + 1, int(time.time()))}"}


def _next_counter(known: list[Event]) -> int:
    """gto's `#N`: one more than the highest counter on any tag of the artifact."""
    return max((e.order[1] for e in known), default=0) + 1


def _bumped(versions: list[str], bump: str) -> str:
    if not versions:
        return FIRST_VERSION
    grammar = re.compile(_SEMVER)
    major, minor, patch = max(
        tuple(int(grammar.match(v)[p]) for p in ("major", "minor", "patch")) for v in versions
    )
    if bump == "major":
        return f"v{major + 1}.0.0"
    if bump == "minor":
        return f"v{major}.{minor + 1}.0"
    return f"v{major}.{minor}.{patch + 1}"


def register(name: str, commit: str, version: str | None, bump: str, message: str) -> str:
    """Tag `commit` as `version` (or the next one by `bump`); refuse what gto would refuse."""
    known = events(name)
    registered = {e.version: e.commit for e in known if e.kind == "registration"}
    if version is not None and not re.fullmatch(_SEMVER, version):
        raise TuneLedgerError(f"register {name}: {version!r} is not a version like v1.2.3")
    if version in registered:
        raise TuneLedgerError(f"register {name}: version {version} is already registered")
    on_commit = [v for v, c in registered.items() if c == commit]
    if on_commit:
        raise TuneLedgerError(
            f"register {name}: commit {commit[:12]} is already registered as {on_commit[0]}"
        )
    version = version or _bumped(list(registered), bump)
    tag = f"{name.replace(':', '=')}@{version}"
    run_git("tag", "-a", tag, "-m", message, commit, env=_tag_time(known))
    return version


def assign(name: str, version: str, stage: str, message: str) -> str:
    """Point `stage` at `version` with a new tag; return the tag name (`stage` is checked by the
    caller: `check_stage`)."""
    known = events(name)
    commits = {e.version: e.commit for e in known if e.kind == "registration"}
    if version not in commits:
        raise TuneLedgerError(f"assign {name} {version} → {stage}: version {version} is not registered")
    tag = f"{name.replace(':', '=')}#{stage}#{_next_counter(known)}"
    run_git("tag", "-a", tag, "-m", message, commits[version], env=_tag_time(known))
    return tag
