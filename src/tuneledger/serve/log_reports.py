"""The serving log's read side: `shadow-report`, `canary-report`, the serving events `history`
shows, and `--since`. It opens the log read-only and closes it; the writer (serve.log) alone
creates and upgrades it."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneledger.core.errors import TuneLedgerError
from tuneledger.serve import log
from tuneledger.serve.log import LATENCY_SAMPLE

FIRST_RUN_HINT = "run `tuneledger serve` first"


@contextlib.contextmanager
def read_only(path: Path, hint: str = FIRST_RUN_HINT) -> Iterator[sqlite3.Connection]:
    """The log opened read-only, so a report never takes the writer's lock. A log written by an
    older version is upgraded first, once, by the writer's own code (columns and tables added)."""
    path = Path(path)
    if not path.is_file():
        raise TuneLedgerError(f"{path}: no serving log; {hint}")
    db = _open_read_only(path)
    if not _current(db):
        db.close()
        log.connect(path).close()
        db = _open_read_only(path)
    try:
        yield db
    except sqlite3.OperationalError as exc:
        raise TuneLedgerError(f"{path}: cannot read the serving log ({exc}); {hint} to upgrade it") from None
    finally:
        db.close()


def _open_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)


def _current(db: sqlite3.Connection) -> bool:
    """Whether the log has every table and column this version reads."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables >= {*log.TABLES, "shadow_rollup"}:
        return False
    for table, columns in log.TABLES.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if not {column.split()[0] for column in columns} <= have:
            return False
    return True


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str, now: float | None = None) -> float:
    """`--since`: a duration back from now (`90m`, `24h`, `7d`) or an ISO 8601 time (UTC if no zone)."""
    now = time.time() if now is None else now
    match = _DURATION.match(value.strip())
    if match:
        return now - float(match.group(1)) * _SECONDS[match.group(2)]
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise TuneLedgerError(
            f"--since {value!r}: expected a duration such as 90m, 24h or 7d, or a time such as "
            "2025-01-31T12:00"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def shadow_report(
    path: Path, shadow_version: str | None = None, since: float | None = None
) -> dict[str, Any]:
    """Agreement and latency of shadow pairs (optionally of one shadow version, since a time).

    Counts and agreement are exact, summed from the per-minute rollup (`since` counts from the
    start of its minute). Latency percentiles come from the newest LATENCY_SAMPLE pairs, read
    through the (version, time) index: time and memory stay flat as the log grows.
    """
    with read_only(path, "run `tuneledger serve --shadow STAGE` first") as db:
        return _report(db, str(path), shadow_version, since)


def _filter(shadow_version: str | None, time_column: str, start: float | None) -> tuple[str, list]:
    conditions, args = [], []
    if shadow_version:
        conditions.append("shadow_version = ?")
        args.append(shadow_version)
    if start is not None:
        conditions.append(f"{time_column} >= ?")
        args.append(start)
    return (f"WHERE {' AND '.join(conditions)}" if conditions else ""), args


def _report(db: sqlite3.Connection, path: str, shadow_version: str | None, since: float | None):
    minute = int(since // 60) if since is not None else None
    where, args = _filter(shadow_version, "minute", minute)
    pairs, errors, exact, token, drops = db.execute(
        "SELECT TOTAL(pairs), TOTAL(errors), TOTAL(exact_agreements), TOTAL(token_agreement_sum), "
        f"TOTAL(drops) FROM shadow_rollup {where}",
        args,
    ).fetchone()
    versions = db.execute(f"SELECT DISTINCT shadow_version FROM shadow_rollup {where} ORDER BY 1", args)
    where, args = _filter(shadow_version, "time", minute * 60 if minute is not None else None)
    sample = db.execute(
        f"SELECT prod_latency_ms, shadow_latency_ms, error FROM shadow_pairs {where} "
        f"ORDER BY time DESC LIMIT {LATENCY_SAMPLE}",
        args,
    ).fetchall()
    prod = [row[0] for row in sample if row[0] is not None]
    shadow = [row[1] for row in sample if row[2] is None and row[1] is not None]
    return {
        "db": path,
        "since": datetime.fromtimestamp(minute * 60, UTC).isoformat() if minute is not None else None,
        "shadow_versions": [v for (v,) in versions if v],
        "pairs": int(pairs),
        "errors": int(errors),
        "drops": int(drops),
        "exact_agreement": exact / pairs if pairs else None,
        "token_agreement": token / pairs if pairs else None,
        "latency_sample": len(sample),
        "prod_latency_ms": {"p50": _percentile(prod, 0.5), "p95": _percentile(prod, 0.95)},
        "shadow_latency_ms": {"p50": _percentile(shadow, 0.5), "p95": _percentile(shadow, 0.95)},
    }


def canary_report(path: Path, since: float | None = None, version: str | None = None) -> dict[str, Any]:
    """The two arms of `serve --canary` side by side: requests, server errors (5xx), latency
    percentiles and output tokens, per arm (the canary arm only of `version`, if given).
    Percentiles come from each arm's newest LATENCY_SAMPLE requests."""
    with read_only(path, "run `tuneledger serve --canary STAGE:PERCENT` first") as db:
        return {
            "db": str(path),
            "since": datetime.fromtimestamp(since, UTC).isoformat() if since is not None else None,
            "arms": {
                arm: _arm(db, arm, since, version if arm == "canary" else None)
                for arm in ("stable", "canary")
            },
        }


