"""The server's boundary and limits, each tried the way an attacker or an accident would: a key on
every route but /health, no requests from other web pages or other host names, JSON only, a
bounded queue with deadlines under 64 concurrent slow clients, a shadow that cannot hurt prod, and
a log that survives a locked database. One real server (uvicorn, the default model) for the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from conftest import copy_repo, run, serving
from tuneledger.core.s3local import free_port
from tuneledger.serve.config import ServeConfig
from tuneledger.serve.log import DEFAULT_DB

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPT = {"prompt": "reverse: red cat sun =>"}
LONG = {
    "prompt": "reverse: red cat sun =>",
    "max_new_tokens": 32,
    "temperature": 2.0,
    "seed": 7,
}  # rarely ends early
REQUEST_TIMEOUT, BODY_TIMEOUT, HEADER_TIMEOUT, MAX_QUEUE, LOG_QUEUE = 3.0, 1.0, 1.5, 24, 32
MAX_BATCH = 4
SLACK = 1.5  # scheduling beyond a deadline on a busy 2-core machine


@pytest.fixture(scope="module")
def hardened(registry, tmp_path_factory):
    """prod v1.0.0 behind a key, with small limits, and staging v1.1.0 as a shadow with a 2-slot queue."""
    repo = copy_repo(registry[0], tmp_path_factory.mktemp("hardened") / "repo")
    run("tuneledger", "promote", "v1.1.0", "--stage", "staging", cwd=repo)
    options = [
        "--shadow", "staging", "--shadow-queue", "2", "--max-queue", str(MAX_QUEUE),
        "--request-timeout", str(REQUEST_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
        "--header-timeout", str(HEADER_TIMEOUT), "--log-queue", str(LOG_QUEUE), "--max-batch", str(MAX_BATCH),
        "--sync-seconds", "0",  # stage moves take effect on reload only: the reload tests decide when
    ]  # fmt: skip
    with serving(repo, *options, api_key=KEY) as server:
        yield {
            "repo": repo,
            "url": server.url,
            "port": server.port,
            "db": repo / DEFAULT_DB,
            "proc": server.proc,
            "stderr": server.stderr,
        }


def version(served) -> dict:
    return httpx.get(f"{served['url']}/version", headers=AUTH, timeout=10).json()


def wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def logged_statuses(served, path: str) -> Counter:
    db = sqlite3.connect(served["db"])
    return Counter(status for (status,) in db.execute("SELECT status FROM requests WHERE path = ?", [path]))


# --- access ----------------------------------------------------------------------------------------
ROUTES = [
    ("GET", "/version", None),
    ("GET", "/v1/models", None),
    ("POST", "/generate", PROMPT),
    ("POST", "/v1/completions", {"model": "lora-adapter", "prompt": PROMPT["prompt"]}),
    ("POST", "/admin/reload", {}),
    ("GET", "/docs", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_route_but_health_needs_the_key(hardened, method, path, body):
    url = f"{hardened['url']}{path}"
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},
        {"Authorization": "Basic x"},
    ):
        refused = httpx.request(method, url, json=body, headers=headers, timeout=30)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert httpx.request(method, url, json=body, headers=AUTH, timeout=120).status_code == 200
    assert httpx.get(f"{hardened['url']}/health").status_code == 200  # load balancers need no key


def test_a_non_loopback_bind_needs_a_key_or_insecure(tmp_path):
    refused = run(
        "tuneledger", "serve", "--host", "0.0.0.0", cwd=tmp_path, check=False, env={"TUNELEDGER_API_KEY": ""}
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "no API key is set" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    ServeConfig(host="0.0.0.0", api_key=KEY).check_bind()  # a key, or --insecure, lets it bind
    ServeConfig(host="0.0.0.0", insecure=True).check_bind()
    ServeConfig(host="127.0.0.1").check_bind()


def test_a_non_chat_version_answers_the_chat_route_with_one_clear_error(hardened):
    reply = httpx.post(
        f"{hardened['url']}/v1/chat/completions",
        json={"model": "lora-adapter", "messages": [{"role": "user", "content": "hi"}]},
        headers=AUTH,
        timeout=30,
    )
    assert reply.status_code == 400
    assert "not a chat model" in reply.json()["error"]["message"]
    completion = httpx.post(
        f"{hardened['url']}/v1/completions",
        json={"model": "lora-adapter", "prompt": PROMPT["prompt"], "max_tokens": 8},
        headers=AUTH,
        timeout=60,
    ).json()
    assert completion["choices"][0]["text"].strip() == "sun cat red"
    assert (
        completion["model"] == "lora-adapter@v1.0.0"
        and completion["system_fingerprint"] == completion["tuneledger"]["content_id"]
    )


# --- requests from web pages and other host names ------------------------------------------------
def test_posts_must_be_json(hardened):
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None):
        headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
        for path in ("/generate", "/admin/reload", "/v1/completions"):
            reply = httpx.post(f"{hardened['url']}{path}", content=b'{"prompt": "x"}', headers=headers)
            assert reply.status_code == 415, (path, content_type, reply.text)


def test_other_origins_are_refused_and_the_own_origin_is_not(hardened):
    url, port = hardened["url"], hardened["port"]
    for origin in ("http://evil.example", "null", f"http://localhost.evil.example:{port}"):
        for method, path, body in (("POST", "/generate", PROMPT), ("GET", "/version", None)):
            reply = httpx.request(method, f"{url}{path}", json=body, headers={**AUTH, "Origin": origin})
            assert reply.status_code == 403, (origin, path)
    own = httpx.post(f"{url}/generate", json=PROMPT, headers={**AUTH, "Origin": url}, timeout=60)
    assert own.status_code == 200


def test_host_names_other_than_the_bound_ones_are_refused(hardened):
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends Host: evil.example."""
    for host in ("evil.example", f"evil.example:{hardened['port']}", "127.0.0.1.nip.io"):
        reply = httpx.get(f"{hardened['url']}/version", headers={**AUTH, "Host": host})
        assert reply.status_code == 400, host
    assert httpx.get(f"{hardened['url']}/version", headers={**AUTH, "Host": "localhost"}).status_code == 200


