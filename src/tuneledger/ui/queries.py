"""What the registry page reads, all of it read-only: the registry through the API (`show`,
`history`, `diff`), the files each version committed in git, a version's package in the local DVC
cache (never the remote: looking at a page downloads nothing), and the serving log."""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneledger import api
from tuneledger.core import git
from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.layout import EVAL_RESULTS, TRAIN_RESULTS
from tuneledger.core.params import PARAMS_FILE
from tuneledger.package import metadata
from tuneledger.package.files import METADATA
from tuneledger.package.verify import VerificationFailed
from tuneledger.registry import remote, tags
from tuneledger.registry.promotion_gate import LOWER_IS_BETTER
from tuneledger.registry.versions import (
    Resolved,
    discard,
    download_verified,
    git_show,
    resolve_at,
    scratch_dir,
)
from tuneledger.serve import log_reports
from tuneledger.serve.config import ServeConfig

METRICS = (EVAL_RESULTS / "metrics.json").as_posix()
BENCHMARKS = (EVAL_RESULTS / "benchmarks.json").as_posix()  # the benchmark stage's; older versions lack it
# dvclive's series, the ones dvc.yaml's `plots:` draws as "Training and validation loss"
CURVES = {
    "train loss": (TRAIN_RESULTS / "plots/metrics/train/loss.tsv").as_posix(),
    "eval loss": (TRAIN_RESULTS / "plots/metrics/eval/loss.tsv").as_posix(),
}
CARD = "README.md"  # the package's model card (stages/export.py writes it)
KEY_METRICS = tuple(LOWER_IS_BETTER)  # loss, perplexity, exact_match: what the gate compares
FIRST_PAGE = 50
PROD = ServeConfig.stage  # the stage `serve` follows: a candidate is compared with its version
# The page's calls into DVC (its cache, a diff, the gate of an action) run one at a time: DVC's
# repository objects are not made for threads.
DVC_LOCK = threading.Lock()


class UnknownVersion(TuneLedgerError):
    """A version the registry does not hold (the page answers 404)."""


# --- files committed at a version's commit -------------------------------------------------------
_committed: dict[tuple[str, str], str | None] = {}  # a commit never changes, nor what it holds
_GREP_CHUNK = 2000  # commits per git call, well under the argument-list limit


def committed(commits: list[str], paths: list[str]) -> dict[tuple[str, str], str | None]:
    """The text of each path at each commit (None where a commit has no such file), remembered.

    All of them in one git process: `git show` costs one per file (seconds at 1,000 versions), and
    `git cat-file --batch` needs a pipe to its stdin, which core.git does not offer. `git grep` with
    an empty pattern prints every line of every file, each after `COMMIT:PATH` and a NUL."""
    wanted = [(c, p) for c in dict.fromkeys(commits) for p in paths if (c, p) not in _committed]
    todo = list(dict.fromkeys(c for c, _ in wanted))
    for start in range(0, len(todo), _GREP_CHUNK):
        _read(todo[start : start + _GREP_CHUNK], paths)
    return {(c, p): _committed.get((c, p)) for c in commits for p in paths}


def _read(commits: list[str], paths: list[str]) -> None:
    args = ["--no-line-number", "--no-column", "--full-name", "--no-color", "-a", "-z", "-F", "-e", ""]
    done = git.git_process("grep", *args, *commits, "--", *paths)
    if done.returncode not in (0, 1):  # 1: no file matched at all
        detail = (done.stderr.strip().splitlines() or ["failed"])[-1]
        raise TuneLedgerError(f"git grep (reading committed files): {detail}")
    lines: dict[tuple[str, str], list[str]] = {}
    for line in done.stdout.splitlines():
        where, _, text = line.partition("\0")
        commit, _, path = where.partition(":")
        lines.setdefault((commit, path), []).append(text)
    for commit in commits:
        for path in paths:
            found = lines.get((commit, path))
            _committed[commit, path] = "\n".join(found) + "\n" if found is not None else None


def _json(text: str | None) -> dict:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def curve(text: str | None) -> list[list[float]]:
    """A dvclive series (`step<TAB>value` with a header) as [step, value] points."""
    points = []
    for line in (text or "").splitlines()[1:]:
        cells = line.split("\t")
        try:
            points.append([float(cells[0]), float(cells[-1])])
        except (ValueError, IndexError):
            continue
    return points


