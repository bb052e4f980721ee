"""The `benchmark` stage against lm-eval's own command line on SmolLM2-135M: the same task (the
shipped copy_words, all 60 documents), model, adapter, dtype and chat template.

The stage scores the base and the tuned model in one process; lm-eval's CLI takes one model per
run, so its side is two runs (base, then base + `peft=`), the way a user would get both numbers.

Like with like: every stage computes on the portable CPU kernels (core/kernels.py), so the CLI is
timed on them too. The price of those kernels is a figure of its own: the same CLI runs on the
kernels torch picks by itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from common import interleaved, ratio, sh, smollm2_chat_run, summary

from tuneledger.core.kernels import PORTABLE_CPU_KERNELS

ROUNDS = 3
TASK = {"task": "copy_words", "limit": None, "num_fewshot": 0, "batch_size": 16}


def build(work: Path) -> Path:
    return smollm2_chat_run(work / "benchmark-stage", **{"eval.benchmarks": [TASK]})


def cli(repo: Path, model_args: str, out: Path, env: dict[str, str]) -> None:
    sh(
        "lm_eval", "--model", "hf", "--model_args", f"{model_args},dtype=float32",
        "--tasks", TASK["task"], "--include_path", "configs/eval_tasks",
        "--num_fewshot", str(TASK["num_fewshot"]), "--batch_size", str(TASK["batch_size"]),
        "--device", "cpu", "--apply_chat_template", "--output_path", str(out),
        cwd=repo,
        env=env,
    )  # fmt: skip


def cli_both(repo: Path, out: Path, env: dict[str, str]) -> None:
    cli(repo, "pretrained=models/base", out / "base", env)
    cli(repo, "pretrained=models/base,peft=models/adapter", out / "tuned", env)


def run(ctx: dict) -> dict:
    repo = build(ctx["work"])
    out = ctx["work"] / "lm-eval-cli"
    native = {name: value for name, value in os.environ.items() if name not in PORTABLE_CPU_KERNELS}
    portable = {**native, **PORTABLE_CPU_KERNELS}
    times = interleaved(
        {
            "stage": lambda: sh("python", "-m", "tuneledger.stages.benchmark", cwd=repo),
            "cli": lambda: cli_both(repo, out / "portable", portable),
            "cli_native": lambda: cli_both(repo, out / "native", native),
        },
        ROUNDS,
    )
    median, low, high = ratio(times["stage"], times["cli"])
    price = ratio(times["cli"], times["cli_native"])
    record = json.loads((repo / "results/evaluate/benchmarks.json").read_text())["tasks"]["copy_words"]
    scores = f"base {record['base']:.3f}, tuned {record['tuned']:.3f} ({record['samples']} documents)"
    return {
        "title": "Benchmark stage against lm-eval's CLI (SmolLM2-135M, copy_words)",
        "ratios": [
            ("benchmark stage / lm-eval CLI (base + tuned), same CPU kernels", median, low, high, "≤ 1.05"),
            (
                "lm-eval CLI, portable CPU kernels / the kernels torch picks",
                *price,
                "the price of byte-identical rebuilds",
            ),
        ],
        "rows": [
            ("`python -m tuneledger.stages.benchmark`", summary(times["stage"]), scores),
            ("`lm_eval` base, then with `peft=`; portable kernels", summary(times["cli"]), "two processes"),
            ("the same, kernels torch picks", summary(times["cli_native"]), "MKL, ATen and oneDNN unset"),
        ],
        "notes": (
            "Both sides run lm-eval's own scoring on the same model and documents; the stage loads the "
            "base once, scores it, puts the adapter on and scores again, and then records the setup "
            "and the documents' SHA-256. The stages compute on the portable CPU kernels "
            "(`MKL_CBWR=COMPATIBLE`, AVX2; README, Reproducibility), and so does the CLI here; on an "
            "AVX-512 machine they cost what the second ratio says."
        ),
    }
