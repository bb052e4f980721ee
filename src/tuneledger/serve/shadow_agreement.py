"""The shadow check `promote --require-shadow-agreement` adds to the gate."""

from __future__ import annotations

from pathlib import Path

from tuneledger.registry.promotion_gate import Check
from tuneledger.serve import log, log_reports


def agreement_check(version: str, minimum: float, db: Path | None = None) -> Check:
    report = log_reports.shadow_report(db or log.DEFAULT_DB, shadow_version=version)
    agreement, pairs = report["exact_agreement"], report["pairs"]
    if not pairs:
        return Check(
            "shadow", False, f"no shadow pairs of {version} in {report['db']}; serve it with --shadow first"
        )
    detail = (
        f"exact agreement {agreement:.1%} over {pairs} pairs ({report['errors']} errors, "
        f"{report['drops']} drops); required {minimum:.1%}"
    )
    return Check("shadow", agreement >= minimum, detail)