# --- the registry ---------------------------------------------------------------------------------
@dataclass
class Registry:
    """One read of the registry's tags: every version (newest first) and every event."""

    rows: list[dict[str, Any]]
    events: list[dict[str, Any]]
    by_version: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_version = {row["version"]: row for row in self.rows}

    def holder(self, stage: str) -> str | None:
        return next((row["version"] for row in self.rows if stage in row["stages"]), None)

    def stages(self) -> list[str]:
        """The stages `.gto` declares, in its order, then any other a tag names."""
        seen = [e["stage"] for e in reversed(self.events) if e["stage"]]
        return list(dict.fromkeys([*declared_stages(), *seen]))

    def get(self, version: str) -> dict[str, Any]:
        if version not in self.by_version:
            known = ", ".join(list(self.by_version)[:10]) or "none yet"
            raise UnknownVersion(f"version {version} not found; registered versions: {known}")
        return self.by_version[version]

    def tag(self, version: str) -> str:
        """The version's registration tag, a git revision `tuneledger diff` takes."""
        return next(
            e["tag"]
            for e in self.events
            if e["version"] == version and e["event"] in ("register", "registration")
        )


def warm_up() -> None:
    """Import at start-up what first views would wait for: gto (the declared stages) and DVC (a
    package, a diff), about a second each."""
    import dvc.repo  # noqa: F401

    declared_stages()


def declared_stages() -> list[str]:
    """The stages `.gto` declares, read by gto as `promote` reads them (none if it cannot be read:
    `promote` then says why)."""
    from gto.config import read_registry_config
    from gto.exceptions import WrongConfig

    try:
        return list(read_registry_config(str(tags.GTO_CONFIG)).stages or [])
    except WrongConfig:
        return []


_registry: dict[str, Any] = {"state": None, "value": None}
_registry_lock = threading.Lock()


def registry(name: str) -> Registry:
    """The registry as its tags say now; read again only when a tag was added, moved or deleted."""
    state = git.tag_refs_state(git.common_dir())
    with _registry_lock:
        if _registry["state"] != (name, state):
            # Each reads every tag in a git process of its own: side by side, one parses while the
            # other waits for git (a fifth less time at 1,000 versions).
            with ThreadPoolExecutor(2) as pool:
                shown, history = pool.submit(api.show, name), pool.submit(api.history, name)
                rows = list(reversed(shown.result()))
                events = [e for e in history.result() if e.get("tag")]  # serving swaps have no tag
            verdicts = _verdicts(events)
            for row in rows:
                row["verdict"] = verdicts.get(row["version"])
            _registry.update(state=(name, state), value=Registry(rows, events))
        return _registry["value"]


