"""Serving: a real uvicorn process on 127.0.0.1 answering from prod, with a shadow, hot swaps and a log."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import commit_all, copy_repo, run, serving, set_params
from tuneledger.core.faults import FAULT_VARIABLE
from tuneledger.serve.config import ServeConfig
from tuneledger.serve.log import DEFAULT_DB

PROMPT = {"prompt": "reverse: red cat sun =>"}
EXPLODING_PROMPT = "reverse: boom boom boom =>"  # the model raises on it (TUNELEDGER_FAULT)


@pytest.fixture(scope="module")
def served(registry, tmp_path_factory):
    """prod v1.0.0 served, with staging v1.1.0 as its shadow."""
    repo = copy_repo(registry[0], tmp_path_factory.mktemp("serve") / "repo")
    run("tuneledger", "promote", "v1.1.0", "--stage", "staging", cwd=repo)
    options = ["--stage", "prod", "--shadow", "staging", "--shadow-queue", "256", "--log-prompts"]
    with serving(repo, *options, env={FAULT_VARIABLE: f"serve.generate:{EXPLODING_PROMPT}"}) as server:
        yield {"repo": repo, "url": server.url, "db": repo / DEFAULT_DB, "proc": server.proc}


def post(url: str, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/generate", json=body, timeout=120, **kwargs)


def test_answers_from_prod_and_names_the_version(served):
    reply = post(served["url"], PROMPT)
    assert reply.status_code == 200
    body = reply.json()
    assert body["text"].strip() == "sun cat red"
    assert body["version"] == "v1.0.0" and len(body["content_id"]) == 64 and body["latency_ms"] > 0
    assert reply.headers["X-TuneLedger-Version"] == "v1.0.0"
    assert reply.headers["X-TuneLedger-Content-Id"] == body["content_id"]
    health = httpx.get(f"{served['url']}/health").json()
    assert (health["status"], health["version"], health["content_id"]) == ("ok", "v1.0.0", body["content_id"])
    defaults = ServeConfig()
    assert health["log"]["healthy"] and health["queue"]["capacity"] == defaults.max_queue + defaults.max_batch
    version = httpx.get(f"{served['url']}/version").json()
    assert version["stage"] == "prod" and version["shadow"]["stage"] == "staging"


def test_binds_to_loopback_only(served):
    port = served["url"].rsplit(":", 1)[1]
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
    if listening:  # `ss` may be missing on minimal machines
        assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x", "max_new_tokens": "8"}, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": 33}, "max_new_tokens"),
        ({"prompt": "x", "temperature": 9.0}, "temperature"),
        ({"prompt": "x" * 300}, "prompt"),
        ({"prompt": "x", "top_k": 3}, "top_k"),
    ],
)
def test_signature_violations_get_422_naming_the_field(served, body, field):
    reply = post(served["url"], body)
    assert reply.status_code == 422
    assert reply.json()["detail"][0]["loc"] == ["body", field]


def test_oversized_bodies_get_413_and_the_server_lives(served):
    huge = {"prompt": "x" * 1_000_000}
    assert post(served["url"], huge).status_code == 413
    chunked = httpx.post(
        f"{served['url']}/generate",
        content=iter([b'{"prompt": "', b"x" * 200_000, b'"}']),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert chunked.status_code == 413
    assert post(served["url"], PROMPT).status_code == 200


def shadow_report(served, *options: str) -> dict:
    args = ["tuneledger", "shadow-report", "--db", served["db"], "--json", *options]
    return json.loads(run(*args, cwd=served["repo"]).stdout)


def shadow_on(served, version: str) -> None:
    """Make sure the shadow runs `version` (another test may have moved staging), and is ready."""
    repo, url = served["repo"], served["url"]
    holder = run("tuneledger", "show", "--json", cwd=repo).stdout
    if not any(row["version"] == version and "staging" in row["stages"] for row in json.loads(holder)):
        run("tuneledger", "promote", version, "--stage", "staging", "--force", "--reason", "test", cwd=repo)
        assert httpx.post(f"{url}/admin/reload", json={}, timeout=300).status_code == 200

    def running() -> bool:
        shadow = httpx.get(f"{url}/version").json()["shadow"]
        return shadow["state"] == "ready" and shadow["version"] == version

    wait_until(running, 300)  # the shadow restarts in the background


def wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def test_eight_clients_64_requests_all_from_prod_and_shadowed(served):
    shadow_on(served, "v1.1.0")
    before = shadow_report(served, "--version", "v1.1.0")
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda _: post(served["url"], PROMPT), range(64)))
    assert [r.status_code for r in replies] == [200] * 64
    assert {r.json()["version"] for r in replies} == {"v1.0.0"}

    def seen() -> int:
        after = shadow_report(served, "--version", "v1.1.0")
        return sum(after[k] - before[k] for k in ("pairs", "drops", "errors"))

    wait_until(lambda: seen() >= 64)
    report = shadow_report(served, "--version", "v1.1.0")
    assert report["errors"] == before["errors"] and report["pairs"] > before["pairs"]
    assert report["exact_agreement"] == 1.0 and report["token_agreement"] == 1.0
    assert report["prod_latency_ms"]["p50"] > 0 and report["shadow_latency_ms"]["p95"] > 0
    db = sqlite3.connect(served["db"])
    logged = db.execute(
        "SELECT COUNT(*), COUNT(DISTINCT version) FROM requests WHERE status = 200 AND path = '/generate' "
        "AND prompt = ?",
        [PROMPT["prompt"]],
    ).fetchone()
    assert logged[0] >= 64 and logged[1] >= 1
    table = run("tuneledger", "shadow-report", "--db", served["db"], cwd=served["repo"]).stdout
    assert "exact_agreement" in table


def test_hot_swap_under_load_after_promote_and_rollback(served):
    repo, url = served["repo"], served["url"]
    assert httpx.get(f"{url}/health").json()["version"] == "v1.0.0"
    stop, seen, failures = threading.Event(), [], []

    def client():
        try:
            while not stop.is_set():
                reply = post(url, PROMPT)
                if reply.status_code == 200:
                    seen.append(reply.json()["version"])
                else:
                    failures.append(f"{reply.status_code} {reply.text}")
        except Exception as exc:  # e.g. a 200 whose body is not JSON: recorded, never swallowed
            failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        run("tuneledger", "promote", "v1.1.0", "--stage", "prod", cwd=repo)
        swapped = httpx.post(f"{url}/admin/reload", json={}, timeout=120).json()
        assert swapped["version"] == "v1.1.0"  # live at once; the registry watch may have been first
        time.sleep(0.5)
        run("tuneledger", "rollback", "--stage", "prod", "--reason", "canary regression", cwd=repo)
        served["proc"].send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/health").json()["version"] != "v1.0.0" and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures
    assert "v1.1.0" in seen and seen[-1] == "v1.0.0"
    events = (
        sqlite3.connect(served["db"])
        .execute("SELECT event, version FROM events WHERE role = 'prod' ORDER BY time")
        .fetchall()
    )
    assert events[-2:] == [("swap", "v1.1.0"), ("swap", "v1.0.0")]


@pytest.fixture(scope="module")
def tiny_bound_version(served):
    """v1.2.0: a candidate whose signature refuses every prompt longer than 5 characters."""
    repo = served["repo"]
    set_params(repo, **{"export.max_prompt_chars": 5})
    run("dvc", "repro", "export", cwd=repo)
    commit_all(repo, "a candidate with a tiny prompt bound")
    run("tuneledger", "register", "--push", cwd=repo)
    return "v1.2.0"


def test_a_shadow_that_fails_every_request_never_touches_prod(served, tiny_bound_version):
    """staging moves to a version whose signature refuses every prompt; prod answers regardless."""
    repo, url = served["repo"], served["url"]
    try:
        shadow_on(served, tiny_bound_version)
        before = shadow_report(served, "--version", tiny_bound_version)
        replies = [post(url, PROMPT) for _ in range(8)]
        assert all(r.status_code == 200 and r.json()["version"] == "v1.0.0" for r in replies)
        wait_until(
            lambda: shadow_report(served, "--version", tiny_bound_version)["errors"] >= before["errors"] + 8
        )
        report = shadow_report(served, "--version", tiny_bound_version)
        assert report["errors"] == before["errors"] + 8 and report["pairs"] == 0
    finally:
        shadow_on(served, "v1.1.0")
    refused = run(
        "tuneledger",
        "promote",
        tiny_bound_version,
        "--stage",
        "prod",
        "--require-shadow-agreement",
        "0.9",
        "--db",
        served["db"],
        cwd=repo,
        check=False,
    )
    assert refused.returncode == 1 and f"shadow: no shadow pairs of {tiny_bound_version}" in refused.stderr


def test_promote_can_require_shadow_agreement(served):
    shadow_on(served, "v1.1.0")
    for _ in range(4):
        assert post(served["url"], PROMPT).status_code == 200
    wait_until(lambda: shadow_report(served, "--version", "v1.1.0")["pairs"] >= 4)
    done = run(
        "tuneledger",
        "promote",
        "v1.1.0",
        "--stage",
        "dev",  # a stage no other test reads
        "--require-shadow-agreement",
        "0.95",
        "--db",
        served["db"],
        cwd=served["repo"],
    )
    assert "shadow" in done.stdout and "exact agreement 100.0%" in done.stdout


def test_served_versions_are_in_history(served):
    rows = json.loads(run("tuneledger", "history", "--json", "--db", served["db"], cwd=served["repo"]).stdout)
    started = {(r["event"], r["version"]) for r in rows if r["event"] in ("serve start", "shadow start")}
    assert ("serve start", "v1.0.0") in started and any(e == "shadow start" for e, _ in started)


def test_refused_and_failed_requests_are_logged_with_their_status(served):
    url = served["url"]
    assert post(url, {"prompt": 5}).status_code == 422
    assert post(url, {"prompt": "x" * 1_000_000}).status_code == 413
    failed = post(url, {"prompt": EXPLODING_PROMPT})
    assert failed.status_code == 500 and failed.json() == {"detail": "internal error; see the server log"}
    assert httpx.post(f"{url}/generate", content=b"prompt=x", timeout=10).status_code == 415
    assert post(url, PROMPT).status_code == 200  # the server lives on

    def statuses() -> set[int]:
        db = sqlite3.connect(served["db"])
        return {status for (status,) in db.execute("SELECT status FROM requests WHERE path = '/generate'")}

    def refusals() -> set[int]:  # refused before any route: counted, not stored (a flood stays small)
        db = sqlite3.connect(served["db"])
        return {status for (status,) in db.execute("SELECT status FROM refusals")}

    wait_until(lambda: {200, 413, 422, 500} <= statuses() and 415 in refusals(), 30)
    db = sqlite3.connect(served["db"])
    error = db.execute("SELECT error FROM requests WHERE status = 500").fetchone()[0]
    assert "injected failure" in error


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    os.environ.setdefault("NO_PROXY", "127.0.0.1")
