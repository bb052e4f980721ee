"""The promotion gate: checks a candidate version must pass before it takes a stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.params import RegistryParams
from tuneledger.package import benchmarks, metadata, signature, weights
from tuneledger.package.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS, METADATA, SIGNATURE
from tuneledger.registry.remote import missing_on_remote
from tuneledger.registry.versions import Resolved, download_verified

GATE_FILES = [METADATA, SIGNATURE, ADAPTER_WEIGHTS, ADAPTER_CONFIG]
LOWER_IS_BETTER = {"loss": True, "perplexity": True, "exact_match": False}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


class GateFailed(TuneLedgerError):
    def __init__(self, version: str, stage: str, checks: list[Check]):
        self.checks = checks
        failed = [c for c in checks if not c.ok]
        lines = [
            f"gate refused {version} for {stage}: {len(failed)} check(s) failed "
            "(--force --reason to override)"
        ]
        lines += [f"  {c.name}: {c.detail}" for c in failed]
        super().__init__("\n".join(lines))


def check_health(candidate: Path, holder: Path | None, limits: RegistryParams) -> list[Check]:
    problems = weights.health_problems(candidate)
    checks = [Check("weights", not problems, "; ".join(problems) or "finite, LoRA B trained")]
    if holder is not None:
        drift, layer = weights.norm_drift(candidate, holder)
        if drift is None:
            checks.append(Check("drift", True, "no layer in common with the current version; not compared"))
        else:
            checks.append(
                Check(
                    "drift",
                    drift <= limits.max_norm_drift,
                    f"largest update-norm change {drift:.1%} ({layer}); limit {limits.max_norm_drift:.0%}",
                )
            )
    return checks


def _test_split_sha256(meta: dict) -> str | None:
    return ((meta.get("data") or {}).get("splits") or {}).get("test", {}).get("sha256")


def _test_split_eval_params(meta: dict) -> dict | None:
    """The eval params that decide test-split metrics; benchmarks are compared task by task."""
    recorded = (meta.get("params") or {}).get("eval")
    return None if recorded is None else {k: v for k, v in recorded.items() if k != "benchmarks"}


def comparability_problems(candidate: dict, holder: dict) -> list[str]:
    """Why two versions' metrics do not measure the same thing: another test split or other eval params."""
    problems = []
    new_split, old_split = _test_split_sha256(candidate), _test_split_sha256(holder)
    if new_split is None or old_split is None:
        problems.append("the test split's sha256 is not recorded")
    elif new_split != old_split:
        problems.append(f"another test split (sha256 {new_split[:12]}… vs {old_split[:12]}…)")
    new_eval = _test_split_eval_params(candidate)
    old_eval = _test_split_eval_params(holder)
    if new_eval is None or old_eval is None:
        problems.append("the eval params are not recorded")
    elif new_eval != old_eval:
        changed = sorted(k for k in new_eval.keys() | old_eval.keys() if new_eval.get(k) != old_eval.get(k))
        shown = ", ".join(f"eval.{k} {new_eval.get(k)!r} vs {old_eval.get(k)!r}" for k in changed)
        problems.append(f"other eval params ({shown})")
    return problems


def check_metrics(candidate: dict, holder: dict | None, limits: RegistryParams) -> Check:
    """Candidate versus current version (the "X vs Y" order everywhere), only when they are comparable."""
    if holder is None:
        return Check("metrics", True, "no current version to compare with")
    incomparable = comparability_problems(candidate, holder)
    if incomparable:
        return Check("metrics", False, f"not comparable: {'; '.join(incomparable)}")
    new, old = candidate["metrics"]["tuned"], holder["metrics"]["tuned"]
    worse = []
    for metric, lower_better in LOWER_IS_BETTER.items():
        if new.get(metric) is None or old.get(metric) is None:
            continue
        allowed = (
            old[metric] * (1 + limits.tolerance) if lower_better else old[metric] * (1 - limits.tolerance)
        )
        if (new[metric] > allowed) if lower_better else (new[metric] < allowed):
            worse.append(f"{metric} {new[metric]:.4g} vs {old[metric]:.4g}")
    summary = ", ".join(f"{m} {new.get(m)}" for m in LOWER_IS_BETTER if new.get(m) is not None)
    detail = (
        f"worse than the current version beyond {limits.tolerance:.0%}: {'; '.join(worse)}"
        if worse
        else summary
    )
    return Check("metrics", not worse, detail)


