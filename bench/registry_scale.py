"""The registry as it grows: `show`, `history`, `rollback` and `promote` at 10, 100 and 1,000 versions
(with twice as many stage tags), beside gto's own commands on the same tags and the CLI's bare start-up."""

from __future__ import annotations

import shutil
import statistics
import sys
from functools import partial

from common import (
    HERE_BENCH,
    PROJECT,
    clone_template,
    commit,
    goal_verdict,
    interleaved,
    sh,
    summary,
    timed,
)

sys.path.insert(0, str(PROJECT / "tests"))
from registry_history import NAME, write_history  # noqa: E402

SCALES = (10, 100, 1000)
GOAL = 1.0  # seconds, CLI start-up included


def _history_over_a_completed_run(ctx: dict, versions: int):
    """The completed default run, committed and pushed to a local-directory remote, under `versions`
    versions and twice as many stage moves. Every version's commit holds that run, so `promote` runs
    the whole gate: downloads from the cache, verification, checks, and lineage on the remote."""
    repo = ctx["work"] / f"registry-{versions}"
    shutil.copytree(ctx["repo"], repo, symlinks=True)
    (repo / ".dvc" / "config.local").unlink(missing_ok=True)  # another section's remote
    tags = sh("git", "tag", "--list", cwd=repo).split()
    if tags:  # versions another section registered: the history below starts at v1.0.0
        sh("git", "tag", "--delete", *tags, cwd=repo)
    commit(repo, "the completed default run")
    remote = ctx["work"] / f"registry-{versions}-remote"
    sh("dvc", "remote", "modify", "--local", "storage", "url", str(remote), cwd=repo)
    sh("dvc", "push", "-q", cwd=repo)
    write_history(repo, versions=versions, stage_tags=2 * versions)
    return repo


def _promote(repo, rounds: int = 3) -> dict[str, list[float]]:
    """`promote` whole, and less the seconds of its gate, run alone just before on the same pair."""
    times: dict[str, list[float]] = {"promote": [], "promote less its gate": []}
    for index in range(rounds):
        version = f"v1.{index}.0"  # the last moves left a late version in dev: each promotion is real
        gate = float(sh(sys.executable, str(HERE_BENCH / "gate_alone.py"), NAME, version, "dev", cwd=repo))
        whole = timed(partial(sh, "tuneledger", "promote", version, "--stage", "dev", cwd=repo))
        times["promote"].append(whole)
        times["promote less its gate"].append(whole - gate)
    return times


def _measure(repo, versions: int) -> dict[str, list[float]]:
    ours = interleaved(
        {
            "show": lambda: sh("tuneledger", "show", cwd=repo),
            "history": lambda: sh("tuneledger", "history", cwd=repo),
            "history --limit 0": lambda: sh("tuneledger", "history", "--limit", "0", cwd=repo),
            "rollback": lambda: sh("tuneledger", "rollback", "--stage", "prod", cwd=repo),
            "for-each-ref": lambda: sh("git", "for-each-ref", "--format=%(refname)%(contents)", cwd=repo),
        },
        rounds=3,
    )
    promoted = _promote(repo)  # before gto's assignment below puts v1.0.0 into dev
    # gto rebuilds its state from every tag; at 1,000 versions one round takes about half a minute.
    gto = interleaved(
        {
            "gto show": lambda: sh("gto", "show", NAME, cwd=repo),
            "gto assign --force": lambda: sh(
                "gto", "assign", NAME, "--version", "v1.0.0", "--stage", "dev", "--force", cwd=repo
            ),
        },
        rounds=1 if versions >= 1000 else 3,
    )
    return {**ours, **promoted, **gto}


def run(ctx: dict) -> dict:
    rows, notes = [], []
    startup = clone_template(ctx["work"] / "registry-startup")
    cli = interleaved({"tuneledger --help": lambda: sh("tuneledger", "--help", cwd=startup)}, rounds=5)
    rows.append(("`tuneledger --help` (CLI start-up alone)", summary(cli["tuneledger --help"]), ""))
    for versions in SCALES:
        repo = _history_over_a_completed_run(ctx, versions)
        times = _measure(repo, versions)
        for command, samples in times.items():
            goal = ""
            if command in ("show", "history", "rollback", "promote less its gate"):
                goal = goal_verdict(statistics.median(samples), GOAL)
            if command == "promote":
                goal = "the gate included: downloads, verification, checks"
            what = f"{versions} versions, {2 * versions} stage tags: `{command}`"
            rows.append((what, summary(samples), goal))
    notes.append(
        "History written with `git fast-import` (tests/registry_history.py): one commit and tag per "
        "version, stage tags cycling through dev, staging and prod. `rollback` walks prod back one "
        "holder per round, a real rollback each time. The `show` and `history` tables list the newest 50 "
        "rows (`--limit`); `--limit 0` lays out every row, and rich's layout is then most of the time. "
        "Every version's commit holds one completed default run, pushed to a local-directory remote, so "
        "`promote` runs the whole gate on a real package: downloads, SHA-256 verification, weight, "
        "metric and signature checks, lineage on the remote. The goal for `promote` leaves the "
        "gate out: `promote less its gate` subtracts the gate's seconds, measured alone on the same pair "
        "just before (bench/gate_alone.py, through the functions `promote` calls)."
    )
    return {"title": "Registry at scale", "rows": rows, "ratios": [], "notes": "\n".join(notes)}
