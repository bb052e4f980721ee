"""A no-op `dvc repro` versus `dvc status`, DVC's own floor for checking that nothing changed."""

from __future__ import annotations

from common import interleaved, ratio, sh, summary


def run(ctx: dict, rounds: int = 7) -> dict:
    repo = ctx["repo"]
    times = interleaved(
        {
            "dvc repro": lambda: sh("dvc", "repro", cwd=repo),
            "dvc status": lambda: sh("dvc", "status", cwd=repo),
        },
        rounds,
    )
    median, low, high = ratio(times["dvc repro"], times["dvc status"])
    return {
        "title": "No-op `dvc repro`",
        "rows": [
            ("`dvc repro` (nothing changed)", summary(times["dvc repro"]), ""),
            ("`dvc status`", summary(times["dvc status"]), "DVC's floor"),
        ],
        "ratios": [("no-op repro / status", median, low, high, "near 1")],
    }
