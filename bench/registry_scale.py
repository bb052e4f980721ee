"""The registry as it grows: `show`, `history` and `rollback` at 10, 100 and 1,000 versions (with
twice as many stage tags), beside gto's own commands on the same tags and the CLI's bare start-up."""

from __future__ import annotations

import sys

from common import PROJECT, clone_template, interleaved, sh, summary

sys.path.insert(0, str(PROJECT / "tests"))
from registry_history import NAME, write_history  # noqa: E402

SCALES = (10, 100, 1000)
GOAL = 1.0  # seconds, CLI start-up included


def _median(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2]


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
    return {**ours, **gto}


def run(ctx: dict) -> dict:
    rows, notes = [], []
    startup = clone_template(ctx["work"] / "registry-startup")
    cli = interleaved({"tuneledger --help": lambda: sh("tuneledger", "--help", cwd=startup)}, rounds=5)
    rows.append(("`tuneledger --help` (CLI start-up alone)", summary(cli["tuneledger --help"]), ""))
    for versions in SCALES:
        repo = clone_template(ctx["work"] / f"registry-{versions}")
        write_history(repo, versions=versions, stage_tags=2 * versions)
        times = _measure(repo, versions)
        for command, samples in times.items():
            goal = ""
            if command in ("show", "history", "rollback"):
                goal = f"goal ≤ {GOAL:.0f} s: {'met' if _median(samples) <= GOAL else 'MISSED'}"
            what = f"{versions} versions, {2 * versions} stage tags: `{command}`"
            rows.append((what, summary(samples), goal))
    notes.append(
        "History written with `git fast-import` (tests/registry_history.py): one commit and tag per "
        "version, stage tags cycling through dev, staging and prod. `rollback` walks prod back one "
        "holder per round, a real rollback each time. The `show` and `history` tables list the newest 50 "
        "rows (`--limit`); `--limit 0` lays out every row, and rich's layout is then most of the time."
    )
    return {"title": "Registry at scale", "rows": rows, "ratios": [], "notes": "\n".join(notes)}
