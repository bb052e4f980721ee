"""The server under 64 concurrent slow clients: /health latency, and that every request ends with a
status within its deadline.

The clients, all at once for a fixed time: 32 send /generate requests back to back (more than
the model queue holds), 16 trickle their request body a byte at a time, 8 send headers a byte at a
time, and 8 give up on their /generate request after 100 ms. A 65th client probes /health.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections import Counter

import httpx

from tuneledger.s3local import free_port

SECONDS = 20.0
REQUEST_TIMEOUT, BODY_TIMEOUT, HEADER_TIMEOUT, MAX_QUEUE = 4.0, 2.0, 2.0, 16
SLACK = 1.0  # scheduling and transfer allowed beyond a deadline
BODY = b'{"prompt": "reverse: red cat sun =>", "max_new_tokens": 32}'


def start_server(repo, *options: str):
    port = free_port()
    cmd = [
        "tuneledger",
        "serve",
        "--stage",
        "prod",
        "--port",
        str(port),
        "--db",
        str(repo / f"limits-{port}.db"),
    ]
    proc = subprocess.Popen([*cmd, *options], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url, port
        except httpx.HTTPError:
            time.sleep(0.25)
    proc.terminate()
    raise RuntimeError("server did not start")


def _status_line(sock: socket.socket, timeout: float) -> int | None:
    sock.settimeout(timeout)
    try:
        head = sock.recv(64)
    except (TimeoutError, OSError):
        return None
    return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else None


def trickle_body(port: int, pause: float = 0.25) -> tuple[int | None, float]:
    """A POST whose body arrives a byte at a time; returns (status, seconds until answered)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            f"POST /generate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n".encode()
        )
        for byte in BODY:
            try:
                sock.send(bytes([byte]))
            except OSError:  # the server answered and closed
                break
            sock.settimeout(pause)
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break
            except TimeoutError:
                continue
        return _status_line(sock, BODY_TIMEOUT + SLACK), time.monotonic() - started


def trickle_headers(port: int, pause: float = 0.25) -> tuple[str, float]:
    """Headers a byte at a time; returns how the connection ended and after how long."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for byte in b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 1000:
            try:
                sock.send(bytes([byte]))
                sock.settimeout(pause)
                if sock.recv(1) == b"":
                    return "closed", time.monotonic() - started
            except TimeoutError:
                continue
            except OSError:
                return "closed", time.monotonic() - started
    return "still open", time.monotonic() - started


def overload(
    url: str,
    port: int,
    seconds: float = SECONDS,
    generators: int = 32,
    tricklers: int = 16,
    slow_headers: int = 8,
    quitters: int = 8,
) -> dict:
    """Run the mix of clients for `seconds`; return every outcome and the /health latencies."""
    stop = threading.Event()
    outcomes: list[tuple[str, object, float]] = []  # (client kind, status or error, seconds)
    health: list[float] = []
    errors: list[str] = []

    def loop(kind: str, action) -> None:
        try:
            while not stop.is_set():
                status, elapsed = action()
                outcomes.append((kind, status, elapsed))
        except Exception as exc:  # a client that fails for a reason the test did not plan for
            errors.append(f"{kind}: {type(exc).__name__}: {exc}")

    def generate(client: httpx.Client, give_up: float | None):
        started = time.monotonic()
        try:
            reply = client.post(
                f"{url}/generate",
                content=BODY,
                headers={"Content-Type": "application/json"},
                timeout=give_up or REQUEST_TIMEOUT + 30,
            )
            return reply.status_code, time.monotonic() - started
        except httpx.TimeoutException:
            if give_up is None:
                raise
            return "gave up", time.monotonic() - started

    def probe() -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                started = time.perf_counter()
                client.get(f"{url}/health", timeout=10).raise_for_status()
                health.append(time.perf_counter() - started)
                time.sleep(0.05)

    kinds = [("generate", None)] * generators + [("quit", 0.1)] * quitters
    threads = [threading.Thread(target=probe)]
    for kind, give_up in kinds:
        client = httpx.Client(timeout=None)
        threads.append(threading.Thread(target=loop, args=(kind, lambda c=client, g=give_up: generate(c, g))))
    threads += [
        threading.Thread(target=loop, args=("trickle", lambda: trickle_body(port))) for _ in range(tricklers)
    ]
    threads += [
        threading.Thread(target=loop, args=("headers", lambda: trickle_headers(port)))
        for _ in range(slow_headers)
    ]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=REQUEST_TIMEOUT + 60)
    return {"outcomes": outcomes, "health": health, "errors": errors}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def run(ctx: dict, rounds: int = 1) -> dict:
    repo = ctx["repo"]
    options = [
        "--max-queue",
        str(MAX_QUEUE),
        "--request-timeout",
        str(REQUEST_TIMEOUT),
        "--body-timeout",
        str(BODY_TIMEOUT),
        "--header-timeout",
        str(HEADER_TIMEOUT),
    ]
    proc, url, port = start_server(repo, *options)
    try:
        idle = []
        with httpx.Client() as client:
            for _ in range(50):
                started = time.perf_counter()
                client.get(f"{url}/health").raise_for_status()
                idle.append(time.perf_counter() - started)
        result = overload(url, port)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    outcomes, health = result["outcomes"], result["health"]
    statuses = Counter(f"{kind} {status}" for kind, status, _ in outcomes)
    answered = [(kind, status, s) for kind, status, s in outcomes if kind in ("generate", "trickle")]
    limit = {"generate": REQUEST_TIMEOUT + BODY_TIMEOUT + SLACK, "trickle": BODY_TIMEOUT + SLACK}
    late = [o for o in answered if o[2] > limit[o[0]]]
    lost = [o for o in answered if not isinstance(o[1], int)] + result["errors"]
    slowest = max(s for kind, _, s in answered if kind == "generate")
    p99, p99_idle = percentile(health, 0.99), percentile(idle, 0.99)
    return {
        "title": "Overload: 64 concurrent slow clients",
        "rows": [
            (
                "/health p50 / p99 / max under load",
                f"{percentile(health, 0.5) * 1000:.1f} / {p99 * 1000:.1f} / {max(health) * 1000:.1f} ms",
                f"{len(health)} probes; target p99 < 100 ms",
            ),
            ("/health p99 idle", f"{p99_idle * 1000:.1f} ms", "50 probes before the load"),
            (
                "outcomes",
                ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
                f"{SECONDS:.0f} s of load",
            ),
            (
                "slowest /generate answer",
                f"{slowest:.2f} s",
                f"deadline {REQUEST_TIMEOUT:g} s from admission (then 504); queue {MAX_QUEUE} (then 503)",
            ),
            ("requests past their deadline", str(len(late)), f"allowing {SLACK:g} s beyond each deadline"),
            ("requests without a status", str(len(lost)), "; ".join(map(str, lost[:3])) or "none"),
        ],
        "ratios": [
            ("/health p99 under load / 100 ms target", p99 / 0.1, p99 / 0.1, max(health) / 0.1, "< 1")
        ],
        "notes": f"`tuneledger serve {' '.join(options)}` on the default model. 32 clients send /generate "
        "back to back; 16 trickle a body (408 at the body deadline); 8 trickle headers (closed at the header "
        "deadline); 8 give up after 100 ms (logged as 499). /health answers on the event loop, never behind "
        "the model.",
    }