def check_forgetting(candidate: dict, limits: RegistryParams) -> Check:
    """Each benchmark of the candidate against its own base: at most `max_forgetting` lower."""
    tasks = candidate.get("benchmarks") or {}
    if not tasks:
        return Check("forgetting", True, "no benchmarks recorded (eval.benchmarks is empty)")
    lost = benchmarks.forgotten(tasks, limits.max_forgetting)
    if lost:
        detail = f"below its base by more than {limits.max_forgetting:g}: {benchmarks.table(tasks, lost)}"
        return Check("forgetting", False, detail)
    return Check("forgetting", True, f"{benchmarks.table(tasks)}; limit {limits.max_forgetting:g}")


def check_benchmarks(candidate: dict, holder: dict | None, limits: RegistryParams) -> Check:
    """The candidate's tuned scores against the current version's, task by task, where both scored
    the same setup (task version, few-shot count, limit, documents); `tolerance` as for metrics."""
    new, old = candidate.get("benchmarks") or {}, (holder or {}).get("benchmarks") or {}
    shared = sorted(new.keys() & old.keys())
    if holder is None or not shared:
        return Check("benchmarks", True, "no benchmark in common with a current version; not compared")
    incomparable = [
        f"{task}: {', '.join(differences)}"
        for task in shared
        if (differences := benchmarks.setup_differences(new[task], old[task]))
    ]
    if incomparable:
        return Check("benchmarks", False, f"not comparable: {'; '.join(incomparable)}")
    worse = [
        f"{task} {new[task]['tuned']:.4g} vs {old[task]['tuned']:.4g}"
        for task in shared
        if new[task]["tuned"] < old[task]["tuned"] * (1 - limits.tolerance)
    ]
    if worse:
        return Check(
            "benchmarks",
            False,
            f"worse than the current version beyond {limits.tolerance:.0%}: {'; '.join(worse)}",
        )
    return Check("benchmarks", True, ", ".join(f"{task} {new[task]['tuned']:.4g}" for task in shared))


def check_signature(candidate: Path, holder: Path | None) -> Check:
    if holder is None:
        return Check("signature", True, "no current version to compare with")
    problems = signature.incompatibilities(
        signature.read(holder / SIGNATURE), signature.read(candidate / SIGNATURE)
    )
    return Check(
        "signature", not problems, "; ".join(problems) or "accepts every request the current version accepts"
    )


def check_lineage(resolved: Resolved) -> Check:
    missing = missing_on_remote(resolved.commit, targets=None)
    if missing:
        shown = ", ".join(missing[:3]) + (" …" if len(missing) > 3 else "")
        return Check(
            "lineage",
            False,
            f"{len(missing)} output object(s) of {resolved.commit[:12]} not on the remote: {shown}",
        )
    return Check("lineage", True, f"manifest committed at {resolved.commit[:12]}; all outputs on the remote")


def run_gate(
    candidate: Resolved,
    holder: Resolved | None,
    limits: RegistryParams,
    workdir: Path,
    extra: list[Check] | None = None,
) -> list[Check]:
    """Every check, failing or not (the caller decides, so a forced promotion can record them)."""
    cand_dir = download_verified(candidate, workdir / "candidate", GATE_FILES)
    hold_dir = download_verified(holder, workdir / "holder", GATE_FILES) if holder else None
    cand_meta = metadata.read(cand_dir / METADATA)
    hold_meta = metadata.read(hold_dir / METADATA) if hold_dir else None
    return [
        *check_health(cand_dir, hold_dir, limits),
        check_metrics(cand_meta, hold_meta, limits),
        check_forgetting(cand_meta, limits),
        check_benchmarks(cand_meta, hold_meta, limits),
        check_signature(cand_dir, hold_dir),
        check_lineage(candidate),
        *(extra or []),
    ]