# --- overload ---------------------------------------------------------------------------------------
def trickle_body(port: int, pause: float = 0.2) -> tuple[int | None, float]:
    """A request whose body arrives a byte at a time: (status, seconds until the server answered)."""
    body = json.dumps(PROMPT).encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            f"POST /generate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        for byte in body:
            try:
                sock.send(bytes([byte]))
                sock.settimeout(pause)
                if sock.recv(1, socket.MSG_PEEK):
                    break  # answered before the body was complete
            except TimeoutError:
                continue
            except OSError:
                break
        sock.settimeout(BODY_TIMEOUT + 10)
        head = sock.recv(64)
    return (int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else None), time.monotonic() - started


def test_a_trickling_body_gets_408_at_the_body_deadline(hardened):
    status, seconds = trickle_body(hardened["port"])
    assert status == 408 and BODY_TIMEOUT <= seconds < BODY_TIMEOUT + SLACK
    assert httpx.post(f"{hardened['url']}/generate", json=PROMPT, headers=AUTH, timeout=60).status_code == 200


def test_headers_that_never_end_lose_the_connection(hardened):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", hardened["port"])) as sock:
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        sock.settimeout(HEADER_TIMEOUT + 10)
        assert sock.recv(64) == b""  # closed by the server
    assert HEADER_TIMEOUT <= time.monotonic() - started < HEADER_TIMEOUT + SLACK


