"""What the docs claim is what the project measures: figures come from the files the project
writes (results/evaluate/metrics.json, bench/results.md, the registry's gate log), and every test
docs/reliability.md cites exists, with as many cases as it says."""

from __future__ import annotations

import ast
import importlib
import re
from functools import cache

import pytest

from conftest import PROJECT, read_json
from tuneledger.core.params import Params

README = PROJECT / "README.md"
RELIABILITY = PROJECT / "docs/reliability.md"
BENCH = PROJECT / "bench/results.md"
TESTS = PROJECT / "tests"


def agrees(shown: str, actual: float) -> bool:
    """A figure as printed agrees with the measured value rounded to the digits it shows."""
    decimals = len(shown.partition(".")[2])
    return round(actual, decimals) == float(shown)


def the_figure(text: str, pattern: str) -> str:
    """The one figure `pattern` captures in the text (any line breaks); one gone or doubled fails."""
    found = re.findall(pattern.replace(" ", r"\s+"), text)
    assert len(found) == 1, f"expected the figure {pattern!r} exactly once, found {found}"
    return found[0]


# --- README against results/evaluate/metrics.json ----------------------------------------------


def test_readme_quotes_the_committed_evaluation():
    metrics = read_json(PROJECT / "results/evaluate/metrics.json")
    readme = README.read_text()
    shown = the_figure(readme, r"\(loss ([\d.]+) → ([\d.]+), exact match ([\d.]+) → ([\d.]+) on the held-out")
    actual = (
        metrics["base"]["loss"],
        metrics["tuned"]["loss"],
        metrics["base"]["exact_match"],
        metrics["tuned"]["exact_match"],
    )
    assert all(map(agrees, shown, actual)), f"README shows {shown}, metrics.json has {actual}"


def test_readme_example_answer_names_the_committed_content_id():
    committed = read_json(PROJECT / "models/export.manifest.json")["content_id"]
    shown = the_figure(README.read_text(), r'"content_id": "([0-9a-f]+)…"')
    assert committed.startswith(shown), f"README shows content id {shown}…, the committed one is {committed}"


# --- README against bench/results.md --------------------------------------------------------------


@cache
def bench_rows() -> dict[str, str]:
    """First cell → second cell of every table row in bench/results.md."""
    rows = {}
    for line in BENCH.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2:
            rows[cells[0]] = cells[1]
    return rows


def bench_number(row: str) -> float:
    """The leading number of a bench cell: `**1.44**` → 1.44, `0.760 s (0.734–0.791)` → 0.76."""
    return float(re.match(r"\**([\d.]+)", bench_rows()[row]).group(1))


def bench_minutes() -> float:
    return float(re.search(r"by `make bench`, ([\d.]+) min in all", BENCH.read_text()).group(1))


# README pattern (one figure) → the value bench/results.md holds for it.
BENCH_FIGURES = {
    r"takes ([\d.]+)× a plain script": lambda: bench_number("pipeline / plain script"),
    r"a no-op `dvc repro` takes ([\d.]+) s": lambda: bench_number("`dvc repro` (nothing changed)"),
    r"`tuneledger rollback` ([\d.]+) s": lambda: bench_number(
        "`tuneledger rollback --stage prod` (CLI, start-up included)"
    ),
    r"`make bench` measures ([\d.]+) s from start-up to the new tag": lambda: bench_number(
        "`tuneledger rollback --stage prod` (CLI, start-up included)"
    ),
    r"adds ([\d.]+)% of the tiny base's bytes": lambda: (
        100 * bench_number("new version / base model bytes (tiny default, measured)")
    ),
    r"\(([\d.]+)% for GPT-2-124M shapes\)": lambda: (
        100 * bench_number("new version / base model bytes (GPT-2-124M, computed, package only)")
    ),
    r"`verify` hashes at ([\d.]+)× `openssl": lambda: bench_number("verify throughput / openssl throughput"),
    r'"latency_ms": ([\d.]+)}': lambda: bench_number("prod p50, no shadow"),
    r"p50 latency unchanged \(([\d.]+)×\)": lambda: bench_number("prod p50 with shadow / without"),
    r"make CPU pre-training about ([\d.]+)× slower": lambda: bench_number(
        "portable / native kernels (CPU pre-training)"
    ),
    r"the stage takes ([\d.]+)× the time of lm-eval's CLI": lambda: bench_number(
        "benchmark stage / lm-eval CLI (base + tuned), same CPU kernels"
    ),
    r"make that scoring ([\d.]+)× slower": lambda: bench_number(
        "lm-eval CLI, portable CPU kernels / the kernels torch picks"
    ),
    r"`make bench` \(about ([\d.]+) minutes\)": bench_minutes,
    r"plain script doing the same training, ([\d.]+) s more": lambda: bench_number(
        "difference (median of per-round differences)"
    ),
    r"imports what it uses again: ([\d.]+), [\d.]+, [\d.]+ and [\d.]+ s": lambda: bench_number("`prepare`"),
    r"imports what it uses again: [\d.]+, ([\d.]+), [\d.]+ and [\d.]+ s": lambda: bench_number("`train`"),
    r"imports what it uses again: [\d.]+, [\d.]+, ([\d.]+) and [\d.]+ s": lambda: bench_number("`evaluate`"),
    r"imports what it uses again: [\d.]+, [\d.]+, [\d.]+ and ([\d.]+) s": lambda: bench_number("`export`"),
    r"`show` takes ([\d.]+) s, `history`": lambda: bench_number("1000 versions, 2000 stage tags: `show`"),
    r"`history` ([\d.]+) s and `rollback`": lambda: bench_number("1000 versions, 2000 stage tags: `history`"),
    r"and `rollback` ([\d.]+) s where `gto show`": lambda: bench_number(
        "1000 versions, 2000 stage tags: `rollback`"
    ),
    r"where `gto show` takes ([\d.]+) s": lambda: bench_number("1000 versions, 2000 stage tags: `gto show`"),
    r"`promote` takes ([\d.]+) s beside its gate": lambda: bench_number(
        "1000 versions, 2000 stage tags: `promote less its gate`"
    ),
    r"beside its gate's ([\d.]+) s of downloads": lambda: (
        bench_number("1000 versions, 2000 stage tags: `promote`")
        - bench_number("1000 versions, 2000 stage tags: `promote less its gate`")
    ),
    r"no download \(live in ([\d.]+) s in `make bench`": lambda: bench_number(
        "rollback live (previous holder resident)"
    ),
    r"the batched server answers ([\d.]+) tokens/s": lambda: bench_number("batched server, 16 client(s)"),
    r"tokens/s, ([\d.]+)× the one-at-a-time path": lambda: bench_number(
        "batched vs one-at-a-time throughput, 16 clients"
    ),
    r"([\d.]+)× transformers' continuous batching": lambda: bench_number(
        "batched server vs generate_batch throughput"
    ),
    r"and ([\d.]+)× one padded `model.generate`": lambda: round(
        bench_number("batched server, 16 client(s)")
        / bench_number("one padded `model.generate`, 16 prompts (the limit)"),
        2,
    ),
    r"`/health` keeps a p99 of ([\d.]+) ms": lambda: bench_number("/health p99 while serving"),
    r"one batch give ([\d.]+)× the throughput": lambda: bench_number(
        "3 versions mixed vs 1 version throughput"
    ),
    r"at 16 clients is\s+([\d.]+)× that at one client": lambda: bench_number("TTFT p95, 16 clients vs 1"),
}


