"""The Python API behind every `tuneledger` command: each command is one call here.

It is the top layer under the CLI: it composes packages, the registry and the serving log, and no
module below it imports it. Inputs are validated here, once, whoever calls.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneledger.core import git
from tuneledger.core.errors import TuneLedgerError, broken_json
from tuneledger.core.layout import EXPORT_DIR, MANIFEST_FILE, manifest_path_for
from tuneledger.core.params import load_params
from tuneledger.package import comparison, weights
from tuneledger.package.files import METADATA
from tuneledger.package.manifest import Manifest
from tuneledger.package.verify import verify
from tuneledger.registry import artifacts, remote, tags
from tuneledger.registry.artifacts import DEFAULT_NAME
from tuneledger.registry.lock import registry_lock
from tuneledger.registry.promotion_gate import Check, GateFailed, run_gate
from tuneledger.registry.rebuild import Reproduction, rebuild_in_worktree
from tuneledger.registry.remote import missing_on_remote, open_repo, push
from tuneledger.registry.versions import (
    Resolved,
    discard,
    git_show,
    publish_verified,
    resolve,
    scratch_dir,
)
from tuneledger.serve import log, log_reports
from tuneledger.serve.config import ServeConfig, parse_canary

BUMPS = ("major", "minor", "patch")
SERVE_DEFAULTS = ServeConfig()  # `serve`'s defaults, written once (the CLI's help shows them)


# --- packages -----------------------------------------------------------------------------------
def verify_package(package: Path = EXPORT_DIR, manifest: Path | None = None) -> Manifest:
    """Every file of a package against its manifest (SHA-256); raises on any difference."""
    return verify(package, manifest)


def generate(
    package: Path,
    prompt: str | None = None,
    messages: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    base: Path | None = None,
    device: str | None = None,
) -> str:
    """One answer of a verified package to a prompt, or to a conversation read from `messages`
    (a JSON file, or - for stdin), within its signature."""
    from tuneledger.inference.predict import Predictor

    if (prompt is None) == (messages is None):
        raise TuneLedgerError("generate: give a PROMPT or --messages FILE.json (one of them)")
    conversation = _read_messages(messages) if messages is not None else None
    predictor = Predictor.open(package, base=base, device=device)
    params = {"max_new_tokens": max_new_tokens, "temperature": temperature}
    params = {k: v for k, v in params.items() if v is not None}
    if conversation is not None:
        return predictor.chat(conversation, params)
    return predictor.predict(prompt, params)


def _read_messages(source: str) -> list:
    """The conversation given to `generate --messages`: a JSON list of turns, or {"messages": [...]}."""
    name = "stdin" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        body = json.loads(text)
    except OSError as exc:
        raise TuneLedgerError(f"--messages {name}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise broken_json(f"--messages {name}", exc, "not valid JSON") from None
    if isinstance(body, dict) and "messages" in body:
        body = body["messages"]
    if not isinstance(body, list):
        raise TuneLedgerError(f"--messages {name}: expected a list of {{role, content}} turns")
    return body


def diff(a: str, b: str) -> dict[str, Any]:
    """Both versions' facts (params, adapter shape read from the weights, metrics, content ids) and
    the keys whose values differ; each side a package directory or a git revision."""
    with _package_at(a) as (pa, ma), _package_at(b) as (pb, mb):
        left, right = comparison.describe(pa, ma), comparison.describe(pb, mb)
    return comparison.compare(a, left, b, right)


@contextlib.contextmanager
def _package_at(ref: str) -> Iterator[tuple[Path, Path | None]]:
    """A local package directory for `ref` (and its manifest): a directory as is, or the export of
    a git revision, its describing files downloaded through DVC."""
    if Path(ref).is_dir():
        yield Path(ref), None
        return
    commit = git.resolve_commit(ref)
    if commit is None:
        raise TuneLedgerError(f"{ref}: neither a package directory nor a git revision of this repository")
    tmp = Path(tempfile.mkdtemp(prefix="tuneledger-diff-"))
    try:
        package = tmp / EXPORT_DIR.name
        names = list(comparison.DESCRIBING_FILES)
        remote.download(commit, EXPORT_DIR.as_posix(), package, names, doing=f"diff {ref}")
        text = git_show(commit, MANIFEST_FILE.as_posix())
        manifest = manifest_path_for(package) if text is not None else None
        if manifest is not None:
            manifest.write_text(text, encoding="utf-8")
        yield package, manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- the registry -------------------------------------------------------------------------------
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
    name: str = DEFAULT_NAME,
    bump: str = "minor",
    version: str | None = None,
    push_first: bool = False,
) -> dict[str, Any]:
    """Tag HEAD as a new version of `name`, after every reason to refuse has been checked."""
    from tuneledger.package import metadata

    if bump not in BUMPS:
        raise TuneLedgerError(f"--bump must be major, minor or patch (got {bump!r})")
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
        meta = metadata.read(artifact.path / METADATA)
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
    name: str = DEFAULT_NAME,
    force: bool = False,
    reason: str | None = None,
    require_shadow_agreement: float | None = None,
    db: Path | None = None,
    require_canary: bool = False,
    since: str | None = None,
) -> dict[str, Any]:
    """Run the gate against the stage's current version, then move the stage to `version`.

    With `require_shadow_agreement`, the gate also requires that exact agreement of `version` as
    a shadow of prod; with `require_canary`, that `version` as the canary arm did no worse than
    the stable arm (registry.canary_* limits). Both read the serving log `db` (since `since`).
    """
    if force and not reason:
        raise TuneLedgerError("--force needs --reason: the override is recorded in the registry")
    tags.check_stage(stage)
    extra_checks: list[Check] = []
    if require_shadow_agreement is not None:
        from tuneledger.serve.shadow_agreement import agreement_check

        extra_checks.append(agreement_check(version, require_shadow_agreement, db))
    if require_canary:
        from tuneledger.serve.canary_check import canary_check

        start = log_reports.parse_since(since) if since else None
        extra_checks.append(canary_check(version, load_params().registry, db, start))
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
    stage: str, name: str = DEFAULT_NAME, to: str | None = None, reason: str | None = None
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


def history(name: str | None = None, db: Path | None = None) -> list[dict[str, Any]]:
    """Every registry event, newest first: who moved what, when and why; with the serving log `db`
    (by default the default log, if there is one), also when `serve` swapped versions."""
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
    db = db or (log.DEFAULT_DB if log.DEFAULT_DB.is_file() else None)
    if db is not None:
        rows += [e for e in log_reports.serving_events(db) if name is None or e["artifact"] == name]
    return sorted(rows, key=lambda r: r["time"], reverse=True)


def fetch(
    out: Path,
    name: str = DEFAULT_NAME,
    version: str | None = None,
    stage: str | None = None,
    with_base: bool = False,
    force: bool = False,
) -> Resolved:
    """Resolve through the registry, download through DVC, verify against the committed manifest,
    then publish into `out`."""
    resolved = resolve(name, version=version, stage=stage)
    publish_verified(resolved, out, with_base=with_base, force=force)
    return resolved


def reproduce(version: str, name: str = DEFAULT_NAME) -> Reproduction:
    """Rebuild a version from its commit in a temporary worktree and compare content ids."""
    return rebuild_in_worktree(resolve(name, version=version))


# --- serving ------------------------------------------------------------------------------------
def serve(**options: Any) -> None:
    """Serve a stage over HTTP until stopped; `options` are `ServeConfig` fields, None for a default."""
    from tuneledger.serve import app

    given = {k: v for k, v in options.items() if v is not None}
    if not given.get("api_key"):
        given.pop("api_key", None)  # an empty key is no key
    if "canary" in given:
        given["canary"] = parse_canary(given["canary"])
    for key in ("allowed_hosts", "allow_origins"):
        if key in given:
            given[key] = tuple(given[key])
    app.serve(ServeConfig(**given))


def canary_report(db: Path | None = None, since: str | None = None, version: str | None = None) -> dict:
    """The canary arms side by side (see serve.log_reports.canary_report); `since` as for shadow_report."""
    return log_reports.canary_report(
        db or log.DEFAULT_DB, log_reports.parse_since(since) if since else None, version
    )


def shadow_report(db: Path | None = None, version: str | None = None, since: str | None = None) -> dict:
    """Agreement of the shadow with prod, latency of both sides, errors and drops; `since` is a
    duration back (90m, 24h, 7d) or a time (2025-01-31T12:00)."""
    return log_reports.shadow_report(
        db or log.DEFAULT_DB, version, log_reports.parse_since(since) if since else None
    )