def _arm(db: sqlite3.Connection, arm: str, since: float | None, version: str | None) -> dict[str, Any]:
    conditions, args = ["arm = ?"], [arm]
    if since is not None:
        conditions.append("time >= ?")
        args.append(since)
    if version is not None:
        conditions.append("version = ?")
        args.append(version)
    where = " AND ".join(conditions)
    requests, errors, tokens = db.execute(
        f"SELECT COUNT(*), TOTAL(status >= 500), TOTAL(completion_tokens) FROM requests WHERE {where}", args
    ).fetchone()
    versions = [
        v for (v,) in db.execute(f"SELECT DISTINCT version FROM requests WHERE {where} ORDER BY 1", args)
    ]
    latency = [
        ms
        for (ms,) in db.execute(
            f"SELECT latency_ms FROM requests WHERE {where} AND status = 200 ORDER BY time DESC "
            f"LIMIT {LATENCY_SAMPLE}",
            args,
        )
    ]
    return {
        "versions": [v for v in versions if v],
        "requests": requests,
        "errors": int(errors),
        "error_rate": errors / requests if requests else None,
        "latency_ms": {q: _percentile(latency, f) for q, f in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
        "output_tokens": int(tokens),
        "output_tokens_per_request": tokens / requests if requests else None,
    }


def serving_events(path: Path) -> list[dict[str, Any]]:
    """When each version started answering (or shadowing) in `tuneledger serve`, for `history`."""
    with read_only(path, "run `tuneledger serve` first") as db:
        rows = db.execute(
            "SELECT time, event, role, name, stage, version, content_id FROM events WHERE event != 'error'"
        ).fetchall()
    return [
        {
            "time": datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds"),
            "artifact": name,
            "event": f"{'serve' if role == 'prod' else 'shadow'} {event}",
            "version": version,
            "stage": stage,
            "content_id": content_id,
            "by": "tuneledger serve",
        }
        for t, event, role, name, stage, version, content_id in rows
    ]


def serving_series(path: Path, since: float | None = None, buckets: int = 60) -> dict[str, Any]:
    """Shadow agreement and the canary arms over time, in at most `buckets` equal spans of whole
    minutes (the registry page charts them). The sums come from the tables the reports read (the
    shadow rollup; requests by arm), so the buckets add up to `shadow-report` and `canary-report`."""
    with read_only(path) as db:
        return {
            "db": str(path),
            "shadow": _shadow_series(db, since, buckets),
            "canary": _canary_series(db, since, buckets),
        }


def _span(first: float | None, last: float | None, buckets: int) -> int:
    """Seconds per bucket: whole minutes, so that shadow buckets align with the per-minute rollup."""
    if first is None or last is None:
        return 60
    return 60 * max(1, -(-int(last - first + 60) // (60 * buckets)))


def _shadow_series(db: sqlite3.Connection, since: float | None, buckets: int) -> list[dict[str, Any]]:
    where, args = _filter(None, "minute", int(since // 60) if since is not None else None)
    first, last = db.execute(
        f"SELECT MIN(minute) * 60, MAX(minute) * 60 FROM shadow_rollup {where}", args
    ).fetchone()
    width = _span(first, last, buckets)
    rows = db.execute(
        "SELECT CAST((minute * 60 - ?) / ? AS INTEGER), TOTAL(pairs), TOTAL(errors), "
        f"TOTAL(exact_agreements), TOTAL(token_agreement_sum), TOTAL(drops) FROM shadow_rollup {where} "
        "GROUP BY 1 ORDER BY 1",
        [first or 0, width, *args],
    )
    return [
        {
            "time": datetime.fromtimestamp((first or 0) + bucket * width, UTC).isoformat(timespec="seconds"),
            "seconds": width,
            "pairs": int(pairs),
            "errors": int(errors),
            "drops": int(drops),
            "exact_agreement": exact / pairs if pairs else None,
            "token_agreement": token / pairs if pairs else None,
        }
        for bucket, pairs, errors, exact, token, drops in rows
    ]


def _canary_series(db: sqlite3.Connection, since: float | None, buckets: int) -> list[dict[str, Any]]:
    conditions, args = ["arm IN ('stable', 'canary')"], []  # requests the canary split, through its index
    if since is not None:
        conditions.append("time >= ?")
        args.append(since)
    where = " AND ".join(conditions)
    first, last = db.execute(f"SELECT MIN(time), MAX(time) FROM requests WHERE {where}", args).fetchone()
    start = (first // 60) * 60 if first is not None else 0
    width = _span(first, last, buckets)
    rows = db.execute(
        f"SELECT CAST((time - ?) / ? AS INTEGER), arm, COUNT(*), TOTAL(status >= 500), "
        "AVG(CASE WHEN status = 200 THEN latency_ms END) "
        f"FROM requests WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2",
        [start, width, *args],
    )
    return [
        {
            "time": datetime.fromtimestamp(start + bucket * width, UTC).isoformat(timespec="seconds"),
            "seconds": width,
            "arm": arm,
            "requests": requests,
            "errors": int(errors),
            "error_rate": errors / requests if requests else None,
            "mean_latency_ms": latency,
        }
        for bucket, arm, requests, errors, latency in rows
    ]
