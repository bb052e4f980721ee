"""`dvc exp run -S lora.r=4` versus editing params.yaml and `dvc repro`, for the same variant."""

from __future__ import annotations

from common import interleaved, ratio, set_param, sh, summary


def run(ctx: dict, rounds: int = 3) -> dict:
    repo = ctx["repo"]
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "-m", "default run", cwd=repo)

    def reset() -> None:  # back to the committed default; its checkpoints are another configuration
        sh("git", "reset", "-q", "--hard", cwd=repo)  # also drops what autostage put in the index
        sh("dvc", "checkout", "--force", cwd=repo)

    def exp_run() -> None:
        sh("dvc", "exp", "run", "-S", "lora.r=4", cwd=repo)

    def repro() -> None:
        set_param(repo, "lora.r", 4)
        sh("dvc", "repro", cwd=repo)

    times = interleaved({"dvc exp run": exp_run, "dvc repro": repro}, rounds, between=reset)
    median, low, high = ratio(times["dvc exp run"], times["dvc repro"])
    return {
        "title": "A variant: `dvc exp run` versus `dvc repro`",
        "rows": [
            ("`dvc exp run -S lora.r=4`", summary(times["dvc exp run"]), "train, evaluate, export"),
            ("edit params.yaml, `dvc repro`", summary(times["dvc repro"]), "the same stages"),
        ],
        "ratios": [("exp run / repro", median, low, high, "near 1")],
    }
