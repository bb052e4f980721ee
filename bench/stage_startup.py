"""Stage start-up: what each stage process spends importing, read from `python -X importtime`
while the stage really runs (its imports are deferred to where they are used, so importing the
module alone would show almost nothing)."""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys

STAGES = ("prepare", "train", "evaluate", "export")
LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "dvclive", "dvc", "pydantic")
# One `-X importtime` line: self µs | cumulative µs | indented module name.
LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def imports(stage: str, repo) -> tuple[float, dict[str, float]]:
    """Seconds the stage spent importing, and how much of it each library's own modules took."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", f"tuneledger.stages.{stage}"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [(m[4], int(m[1]) / 1e6) for m in map(LINE.match, done.stderr.splitlines()) if m]
    libraries = {
        library: sum(sec for name, sec in rows if name == library or name.startswith(library + "."))
        for library in LIBRARIES
    }
    # Under 10 ms is a library the stage did not load (a blocked import leaves a line of a few µs).
    return sum(sec for _, sec in rows), {lib: sec for lib, sec in libraries.items() if sec >= 0.01}


def run(ctx: dict, rounds: int = 3) -> dict:
    repo = ctx["work"] / "stage-startup"
    shutil.copytree(ctx["repo"], repo, symlinks=True)  # a completed run: train resumes its final checkpoint
    rows = []
    for stage in STAGES:
        measured = [imports(stage, repo) for _ in range(rounds)]
        seconds = [total for total, _ in measured]
        loaded = ", ".join(f"{name} {sec:.2f} s" for name, sec in measured[-1][1].items())
        spread = f"{statistics.median(seconds):.2f} s ({min(seconds):.2f}–{max(seconds):.2f})"
        rows.append((f"`{stage}`", spread, loaded))
    return {
        "title": "Stage start-up: import time per stage process",
        "rows": rows,
        "ratios": [],
        "notes": "Each stage imports what it uses where it uses it. `evaluate` and `export` load no trl; "
        "`prepare` loads peft only through transformers' `set_seed`; a run without "
        "`model.quantization` never loads bitsandbytes (peft imports it whenever it is installed: "
        "0.7 s); `export` copies the generation config and environment record that `train` wrote, so it "
        "loads neither torch nor transformers unless it merges. A library's figure is the time spent in "
        "its own modules (its dependencies count for themselves).",
    }
