"""The serving log on its own: a writer that survives a locked database, a bounded queue, retention,
redaction of prompts, and a shadow report computed in SQL whatever the size of the log."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time

import pytest

from conftest import run
from tuneledger.serve import log, log_reports


def pair(when: float, version: str = "v1.1.0", agree: int = 1, error: str | None = None, latency=10.0):
    return {
        "time": when,
        "request_hash": "h",
        "exact_agreement": agree,
        "token_agreement": float(agree),
        "prod_latency_ms": latency,
        "shadow_latency_ms": None if error else latency * 2,
        "shadow_version": version,
        "error": error,
    }


def wait_for(condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_a_locked_database_is_retried_counted_and_shown_then_written(tmp_path):
    db_path = tmp_path / "serve.sqlite"
    log.connect(db_path).close()
    writer = log.LogWriter(db_path, queue_size=10)
    try:
        holder = sqlite3.connect(db_path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        for i in range(25):
            writer.insert("requests", time=i, status=200)
        wait_for(lambda: writer.health()["write_errors"] > 0)
        health = writer.health()
        assert not health["healthy"] and "locked" in health["last_error"]
        assert health["dropped"] >= 25 - 10 - log.BATCH  # the queue never held more than 10
        assert health["queued"] <= 10 and writer.thread.is_alive()
        holder.execute("ROLLBACK")
        wait_for(lambda: writer.health()["healthy"] and writer.health()["queued"] == 0)
        kept = sqlite3.connect(db_path).execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        assert kept == writer.written == 25 - writer.dropped and kept > 0
    finally:
        writer.close()


def test_a_full_queue_drops_and_counts_instead_of_growing(tmp_path):
    writer = log.LogWriter(tmp_path / "serve.sqlite", queue_size=3)
    holder = None
    try:
        writer.insert("requests", time=0, status=200)
        wait_for(lambda: writer.written == 1)
        holder = sqlite3.connect(tmp_path / "serve.sqlite", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        accepted = [writer.insert("requests", time=1, status=200) for _ in range(50)]
        assert accepted.count(False) == writer.dropped >= 50 - 3 - log.BATCH
        assert writer.queue.qsize() <= 3
    finally:
        if holder:
            holder.execute("ROLLBACK")
        writer.close()


def test_retention_prunes_old_rows_and_keeps_events(tmp_path):
    db_path = tmp_path / "serve.sqlite"
    now = time.time()
    db = log.connect(db_path)
    old, recent = now - 10 * 86400, now - 3600
    log.write_batch(
        db,
        [("requests", {"time": old, "status": 200}), ("requests", {"time": recent, "status": 200})]
        + [("shadow_pairs", pair(old)), ("shadow_pairs", pair(recent))]
        + [("events", {"time": old, "event": "start", "role": "prod", "version": "v1.0.0"})],
    )
    db.close()
    writer = log.LogWriter(db_path, retention_days=7)
    try:
        writer.insert("requests", time=now, status=200)
        wait_for(lambda: writer.pruned == 2)
    finally:
        writer.close()
    db = sqlite3.connect(db_path)
    assert [t for (t,) in db.execute("SELECT time FROM requests ORDER BY time")] == [recent, now]
    assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1
    report = log_reports.shadow_report(db_path)
    assert report["pairs"] == 1


def test_prompts_are_hashed_unless_kept():
    hidden = log.text_fields("prompt", "my secret plan", keep_raw=False)
    assert hidden["prompt"] is None and hidden["prompt_chars"] == 14
    assert hidden["prompt_sha256"] == hashlib.sha256(b"my secret plan").hexdigest()
    assert (
        log.text_fields("prompt", "my secret plan", keep_raw=True)["prompt"] == "my secret plan"
    )  # no secret


def test_shadow_report_sums_the_rollup_and_filters_by_version_and_since(tmp_path):
    db_path = tmp_path / "serve.sqlite"
    base = 1_700_000_000.0  # on a minute boundary
    db = log.connect(db_path)
    rows = [("shadow_pairs", pair(base + i, agree=i % 4 != 0)) for i in range(100)]  # 75% agree
    rows += [("shadow_pairs", pair(base + 3600 + i, agree=1)) for i in range(20)]
    rows += [("shadow_pairs", pair(base + 3600, error="ValueError: refused"))]
    rows += [("shadow_drops", {"time": base + 3600, "request_hash": "h", "shadow_version": "v1.1.0"})]
    rows += [("shadow_pairs", pair(base + 10, version="v1.2.0", agree=0))]
    log.write_batch(db, rows)
    db.close()
    everything = log_reports.shadow_report(db_path, "v1.1.0")
    assert (everything["pairs"], everything["errors"], everything["drops"]) == (120, 1, 1)
    assert everything["exact_agreement"] == pytest.approx(95 / 120)
    assert everything["shadow_versions"] == ["v1.1.0"]
    assert everything["prod_latency_ms"]["p50"] == 10.0 and everything["shadow_latency_ms"]["p95"] == 20.0
    later = log_reports.shadow_report(db_path, "v1.1.0", since=base + 3600 + 30)  # counts from its minute
    assert (later["pairs"], later["errors"], later["drops"], later["exact_agreement"]) == (20, 1, 1, 1.0)
    assert later["since"].startswith("2023-11-14T23:13")
    assert log_reports.shadow_report(db_path)["shadow_versions"] == ["v1.1.0", "v1.2.0"]


def test_a_log_from_before_the_rollup_is_counted_on_open(tmp_path):
    db_path = tmp_path / "old.sqlite"
    db = sqlite3.connect(db_path)
    db.execute(
        "CREATE TABLE shadow_pairs (time REAL, request_hash TEXT, prompt TEXT, prod_output TEXT, "
        "shadow_output TEXT, exact_agreement INTEGER, token_agreement REAL, prod_latency_ms REAL, "
        "shadow_latency_ms REAL, prod_version TEXT, prod_content_id TEXT, shadow_version TEXT, "
        "shadow_content_id TEXT, error TEXT)"
    )
    db.executemany(
        "INSERT INTO shadow_pairs (time, exact_agreement, token_agreement, shadow_version, prod_latency_ms) "
        "VALUES (?, ?, ?, 'v1.1.0', 5)",
        [(1000.0 + i, i % 2, 0.5) for i in range(10)],
    )
    db.commit()
    db.close()
    report = log_reports.shadow_report(db_path)
    assert report["pairs"] == 10 and report["exact_agreement"] == 0.5
    assert "prompt_sha256" in {
        row[1] for row in sqlite3.connect(db_path).execute("PRAGMA table_info(shadow_pairs)")
    }


def test_shadow_report_cli_takes_since(tmp_path):
    db_path = tmp_path / "serve.sqlite"
    db = log.connect(db_path)
    now = time.time()
    log.write_batch(db, [("shadow_pairs", pair(now - 7200)), ("shadow_pairs", pair(now - 60))])
    db.close()
    recent = json.loads(
        run("tuneledger", "shadow-report", "--db", db_path, "--since", "30m", "--json", cwd=tmp_path).stdout
    )
    assert recent["pairs"] == 1
    wrong = run(
        "tuneledger", "shadow-report", "--db", db_path, "--since", "yesterday", cwd=tmp_path, check=False
    )
    assert wrong.returncode == 1 and "--since 'yesterday'" in wrong.stderr and "Traceback" not in wrong.stderr


def test_a_row_that_can_never_be_written_is_counted_and_does_not_block_the_rest(tmp_path):
    writer = log.LogWriter(tmp_path / "serve.sqlite")
    try:
        writer.insert("requests", time=1, status=200)
        writer.insert("requests", no_such_column=1)
        writer.insert("requests", time=2, status=200)
        wait_for(lambda: writer.written == 2)
        assert writer.lost == 1 and writer.write_errors >= 1 and writer.thread.is_alive()
        assert "no_such_column" in writer.health()["last_error"]
    finally:
        writer.close()


def test_the_default_request_log_stays_out_of_git(project_copy):
    """The log (and SQLite's -wal/-shm beside it) lives in the work tree by default; `register`
    refuses uncommitted changes, so git must never see it."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        run("git", "check-ignore", "--quiet", f"{log.DEFAULT_DB}{suffix}", cwd=project_copy)


def test_a_log_that_cannot_be_opened_is_retried_shown_and_recovers(tmp_path):
    """Not only a lock: a file that is no database kills no thread; rows wait, health says so, and
    once the file is gone they are written."""
    db_path = tmp_path / "serve.sqlite"
    db_path.write_bytes(b"this is not a database" * 100)
    writer = log.LogWriter(db_path, queue_size=100)
    try:
        for i in range(5):
            writer.insert("requests", time=i, status=200)
        wait_for(lambda: writer.health()["write_errors"] >= 2)  # retried, not given up
        health = writer.health()
        assert not health["healthy"] and "not a database" in health["last_error"]
        assert writer.thread.is_alive() and health["queued"] + len(range(5)) >= 5
        db_path.unlink()
        wait_for(lambda: writer.health()["healthy"] and writer.written == 5, timeout=30)
    finally:
        writer.close()
    assert sqlite3.connect(db_path).execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 5


def test_the_log_keeps_to_its_size_cap(tmp_path):
    """The oldest request rows go once the log holds more than its cap; the newest stay."""
    db_path = tmp_path / "serve.sqlite"
    db = log.connect(db_path)
    rows = [("requests", {"time": float(i), "status": 200, "error": "x" * 400}) for i in range(3000)]
    log.write_batch(db, rows)
    cap = 256 * 1024
    assert log.used_bytes(db) > cap
    removed = log.prune_to_size(db, cap, chunk=100)
    assert 0 < removed < 3000 and log.used_bytes(db) <= cap
    assert db.execute("SELECT MIN(time), MAX(time) FROM requests").fetchone() == (float(removed), 2999.0)


def test_refusals_are_counted_per_minute_and_status_not_stored(tmp_path):
    writer = log.LogWriter(tmp_path / "serve.sqlite")
    try:
        for _ in range(400):
            writer.count_refusal(401, 120.0)
        writer.count_refusal(415, 130.0)
        wait_for(lambda: writer.written == 401)
    finally:
        writer.close()
    db = sqlite3.connect(tmp_path / "serve.sqlite")
    assert db.execute("SELECT minute, status, count FROM refusals ORDER BY status").fetchall() == [
        (2, 401, 400),
        (2, 415, 1),
    ]
    assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 0


def test_kept_prompts_are_redacted_the_servers_own_key_too():
    from tuneledger.core.secrets import register_secret

    key = "served-with-this-key-7f3a9c1e"
    register_secret(key)
    kept = log.text_fields("prompt", f"my key is {key} and sk-proj-{'a1' * 16}", keep_raw=True)
    assert kept["prompt"] == "my key is *** and ***"
    assert (
        kept["prompt_sha256"]
        == hashlib.sha256(f"my key is {key} and sk-proj-{'a1' * 16}".encode()).hexdigest()
    )


def test_a_row_keeps_at_most_a_bounded_part_of_what_a_client_sent():
    row = log.clipped({"path": "/" + "a" * 15_000, "error": "e" * 10_000, "status": 404, "latency_ms": 1.0})
    assert len(row["path"]) == log.CLIPPED["path"] and len(row["error"]) == log.CLIPPED["error"]
    assert row["status"] == 404 and row["latency_ms"] == 1.0
