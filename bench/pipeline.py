"""Pipeline overhead: `dvc repro` of the default versus a plain script doing the same work."""

from __future__ import annotations

import os
import shutil
import sys

from common import HERE_BENCH, clone_template, interleaved, ratio, sh, summary

from tuneledger.modeling import PORTABLE_CPU_KERNELS


def run(ctx: dict, rounds: int = 3) -> dict:
    repo = clone_template(ctx["work"] / "pipeline")

    def forget_checkpoints() -> None:  # otherwise `--force` resumes the finished run and skips training
        shutil.rmtree(repo / "models" / "checkpoints", ignore_errors=True)

    times = interleaved(
        {
            "dvc repro": lambda: sh("dvc", "repro", "--force", cwd=repo),
            "plain script": lambda: sh(
                sys.executable,
                str(HERE_BENCH / "plain_pipeline.py"),
                "params.yaml",
                cwd=repo,
                env={**os.environ, **PORTABLE_CPU_KERNELS},  # the same arithmetic as the stages
            ),
        },
        rounds,
        between=forget_checkpoints,
    )
    sh("dvc", "checkout", cwd=repo)  # put back the checkpoints of the completed run
    ctx["repo"] = repo  # a completed default run, for the sections that follow
    median, low, high = ratio(times["dvc repro"], times["plain script"])
    return {
        "title": "Pipeline overhead (the bundled default, from scratch)",
        "rows": [
            (
                "`dvc repro --force` (4 stages, 4 processes)",
                summary(times["dvc repro"]),
                "checkpoints, dvclive, manifest, metadata, atomic publishing",
            ),
            (
                "plain script (1 process)",
                summary(times["plain script"]),
                "same base build, training and evaluation, same CPU kernels",
            ),
        ],
        "ratios": [("pipeline / plain script", median, low, high, "≤ 1.10")],
        "notes": "Most of the difference is start-up: each DVC stage is its own Python process and imports "
        "torch, transformers and peft again (about 5 s each on this machine), where the plain script "
        "imports them once.",
    }