def test_64_concurrent_clients_each_get_a_status_within_their_deadline(hardened):
    """More clients than the queue holds, some impatient: 200, 503 (with Retry-After) or 504, never a
    hang and never a request without a status; /health answers throughout."""
    url, health, errors, stop = hardened["url"], [], [], threading.Event()

    async def client(session: httpx.AsyncClient):
        began = time.monotonic()
        reply = await session.post(f"{url}/generate", json=LONG, headers=AUTH)
        return reply.status_code, time.monotonic() - began, reply.headers.get("Retry-After")

    async def impatient() -> None:
        """Sends a request and closes the connection after 50 ms: the server logs 499."""
        body = json.dumps(LONG).encode()
        _, writer = await asyncio.open_connection("127.0.0.1", hardened["port"])
        writer.write(
            f"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await asyncio.sleep(0.05)
        writer.close()

    async def burst():
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64), timeout=120) as session:
            clients = [impatient() if i % 8 == 0 else client(session) for i in range(64)]
            return await asyncio.gather(*clients)

    def probe() -> None:
        try:
            with httpx.Client() as session:
                while not stop.is_set():
                    began = time.perf_counter()
                    session.get(f"{url}/health", timeout=10).raise_for_status()
                    health.append(time.perf_counter() - began)
                    time.sleep(0.02)
        except Exception as exc:  # recorded: a thread's exception must fail the test, not vanish
            errors.append(f"{type(exc).__name__}: {exc}")

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        outcomes = [o for o in asyncio.run(burst()) if o is not None]  # a client's exception fails the test
    finally:
        stop.set()
        prober.join(timeout=30)
    assert not errors
    statuses = Counter(status for status, _, _ in outcomes)
    assert len(outcomes) >= 64 - 8 and set(statuses) <= {200, 503, 504}, statuses
    assert statuses[503] > 0 and statuses[200] + statuses[504] > 0, statuses
    assert max(seconds for _, seconds, _ in outcomes) < REQUEST_TIMEOUT + SLACK
    assert all(retry.isdigit() and int(retry) >= 1 for status, _, retry in outcomes if status == 503)
    assert health and sorted(health)[int(0.99 * (len(health) - 1))] < 0.5  # loose; `make bench`: < 100 ms
    wait_until(lambda: logged_statuses(hardened, "/generate")[499] > 0, timeout=10)


def test_requests_past_their_deadline_get_504_and_the_model_skips_them(hardened):
    """The machine stalls (the server is stopped) while requests wait: when it resumes, every one
    of them is past its deadline, answered 504 at once, and none is generated for nobody."""
    url, proc, outcomes, errors = hardened["url"], hardened["proc"], [], []

    def client() -> None:
        try:
            reply = httpx.post(f"{url}/generate", json=LONG, headers=AUTH, timeout=60)
            outcomes.append(reply.status_code)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    clients = [threading.Thread(target=client) for _ in range(MAX_QUEUE)]
    for thread in clients:
        thread.start()
    wait_until(lambda: httpx.get(f"{url}/health").json()["queue"]["admitted"] >= 4, timeout=30)
    proc.send_signal(signal.SIGSTOP)
    time.sleep(REQUEST_TIMEOUT + 0.5)
    resumed = time.monotonic()
    proc.send_signal(signal.SIGCONT)
    for thread in clients:
        thread.join(timeout=60)
    assert not errors and outcomes.count(504) >= 4 and set(outcomes) <= {200, 504}, outcomes
    # What expired in the queue is skipped: the model is free again at once, not after each generation.
    wait_until(lambda: httpx.get(f"{url}/health").json()["queue"]["admitted"] == 0, timeout=REQUEST_TIMEOUT)
    assert time.monotonic() - resumed < REQUEST_TIMEOUT + SLACK


# --- the shadow cannot hurt prod ----------------------------------------------------------------
def shadow_state(hardened) -> dict:
    return version(hardened)["shadow"]


