"""The registry page (`tuneledger ui`) as the registry grows: server time and response size of the
versions page and the compare page at 10, 100 and 1,000 versions (with twice as many stage tags)."""

from __future__ import annotations

import shutil
import statistics
import sys
import time

import httpx
from common import PROJECT, commit, ratio, sh

sys.path.insert(0, str(PROJECT / "tests"))
from browser import page_server  # noqa: E402
from registry_history import write_history  # noqa: E402

SCALES = (10, 100, 1000)
GOAL = 0.5  # seconds at 1,000 versions, from the request to the last byte
ROUNDS = 4  # each a fresh page process, so the first views are first views
AGAIN = 5  # repeated views per round


def _registry(ctx: dict, versions: int):
    """The completed default run under `versions` versions: every version's commit holds it, so its
    package is in the local DVC cache and the compare page diffs real weights."""
    repo = ctx["work"] / f"ui-{versions}"
    shutil.copytree(ctx["repo"], repo, symlinks=True)
    tags = sh("git", "tag", "--list", cwd=repo).split()
    if tags:  # versions another section registered: the history below starts at v1.0.0
        sh("git", "tag", "--delete", *tags, cwd=repo)
    commit(repo, "the completed default run")
    write_history(repo, versions=versions, stage_tags=2 * versions)
    return repo


def _get(client: httpx.Client, path: str) -> tuple[float, int]:
    started = time.perf_counter()
    response = client.get(path)
    seconds = time.perf_counter() - started
    response.raise_for_status()
    return seconds, len(response.content)


def _views(repo, first: str, paths: dict[str, str]) -> dict[str, tuple[float, int]]:
    """Each view's seconds and bytes on a fresh page, `first` before the rest; then each again."""
    figures = {}
    with page_server(repo) as page, httpx.Client(base_url=page.url, timeout=120) as client:
        order = [first, *(name for name in paths if name != first)]
        for name in order:
            figures[f"{name}, first view"] = _get(client, paths[name])
        for name in order:
            samples = [_get(client, paths[name]) for _ in range(AGAIN)]
            figures[f"{name}, again"] = (statistics.median(s for s, _ in samples), samples[0][1])
    return figures


def _measure(repo) -> dict[str, list[tuple[float, int]]]:
    """Each view's samples, in the order of PATHS, first views before repeated ones."""
    paths = {
        "versions page": "/",
        "versions sorted by test loss": "/versions/rows?sort=loss&order=asc",
        "compare page": "/compare",
        "compare's diff": "/compare/diff?a={a}&b={b}",
        "every version as JSON": "/api/versions",
    }
    newest = sh("git", "tag", "--list", "--sort=-creatordate", "lora-adapter@*", cwd=repo).split()
    a, b = (tag.split("@")[1] for tag in newest[:2])
    paths["compare's diff"] = paths["compare's diff"].format(a=a, b=b)
    samples: dict[str, list[tuple[float, int]]] = {}
    pages = ("versions page", "compare page")
    for index in range(ROUNDS):  # the versions page first, then the compare page first, and so on
        first, other = pages[index % 2], pages[1 - index % 2]
        for name, figure in _views(repo, first, paths).items():
            if name != f"{other}, first view":  # that one came after the other had read the registry
                samples.setdefault(name, []).append(figure)
    order = [f"{view}, {when}" for view in paths for when in ("first view", "again")]
    return {name: samples[name] for name in order}


def _row(versions: int, name: str, figures: list[tuple[float, int]]) -> tuple[str, str, str]:
    seconds = [s for s, _ in figures]
    size = figures[0][1]
    goal = ""
    if versions == SCALES[-1] and name.startswith(("versions page", "compare page")):
        goal = f"goal ≤ {GOAL} s: {'met' if statistics.median(seconds) <= GOAL else 'MISSED'}"
    measured = (
        f"{statistics.median(seconds):.3f} s ({min(seconds):.3f}–{max(seconds):.3f}), {size / 1024:.0f} KiB"
    )
    return f"{versions} versions, {2 * versions} stage tags: {name}", measured, goal


def run(ctx: dict) -> dict:
    rows, first_views = [], {}
    for versions in SCALES:
        samples = _measure(_registry(ctx, versions))
        first_views[versions] = [s for s, _ in samples["versions page, first view"]]
        rows += [_row(versions, name, figures) for name, figures in samples.items()]
    low, high = SCALES[0], SCALES[-1]
    ratios = [
        (
            f"registry page: versions page first view, {high:,} versions vs {low}",
            *ratio(first_views[high], first_views[low]),
            "one page of rows; every tag is read",
        )
    ]
    notes = (
        "Times are from the request to the last byte on loopback, through a real `tuneledger ui` "
        "process (tests/browser.py starts it). A first view is the first request of its kind to a fresh "
        "page process: it reads the registry's tags (`api.show`, `api.history`) and the committed files "
        "of the versions shown, in one `git grep` (tests/registry_history.py writes the history; every "
        "version's commit holds the completed default run). The versions page renders the newest 50 "
        "rows; sorting by a metric reads every version's metrics.json once, then from memory. The "
        "compare page is the part read from git (both versions, their curves); its diff (`tuneledger "
        "diff` through `api.diff`, from the local DVC cache) loads after the first paint and is "
        "remembered by the pair of commits. Rounds alternate which page is viewed first."
    )
    return {"title": "Registry page", "rows": rows, "ratios": ratios, "notes": notes}
