"""The canary check `promote --require-canary` adds to the gate: the version, answering its share
of real traffic under `serve --canary`, did no worse than the stable arm beside it."""

from __future__ import annotations

from pathlib import Path

from tuneledger.core.params import RegistryParams
from tuneledger.registry.promotion_gate import Check
from tuneledger.serve import log, log_reports


def canary_check(
    version: str, limits: RegistryParams, db: Path | None = None, since: float | None = None
) -> Check:
    report = log_reports.canary_report(db or log.DEFAULT_DB, since=since, version=version)
    canary, stable = report["arms"]["canary"], report["arms"]["stable"]
    if canary["requests"] < limits.canary_min_requests or not stable["requests"]:
        return Check(
            "canary",
            False,
            f"{canary['requests']} canary requests of {version} and {stable['requests']} stable ones in "
            f"{report['db']}; {limits.canary_min_requests} canary requests needed "
            "(serve --canary STAGE:PERCENT)",
        )
    worse = []
    error_gap = canary["error_rate"] - stable["error_rate"]
    if error_gap > limits.canary_max_error_increase:
        worse.append(f"error rate {canary['error_rate']:.2%} vs {stable['error_rate']:.2%}")
    new_p95, old_p95 = canary["latency_ms"]["p95"], stable["latency_ms"]["p95"]
    if (
        new_p95 is not None
        and old_p95 is not None
        and new_p95 > old_p95 * (1 + limits.canary_max_latency_increase)
    ):
        worse.append(f"p95 latency {new_p95:.0f} ms vs {old_p95:.0f} ms")
    summary = (
        f"{canary['requests']} requests; error rate {canary['error_rate']:.2%} vs "
        f"{stable['error_rate']:.2%}; p95 {new_p95 or 0:.0f} ms vs {old_p95 or 0:.0f} ms"
    )
    if worse:
        return Check(
            "canary",
            False,
            f"worse than the stable arm beyond the limits (+{limits.canary_max_error_increase:.0%} errors, "
            f"+{limits.canary_max_latency_increase:.0%} p95): {'; '.join(worse)}",
        )
    return Check("canary", True, summary)