def test_a_stalled_shadow_drops_requests_and_prod_keeps_answering(hardened):
    wait_until(lambda: shadow_state(hardened)["state"] == "ready", 120)
    pid = shadow_state(hardened)["pid"]
    nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    assert nice == 19
    dropped = shadow_state(hardened)["dropped"]
    os.kill(pid, signal.SIGSTOP)  # a shadow too slow to keep up
    try:
        for _ in range(8):
            reply = httpx.post(f"{hardened['url']}/generate", json=PROMPT, headers=AUTH, timeout=60)
            assert reply.status_code == 200 and reply.json()["version"] == "v1.0.0"
        state = shadow_state(hardened)
        assert state["queued"] <= 2 and state["dropped"] >= dropped + 6
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_killed_shadow_is_restarted_with_backoff_and_prod_keeps_answering(hardened):
    wait_until(lambda: shadow_state(hardened)["state"] == "ready", 120)
    before = shadow_state(hardened)
    os.kill(before["pid"], signal.SIGKILL)
    wait_until(lambda: shadow_state(hardened)["state"] == "failed", 10)
    state = shadow_state(hardened)
    assert state["error"] == "the shadow process exited" and state["next_attempt_in_s"] > 0
    for _ in range(4):
        assert (
            httpx.post(f"{hardened['url']}/generate", json=PROMPT, headers=AUTH, timeout=60).status_code
            == 200
        )
    assert shadow_state(hardened)["dropped"] >= before["dropped"] + 4
    wait_until(lambda: shadow_state(hardened)["state"] == "ready", 120)
    assert shadow_state(hardened)["pid"] != before["pid"]


def test_a_failed_reload_shows_a_short_reason_and_keeps_the_details_in_the_log(hardened):
    repo, url = hardened["repo"], hardened["url"]
    config, dvc_cache = repo / ".dvc/config.local", repo / ".dvc/cache"
    original = config.read_text()
    run("tuneledger", "promote", "v1.1.0", "--stage", "prod", cwd=repo)
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        # v1.1.0 must come from the remote, which is now unreachable: set the local copies aside.
        config.write_text(original.replace(original.split("endpointurl = ")[1].split()[0], dead))
        dvc_cache.rename(repo / "dvc-cache.aside")
        for path in list((repo / ".tuneledger/serve/versions").glob("lora-adapter@v1.1.0*")):
            path.rename(repo / f"aside-{path.name}")
        reply = httpx.post(f"{url}/admin/reload", json={}, headers=AUTH, timeout=300)
        assert reply.status_code == 500
        detail = reply.json()["detail"]
        assert detail.startswith("reload failed (fetching v1.1.0 failed); still serving v1.0.0")
        shown = json.dumps(version(hardened))
        assert dead not in detail and dead not in shown and str(repo) not in shown
        assert version(hardened)["last_reload"]["reason"] == "fetching v1.1.0 failed"
        logged = hardened["stderr"].read_text().split("reload failed, still serving v1.0.0: ")[-1]
        assert logged.startswith("fetching v1.1.0 failed: ") and len(logged) > 40  # the details: the log
        assert (
            httpx.post(f"{url}/generate", json=PROMPT, headers=AUTH, timeout=60).json()["version"] == "v1.0.0"
        )
    finally:
        config.write_text(original)
        if (repo / "dvc-cache.aside").exists():
            (repo / "dvc-cache.aside").rename(dvc_cache)
        run("tuneledger", "rollback", "--stage", "prod", cwd=repo)


# --- the serving log --------------------------------------------------------------------------------
def test_a_locked_log_shows_in_health_drops_are_counted_and_prod_answers(hardened):
    url = hardened["url"]
    holder = sqlite3.connect(hardened["db"], isolation_level=None, timeout=30)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for _ in range(LOG_QUEUE + 8):
            assert httpx.post(f"{url}/generate", json=PROMPT, headers=AUTH, timeout=60).status_code == 200
        wait_until(lambda: not httpx.get(f"{url}/health").json()["log"]["healthy"], 20)
        health = httpx.get(f"{url}/health").json()
        assert health["status"] == "degraded" and health["log"]["write_errors"] > 0
        assert health["log"]["queued"] <= LOG_QUEUE and health["log"]["dropped"] > 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    wait_until(lambda: httpx.get(f"{url}/health").json()["log"]["healthy"], 30)
    wait_until(lambda: httpx.get(f"{url}/health").json()["log"]["queued"] == 0, 30)