def _verdicts(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each version's last promotion: the gate's verdict its tag message recorded (passed, or
    forced past failed checks, and why)."""
    found: dict[str, dict[str, Any]] = {}
    for event in events:  # newest first
        if event["event"] == "promote" and event["version"] not in found:
            found[event["version"]] = event
    return found


def with_files(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with the metrics and benchmark scores each version committed."""
    texts = committed([row["commit"] for row in rows], [METRICS, BENCHMARKS])
    for row in rows:
        scores = _json(texts[row["commit"], METRICS])
        row["scores"] = {side: scores.get(side) or {} for side in ("base", "tuned")}
        row["benchmarks"] = _json(texts[row["commit"], BENCHMARKS]).get("tasks") or {}
    return rows


# --- the versions table: sorted and filtered here, so the page renders one page of rows ---------
def _semver(version: str) -> tuple:
    return tuple(int(n) for n in re.findall(r"\d+", version.split("-")[0].split("+")[0])[:3])


SORTS = {
    "version": lambda r: _semver(r["version"]),
    "created": lambda r: r["created"],
    "author": lambda r: (r.get("author") or "").lower(),
    "stages": lambda r: (len(r["stages"]), r["stages"]),
    **{m: (lambda r, m=m: r["scores"]["tuned"].get(m)) for m in KEY_METRICS},
    "gate": lambda r: (r["verdict"] or {}).get("time") or "",
}


def _matches(row: dict[str, Any], text: str, stage: str) -> bool:
    if stage and stage not in row["stages"]:
        return False
    if not text:
        return True
    verdict = row["verdict"] or {}
    fields = [row["version"], row["commit"], row.get("content_id"), row.get("author"), *row["stages"]]
    fields += [verdict.get("stage"), verdict.get("reason"), *row.get("benchmarks", {})]
    return any(text in str(value).lower() for value in fields if value)


def version_rows(
    name: str, sort: str = "created", descending: bool = True, text: str = "", stage: str = "", page: int = 1
) -> tuple[list[dict[str, Any]], int]:
    """One page of the versions table (FIRST_PAGE rows), and how many rows match. Only the rows
    shown have their committed files read, unless a metric decides the order."""
    rows = [r for r in registry(name).rows if _matches(r, text.lower(), stage)]
    key = SORTS.get(sort, SORTS["created"])
    if sort in KEY_METRICS:
        with_files(rows)
    present = [r for r in rows if key(r) is not None]
    ordered = sorted(present, key=key, reverse=descending) + [r for r in rows if key(r) is None]
    shown = ordered[(page - 1) * FIRST_PAGE : page * FIRST_PAGE]
    return with_files(shown), len(rows)


# --- one version ----------------------------------------------------------------------------------
def version_detail(name: str, version: str) -> dict[str, Any]:
    """What git holds about a version: its row, params, scores, curves, and its registry events."""
    reg = registry(name)
    row = with_files([reg.get(version)])[0]
    commit = row["commit"]
    texts = committed([commit], [PARAMS_FILE.as_posix(), *CURVES.values()])
    params = yaml.safe_load(texts[commit, PARAMS_FILE.as_posix()] or "") or {}
    # The registry's promotion policy is not part of the model (export leaves it out of metadata too).
    params.pop("registry", None)
    return {
        "row": row,
        "params": params,
        "curves": [  # training solid, validation dashed, in every chart
            {"name": label, "points": points, "dashed": index > 0}
            for index, (label, path) in enumerate(CURVES.items())
            if (points := curve(texts[commit, path]))
        ],
        "events": [e for e in reg.events if e["version"] == version],
    }


_packages: dict[str, dict[str, Any]] = {}  # by commit: a verified package never changes
REMEMBERED = 256  # packages and comparisons kept in memory, the oldest forgotten first


def _remember(store: dict, key: Any, value: dict[str, Any]) -> dict[str, Any]:
    store[key] = value
    while len(store) > REMEMBERED:
        store.pop(next(iter(store)))
    return value


def package_report(name: str, version: str) -> dict[str, Any]:
    """The version's package from the local DVC cache, checked against the manifest committed at
    its commit: verification, lineage, environment and model card. Nothing is downloaded."""
    row = registry(name).get(version)
    if row["commit"] in _packages:
        return _packages[row["commit"]]
    with DVC_LOCK:
        resolved = resolve_at(name, version, row["commit"])
        missing = missing_locally(resolved)[version]
        if missing:
            return {"state": "not local", "missing": missing, "resolved": resolved}
        report = _verified(resolved)
    if report["state"] == "verified":  # not a missing or failed one: the cache may be mended
        _remember(_packages, row["commit"], report)
    return report


def missing_locally(*resolved: Resolved) -> dict[str, list[str]]:
    """Each version's package files that the local DVC cache lacks (all of them when it lacks even
    their listing), by version. The output's hash is read from dvc.lock at the version's commit:
    the answer DVC's index gives at that commit, without building the index (a second each)."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    found = {}
    with remote.open_repo() as repo:
        cache = repo.cache.local
        for version in resolved:
            tree_hash = _locked_hash(version)
            if tree_hash is None or not cache.exists(tree_hash):
                found[version.version] = sorted(version.manifest.files)
                continue
            tree = Tree.load(cache, HashInfo("md5", tree_hash))
            found[version.version] = sorted("/".join(k) for k, _, oid in tree if not cache.exists(oid.value))
    return found


def _locked_hash(resolved: Resolved) -> str | None:
    """The md5 dvc.lock records at the version's commit for its package directory."""
    lock = yaml.safe_load(git_show(resolved.commit, "dvc.lock") or "") or {}
    outs = [out for stage in (lock.get("stages") or {}).values() for out in stage.get("outs") or []]
    return next((out.get("md5") for out in outs if out.get("path") == resolved.path), None)


def _verified(resolved: Resolved) -> dict[str, Any]:
    workdir = scratch_dir()
    try:
        package = workdir / "package"
        try:
            download_verified(resolved, package, sorted(resolved.manifest.files))
        except VerificationFailed as exc:
            return {"state": "failed", "problems": [str(p) for p in exc.problems], "resolved": resolved}
        meta = metadata.read(package / METADATA)
        card = (package / CARD).read_text(encoding="utf-8") if (package / CARD).is_file() else ""
    finally:
        discard(workdir)
    return {"state": "verified", "resolved": resolved, "metadata": meta, "card": card}


# --- two versions ---------------------------------------------------------------------------------
def default_pair(name: str) -> tuple[str | None, str | None]:
    """The version in prod and a candidate: the newest other version."""
    reg = registry(name)
    versions = [row["version"] for row in reg.rows]
    a = reg.holder(PROD) or (versions[1] if len(versions) > 1 else None)
    b = next((v for v in versions if v != a), None)
    return a, b


_comparisons: dict[tuple[str, str], dict[str, Any]] = {}  # by the two commits


def comparison(name: str, a: str, b: str) -> dict[str, Any]:
    """`tuneledger diff` of two versions (api.diff, from the local DVC cache only), with each
    numeric metric's difference b − a."""
    reg = registry(name)
    rows = reg.get(a), reg.get(b)
    key = (rows[0]["commit"], rows[1]["commit"])
    if key in _comparisons:
        return _comparisons[key]
    with DVC_LOCK:
        missing = missing_locally(*(resolve_at(name, row["version"], row["commit"]) for row in rows))
        if any(missing.values()):
            return {"state": "not local", "missing": {v: m for v, m in missing.items() if m}}
        result = api.diff(reg.tag(a), reg.tag(b))
    report = {
        "state": "compared",
        "diff": result,
        "metrics": metric_differences(result),
        "benchmarks": benchmark_differences(result),
        "adapter": [k for k in result["keys"] if k.startswith("adapter.") or k == "content_id"],
        "params": [k for k in result["differing"] if k.startswith("params.")],
    }
    return _remember(_comparisons, key, report)


def metric_differences(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each numeric `metrics.*` key of a diff: both values and b − a, the tuned model's first."""
    found = []
    for key in result["keys"]:
        left, right = result["a"].get(key), result["b"].get(key)
        if key.startswith("metrics.") and _number(left) and _number(right):
            metric = key.rsplit(".", 1)[-1]
            found.append(
                {
                    "key": key,
                    "label": key.removeprefix("metrics.").replace(".", " ").replace("_", " "),
                    "a": left,
                    "b": right,
                    "delta": right - left,
                    "lower_is_better": LOWER_IS_BETTER.get(metric),
                }
            )
    return sorted(found, key=lambda m: not m["key"].startswith("metrics.tuned."))


def benchmark_differences(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each benchmark task's tuned score on both sides (the diff's `benchmarks.*` rows) and b − a;
    a task one side lacks shows as absent there."""
    tasks = dict.fromkeys(key.split(".")[1] for key in result["keys"] if key.startswith("benchmarks."))
    found = []
    for task in tasks:
        key = f"benchmarks.{task}.tuned"
        left, right = result["a"].get(key), result["b"].get(key)
        metric = result["a"].get(f"benchmarks.{task}.metric") or result["b"].get(f"benchmarks.{task}.metric")
        delta = right - left if _number(left) and _number(right) else None
        scores = {
            "a": left,
            "b": right,
            "delta": delta,
            "lower_is_better": LOWER_IS_BETTER.get(metric, False),
        }
        found.append({"key": key, "label": f"{task} ({metric})", **scores})
    return found


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- history and serving --------------------------------------------------------------------------
def history(name: str, db: Path) -> list[dict[str, Any]]:
    """`tuneledger history`'s rows: registry events, and serving swaps when there is a log."""
    return api.history(name, db if db.is_file() else None)


def serving(db: Path) -> dict[str, Any] | None:
    """The serving log's reports and series over time, or None when there is no log."""
    if not db.is_file():
        return None
    return {
        "shadow": log_reports.shadow_report(db),
        "canary": log_reports.canary_report(db),
        "series": log_reports.serving_series(db),
        "events": sorted(log_reports.serving_events(db), key=lambda e: e["time"], reverse=True),
    }
