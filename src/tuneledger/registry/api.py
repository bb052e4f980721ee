"""Registry operations the CLI calls: register, promote, rollback, show, history, fetch, reproduce."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tuneledger import git
from tuneledger.errors import TuneLedgerError
from tuneledger.package import weights
from tuneledger.package.verify import verify
from tuneledger.params import load_params
from tuneledger.registry import artifacts, tags
from tuneledger.registry.fetch import Resolved, discard, resolve, scratch_dir
from tuneledger.registry.gate import Check, GateFailed, run_gate
from tuneledger.registry.lock import registry_lock
from tuneledger.registry.remote import missing_on_remote, open_repo, push


def _who() -> str:
    name = git.run_git("config", "user.name", check=False) or "unknown"
    email = git.run_git("config", "user.email", check=False)
    return f"{name} <{email}>" if email else name


def _require_clean_workspace() -> None:
    dirty = git.dirty_paths(ignore=())
    if dirty is None:
        raise TuneLedgerError("not a git repository; register from the repository root")
    if dirty:
        shown = ", ".join(dirty[:5]) + (" …" if len(dirty) > 5 else "")
        raise TuneLedgerError(f"register refused: uncommitted changes ({shown}); commit them first")
    with open_repo() as repo:
        status = repo.status()
    if status:
        stages = ", ".join(sorted(status)[:5])
        raise TuneLedgerError(
            f"register refused: the workspace does not match dvc.lock ({stages}); "
            "run `dvc repro` (or `dvc checkout`) and commit"
        )


def register(
    name: str = artifacts.DEFAULT_NAME,
    bump: str = "minor",
    version: str | None = None,
    push_first: bool = False,
) -> dict[str, Any]:
    """Tag HEAD as a new version of `name`, after every reason to refuse has been checked."""
    from tuneledger.package import metadata as metadata_format

    artifact = artifacts.resolve(name)
    with registry_lock(f"register {name}"):
        _require_clean_workspace()
        checked = verify(artifact.path, artifact.manifest)
        problems = weights.health_problems(artifact.path)
        if problems:
            raise TuneLedgerError(f"register refused: unhealthy weights: {'; '.join(problems)}")
        commit = git.head_commit()
        if push_first:
            push()
        missing = missing_on_remote(commit, targets=None)
        if missing:
            raise TuneLedgerError(
                f"register refused: {len(missing)} output object(s) are not on the remote; "
                "run `dvc push` first, or pass --push"
            )
        meta = metadata_format.read(artifact.path / "metadata.json")
        info = {
            "action": "register",
            "content_id": checked.content_id,
            "by": _who(),
            "metrics": meta["metrics"].get("tuned", {}),
        }
        summary = f"register {name}: content id {checked.content_id}"
        new_version = tags.register(name, commit, version, bump, tags.compose_message(summary, info))
    return {"name": name, "version": new_version, "commit": commit, "content_id": checked.content_id}


def promote(
    version: str,
    stage: str,
    name: str = artifacts.DEFAULT_NAME,
    force: bool = False,
    reason: str | None = None,
    extra_checks: list[Check] | None = None,
) -> dict[str, Any]:
    """Run the gate against the stage's current version, then move the stage to `version`."""
    if force and not reason:
        raise TuneLedgerError("--force needs --reason: the override is recorded in the registry")
    tags.check_stage(stage)
    with registry_lock(f"promote {name} {version} → {stage}"):
        candidate = resolve(name, version=version)
        current = tags.stage_holder(name, stage)
        if current == version:
            raise TuneLedgerError(f"{name} {version} is already in {stage}")
        holder = resolve(name, version=current) if current else None
        workdir = scratch_dir()
        try:
            checks = run_gate(candidate, holder, load_params().registry, workdir, extra_checks)
        finally:
            discard(workdir)
        failed = [c.name for c in checks if not c.ok]
        if failed and not force:
            raise GateFailed(version, stage, checks)
        info = {
            "action": "promote",
            "from": current,
            "by": _who(),
            "content_id": candidate.manifest.content_id,
            "reason": reason,
            "forced": bool(failed),
            "failed_checks": failed,
        }
        summary = f"promote {name} {version} to {stage}" + (f" (forced: {reason})" if failed else "")
        tags.assign(name, version, stage, tags.compose_message(summary, info))
    return {
        "name": name,
        "version": version,
        "stage": stage,
        "from": current,
        "checks": checks,
        "forced": bool(failed),
    }


def rollback(
    stage: str, name: str = artifacts.DEFAULT_NAME, to: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    """Give the stage back to its previous holder (or `to`): a new assignment tag, never an unassignment."""
    started = time.monotonic()
    with registry_lock(f"rollback {name} {stage}"):
        stack = tags.holders_stack(name, stage)
        if not stack:
            raise TuneLedgerError(f"nothing to roll back: no version of {name} has been in {stage}")
        current = stack[-1]
        if to is None:
            if len(stack) < 2:
                raise TuneLedgerError(
                    f"nothing to roll back to: {current} is the only version {stage} has had"
                )
            to = stack[-2]
        if to == current:
            raise TuneLedgerError(f"{name} {to} is already in {stage}")
        if to not in tags.registered_versions(name):
            raise TuneLedgerError(f"version {to} of {name} not found")
        info = {"action": "rollback", "from": current, "by": _who(), "reason": reason or "rollback"}
        summary = f"rollback {name} {stage}: {current} → {to}" + (f" ({reason})" if reason else "")
        tags.assign(name, to, stage, tags.compose_message(summary, info))
    return {"name": name, "stage": stage, "from": current, "to": to, "seconds": time.monotonic() - started}


def show(name: str | None = None) -> list[dict[str, Any]]:
    """One row per registered version: commit, content id, stages it holds now, key metrics."""
    names = [name] if name else sorted(artifacts.declared())
    rows = []
    for artifact_name in names:
        all_events = tags.events(artifact_name)
        holders = {}
        for event in all_events:
            if event.kind == "assignment":
                holders[event.stage] = event.version
        for event in (e for e in all_events if e.kind == "registration"):
            rows.append(
                {
                    "artifact": artifact_name,
                    "version": event.version,
                    "stages": sorted(s for s, v in holders.items() if v == event.version),
                    "commit": event.commit,
                    "created": event.time.isoformat(),
                    "content_id": event.info.get("content_id"),
                    "metrics": event.info.get("metrics", {}),
                    "author": event.author,
                }
            )
    return rows


def history(name: str | None = None) -> list[dict[str, Any]]:
    """Every registry event, newest first: who moved what, when and why."""
    names = [name] if name else sorted(artifacts.declared())
    rows = [
        {
            "time": event.time.isoformat(),
            "artifact": artifact_name,
            "event": event.info.get("action") or event.kind,
            "version": event.version,
            "stage": event.stage,
            "from": event.info.get("from"),
            "by": event.info.get("by") or event.author,
            "reason": event.info.get("reason"),
            "forced": event.info.get("forced", False),
            "content_id": event.info.get("content_id"),
            "tag": event.tag,
        }
        for artifact_name in names
        for event in tags.events(artifact_name)
    ]
    return sorted(rows, key=lambda r: r["time"], reverse=True)


def fetch(
    out: Path,
    name: str = artifacts.DEFAULT_NAME,
    version: str | None = None,
    stage: str | None = None,
    with_base: bool = False,
    force: bool = False,
) -> Resolved:
    from tuneledger.registry.fetch import fetch as fetch_verified

    resolved = resolve(name, version=version, stage=stage)
    fetch_verified(resolved, out, with_base=with_base, force=force)
    return resolved