def test_prompts_are_stored_as_digests_unless_asked(hardened):
    assert httpx.post(f"{hardened['url']}/generate", json=PROMPT, headers=AUTH, timeout=60).status_code == 200
    db = sqlite3.connect(hardened["db"])
    wait_until(
        lambda: db.execute("SELECT COUNT(*) FROM requests WHERE prompt_sha256 IS NOT NULL").fetchone()[0]
    )
    raw = db.execute(
        "SELECT COUNT(*) FROM requests WHERE prompt IS NOT NULL OR output IS NOT NULL"
    ).fetchone()
    assert raw[0] == 0
    assert db.execute("SELECT COUNT(*) FROM shadow_pairs WHERE prompt IS NOT NULL").fetchone()[0] == 0


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def test_allow_origin_admits_that_origin_only():
    """--allow-origin: the named origin passes (Starlette's CORS middleware then answers its
    preflight); any other is still refused."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from tuneledger.serve.guards import SameOriginOnly

    app = Starlette(routes=[Route("/version", lambda _: PlainTextResponse("v1.0.0"))])
    client = TestClient(SameOriginOnly(app, allowed=("https://ui.example",)))
    assert client.get("/version", headers={"Origin": "https://ui.example"}).status_code == 200
    assert client.get("/version", headers={"Origin": "https://evil.example"}).status_code == 403
    assert client.get("/version").status_code == 200  # not from a browser page


# --- hostile clients (security round 3) -------------------------------------------------------------
def health_from(url: str, address: str) -> int:
    """/health's status as a load balancer on another loopback address sees it."""
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(transport=transport, timeout=10) as session:
        return session.get(f"{url}/health").status_code


def test_one_client_address_cannot_take_the_server_down(hardened):
    """256 idle connections from one address used to make every route answer 503, /health included.
    Beyond its share (128) an address gets 429 and a closed connection; others are still served."""
    port, sockets = hardened["port"], []
    try:
        for _ in range(256):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.3)  # the server has accepted them all
        assert health_from(hardened["url"], "127.0.0.2") == 200
        refused = sockets[-1].recv(4096)
        assert refused.startswith(b"HTTP/1.1 429") and b"too many open connections" in refused
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"), timeout=10) as other:
            assert other.get(f"{hardened['url']}/version", headers=AUTH).status_code == 200
    finally:
        for held in sockets:
            held.close()


def test_refused_requests_are_counted_and_long_strings_clipped(hardened):
    """400 unauthenticated requests with 15 KB paths leave counts, not rows; a long model name in an
    answered request is stored cut short."""
    url, db = hardened["url"], sqlite3.connect(hardened["db"])
    before = db.execute("SELECT COALESCE(SUM(count), 0) FROM refusals WHERE status = 401").fetchone()[0]
    rows_before = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    with httpx.Client(timeout=30) as session:
        for _ in range(400):
            assert session.get(f"{url}/{'a' * 15_000}").status_code == 401
    wait_until(
        lambda: db.execute("SELECT SUM(count) FROM refusals WHERE status = 401").fetchone()[0] >= before + 400
    )
    assert db.execute("SELECT COUNT(*) FROM requests WHERE length(path) > 1000").fetchone()[0] == 0
    unknown = httpx.post(
        f"{url}/v1/completions", json={"model": "m" * 10_000, "prompt": "x"}, headers=AUTH, timeout=30
    )
    assert unknown.status_code == 404
    wait_until(lambda: db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] > rows_before)
    longest = db.execute("SELECT MAX(length(error)), MAX(length(path)) FROM requests").fetchone()
    assert longest[0] <= 500 and longest[1] <= 256


def test_a_seed_decides_only_its_own_requests_sample(hardened):
    """A seeded request used to set the process-wide generator, so the next unseeded request's
    sample was decided by it. Seeded answers repeat; unseeded ones after them do not."""
    url = hardened["url"]
    seeded, unseeded = [], []
    unseeded_body = {key: value for key, value in LONG.items() if key != "seed"}
    for _ in range(3):
        seeded.append(httpx.post(f"{url}/generate", json=LONG, headers=AUTH, timeout=60).json()["text"])
        unseeded.append(
            httpx.post(f"{url}/generate", json=unseeded_body, headers=AUTH, timeout=60).json()["text"]
        )
    assert len(set(seeded)) == 1
    assert len(set(unseeded)) > 1, unseeded


