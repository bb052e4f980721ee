"""Benchmark results as a version records them (`metadata.json` → `benchmarks`), and what may be
compared: a task's score against the version's own base (forgetting), and against another version's
only when both scored the same setup."""

from __future__ import annotations

from typing import Any

from tuneledger.core.errors import TuneLedgerError

# Two scores of a task measure the same thing only when all of these agree.
SETUP = ("task_version", "num_fewshot", "limit", "data_sha256")


def combine(task: str, base: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
    """One task's record from its base and tuned scores (the same documents, or an error)."""
    if base["data_sha256"] != tuned["data_sha256"]:
        raise TuneLedgerError(f"eval.benchmarks: task {task!r} scored other documents on base and tuned")
    return {
        "metric": base["metric"],
        "base": base["score"],
        "tuned": tuned["score"],
        "change": tuned["score"] - base["score"],
        "base_stderr": base["stderr"],
        "tuned_stderr": tuned["stderr"],
        **{key: base[key] for key in SETUP},
        "samples": base["samples"],
    }


def summary(tasks: dict[str, dict]) -> dict[str, dict[str, float]]:
    """The numbers `dvc metrics diff` and `dvc exp show` show: base, tuned and change per task."""
    return {task: {key: record[key] for key in ("base", "tuned", "change")} for task, record in tasks.items()}


def forgotten(tasks: dict[str, dict], max_forgetting: float) -> list[str]:
    """The tasks on which the tuned model scores more than `max_forgetting` below its own base."""
    # Rounded: 0.9 - 0.88 is 0.0200000000000001 in floating point, and a loss of exactly the limit passes.
    return [
        task for task, record in tasks.items() if round(record["base"] - record["tuned"], 9) > max_forgetting
    ]


def setup_differences(candidate: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """What makes two records of one task incomparable, in the "candidate vs other" order."""
    return [
        f"{key} {_short(candidate.get(key))} vs {_short(other.get(key))}"
        for key in SETUP
        if candidate.get(key) != other.get(key)
    ]


def _short(value: Any) -> str:
    text = repr(value)
    return text[:14] + "…'" if isinstance(value, str) and len(value) > 16 else text


def table(tasks: dict[str, dict], names: list[str] | None = None) -> str:
    """`task: metric base → tuned (change)` for each task (or those named), `; `-separated."""
    return "; ".join(
        f"{task} {record['metric']} {record['base']:.3f} → {record['tuned']:.3f} ({record['change']:+.3f})"
        for task, record in tasks.items()
        if names is None or task in names
    )