@pytest.mark.parametrize("pattern", BENCH_FIGURES)
def test_readme_quotes_the_committed_benchmark(pattern):
    shown = the_figure(README.read_text(), pattern)
    actual = BENCH_FIGURES[pattern]()
    assert agrees(shown, actual), f"README shows {shown} for {pattern!r}; bench/results.md has {actual}"


def test_readme_says_what_the_gate_measured_for_halving_the_rank(registry):
    """Halving the default's rank (v1.0.0 r=8 → v1.1.0 r=4) stays within the default drift bound, as
    README says. The figure itself follows this machine's trajectory, so README quotes none."""
    _, log = registry
    measured = float(re.search(r"largest update-norm change ([\d.]+)%", log["promote_v2"]).group(1))
    bound = 100 * Params().registry.max_norm_drift
    shown = the_figure(
        README.read_text(),
        r"the default ([\d.]+) lets it double: halving the rank of the default stays within it",
    )
    assert float(shown) == Params().registry.max_norm_drift
    assert 0 < measured < bound, f"halving the rank moved the update norm by {measured}%, beyond {bound}%"


# --- docs/reliability.md: every cited test exists, with the cases it claims ------------------------


def cited_tests() -> list[tuple[str, str, int | None]]:
    """(file, test, claimed cases) for every test a table row cites; a bare `test_x` after
    `file.py::test_y` in the same cell is in the same file."""
    cited = []
    for line in RELIABILITY.read_text().splitlines():
        if not line.startswith("|"):
            continue
        current = None
        for file, name, cases in re.findall(r"`(?:([\w/]+\.py)::)?(test_\w+)`(?: \((\d+) cases\))?", line):
            current = file or current
            assert current, f"docs/reliability.md: `{name}` names no file: {line}"
            cited.append((current, name, int(cases) if cases else None))
    return cited


def cited_function(file: str, name: str):
    """The test function itself, from its module as pytest imports it (already loaded in a full run)."""
    module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
    return getattr(module, name, None)


def cases(file: str, name: str) -> int:
    """How many cases a test runs: its parametrize combinations times hypothesis' max_examples."""
    count = 1
    for mark in getattr(cited_function(file, name), "pytestmark", []):
        if mark.name == "parametrize":
            count *= len(mark.args[1])
    return count * hypothesis_examples(file, name)


def hypothesis_examples(file: str, name: str) -> int:
    """max_examples of a test's @settings (1 if it has none)."""
    tree = ast.parse((TESTS / file).read_text())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Call) and ast.unparse(decorator.func).endswith("settings"):
            for keyword in decorator.keywords:
                if keyword.arg == "max_examples":
                    return ast.literal_eval(keyword.value)
    return 1


def test_reliability_cites_only_tests_that_exist():
    cited = cited_tests()
    assert len(cited) > 30
    missing = [f"{file}::{name}" for file, name, _ in cited if not callable(cited_function(file, name))]
    assert not missing, f"docs/reliability.md cites tests that do not exist: {missing}"


def test_reliability_counts_the_cases_its_tests_run():
    counted = [(file, name, claimed) for file, name, claimed in cited_tests() if claimed is not None]
    assert counted, "docs/reliability.md claims no case count: this check would pass on nothing"
    for file, name, claimed in counted:
        runs = cases(file, name)
        assert runs == claimed, f"docs/reliability.md: {file}::{name} runs {runs} cases, not {claimed}"