def test_a_vanishing_temperature_is_greedy_not_a_500(hardened):
    url = hardened["url"]
    greedy = httpx.post(f"{url}/generate", json={**PROMPT, "temperature": 0}, headers=AUTH, timeout=60)
    tiny = httpx.post(f"{url}/generate", json={**PROMPT, "temperature": 1e-300}, headers=AUTH, timeout=60)
    assert tiny.status_code == 200 and tiny.json()["text"] == greedy.json()["text"]
    body = {"model": "lora-adapter", "prompt": PROMPT["prompt"], "temperature": 1e-300, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, headers=AUTH, timeout=60) as streamed:
        events = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    assert streamed.status_code == 200 and events[-1] == "data: [DONE]"
    assert not any('"error"' in event for event in events), events


def test_a_short_api_key_is_refused_and_tls_is_served_when_asked(registry, tmp_path):
    """A guessable key stops the server with one line; with a certificate it speaks HTTPS."""
    from conftest import serving

    repo = copy_repo(registry[0], tmp_path / "repo")
    short = run("tuneledger", "serve", cwd=repo, check=False, env={"TUNELEDGER_API_KEY": "change-me"})
    assert (
        short.returncode == 1
        and "error: serve: the API key has 9 characters; use at least 16" in short.stderr
    )
    certificate, key = self_signed_certificate(tmp_path)
    tls = ("--ssl-certfile", str(certificate), "--ssl-keyfile", str(key))
    with serving(repo, *tls, api_key=KEY, scheme="https", verify=str(certificate)) as server:
        url = server.url
        assert url.startswith("https://")
        answer = httpx.post(f"{url}/generate", json=PROMPT, headers=AUTH, verify=str(certificate), timeout=60)
        assert answer.status_code == 200 and answer.json()["version"] == "v1.0.0"


def test_a_non_loopback_bind_with_a_key_but_no_tls_is_warned_about():
    warned = ServeConfig(host="0.0.0.0", api_key=KEY).warnings()
    assert len(warned) == 1 and "API key crosses the network in clear text" in warned[0]
    assert ServeConfig(api_key=KEY).warnings() == []


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, written as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certificate_file, key_file = directory / "server.pem", directory / "server.key"
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return certificate_file, key_file


def test_metrics_speak_prometheus_behind_the_key_and_name_the_version(hardened):
    """`/metrics` counts requests, tokens, errors, latency, queue depth and batch sizes by the version
    and content id that answered, and lists the resident versions (prod, its shadow, and versions
    loaded before that stay resident)."""
    from prometheus_client.parser import text_string_to_metric_families

    url = hardened["url"]
    assert httpx.get(f"{url}/metrics", timeout=10).status_code == 401
    answered = httpx.post(f"{url}/generate", json=PROMPT, headers=AUTH, timeout=60).json()
    scraped = httpx.get(f"{url}/metrics", headers=AUTH, timeout=10)
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    samples = [s for family in text_string_to_metric_families(scraped.text) for s in family.samples]

    def value(name: str, **labels) -> float:
        return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())

    by = {"version": answered["version"], "content_id": answered["content_id"]}
    assert value("tuneledger_requests_total", route="/generate", status="200", **by) >= 1
    assert value("tuneledger_output_tokens_total", **by) >= 1
    assert value("tuneledger_request_latency_seconds_count", route="/generate", **by) >= 1
    assert value("tuneledger_batch_size_count") >= 1
    assert any(s.name == "tuneledger_queue_depth" for s in samples)
    assert value("tuneledger_refused_requests_total", status="401") >= 1
    wait_until(lambda: shadow_state(hardened)["version"] is not None)
    shadow = shadow_state(hardened)["version"]
    text = httpx.get(f"{url}/metrics", headers=AUTH, timeout=10).text
    resident = {
        (s.labels["role"], s.labels["version"])
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "tuneledger_resident_version"
    }
    assert {("prod", "v1.0.0"), ("shadow", shadow)} <= resident
    assert {role for role, _ in resident} <= {"prod", "shadow", "resident"}
