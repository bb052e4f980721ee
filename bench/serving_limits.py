"""The server under 64 concurrent slow clients: /health latency, and that every request ends with a
status within its deadline.

The clients, all at once for a fixed time: 32 send /generate requests back to back (more than
the model queue holds; after a 503 they wait its Retry-After), 16 trickle their request body a
byte at a time, 8 send headers a byte at a time, and 8 give up on their /generate request after
100 ms. A 65th client, in a process of its own, probes /health.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter

import httpx
from common import start_server

SECONDS = 20.0
REQUEST_TIMEOUT, BODY_TIMEOUT, HEADER_TIMEOUT, MAX_QUEUE = 4.0, 2.0, 2.0, 16
SLACK = 1.0  # scheduling and transfer allowed beyond a deadline
BODY = b'{"prompt": "reverse: red cat sun =>", "max_new_tokens": 32}'
MIX = {"generate": 32, "trickle": 16, "headers": 8, "quit": 8}  # 64 clients


async def _status(reader: asyncio.StreamReader, timeout: float) -> int | str:
    """The response's status code, or what happened instead."""
    try:
        head = await asyncio.wait_for(reader.read(64), timeout)
    except TimeoutError:
        return "no answer"
    except OSError as exc:
        return type(exc).__name__
    return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else "closed"


async def trickle_body(port: int, pause: float = 0.25) -> tuple[int | str, float]:
    """A POST whose body arrives a byte at a time; returns (status, seconds until answered)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"POST /generate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n".encode()
        )
        answer = asyncio.ensure_future(_status(reader, BODY_TIMEOUT + 30))
        # A byte arriving as the server answers and closes draws a reset, which discards the
        # answer on this side: stop writing just before the deadline the server is meant to keep.
        for byte in BODY:
            if answer.done() or time.monotonic() - started > BODY_TIMEOUT - 2 * pause:
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(pause)
        return await answer, time.monotonic() - started
    finally:
        writer.close()


async def trickle_headers(port: int, pause: float = 0.25) -> tuple[str, float]:
    """Headers a byte at a time; returns how the connection ended and after how long."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        closed = asyncio.ensure_future(_status(reader, HEADER_TIMEOUT + 30))
        for byte in b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 1000:
            if closed.done() or time.monotonic() - started > HEADER_TIMEOUT - 2 * pause:
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(pause)
        outcome = await closed
        return (
            "closed" if outcome in ("closed", "ConnectionResetError") else outcome
        ), time.monotonic() - started
    finally:
        writer.close()


async def give_up(port: int, after: float = 0.1) -> tuple[str, float]:
    """A /generate request whose client closes the connection after `after` seconds."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /generate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n".encode()
        + BODY
    )
    status = await _status(reader, after)
    writer.close()
    return ("gave up" if status == "no answer" else status), time.monotonic() - started


_PROBE = """
import json, sys, time, httpx
url, seconds, latencies = sys.argv[1], float(sys.argv[2]), []
end = time.monotonic() + seconds
with httpx.Client() as client:
    while time.monotonic() < end:
        started = time.perf_counter()
        client.get(url, timeout=30).raise_for_status()
        latencies.append(time.perf_counter() - started)
        time.sleep(0.05)
print(json.dumps(latencies))
"""


def probe_health(url: str, seconds: float) -> subprocess.Popen:
    """/health probed from a process of its own, so the load's clients never delay the probe."""
    return subprocess.Popen(
        [sys.executable, "-c", _PROBE, f"{url}/health", str(seconds)], stdout=subprocess.PIPE, text=True
    )


async def _load(url: str, port: int, seconds: float, mix: dict[str, int]) -> dict:
    outcomes: list[tuple[str, object, float]] = []  # (client kind, status or what happened, seconds)
    errors: list[str] = []
    end = time.monotonic() + seconds

    async def generate(client: httpx.AsyncClient):
        started = time.monotonic()
        post = client.post(f"{url}/generate", content=BODY, headers={"Content-Type": "application/json"})
        reply = await asyncio.wait_for(post, REQUEST_TIMEOUT + 60)
        elapsed = time.monotonic() - started
        if reply.status_code == 503:  # as the openai client does: wait as told before trying again
            await asyncio.sleep(min(float(reply.headers["Retry-After"]), max(0.0, end - time.monotonic())))
        return reply.status_code, elapsed

    actions = {
        "generate": generate,
        "quit": lambda _: give_up(port),
        "trickle": lambda _: trickle_body(port),
        "headers": lambda _: trickle_headers(port),
    }

    async def client_loop(kind: str) -> None:
        async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=1)) as client:
            try:
                while time.monotonic() < end:
                    status, elapsed = await actions[kind](client)
                    outcomes.append((kind, status, elapsed))
            except Exception as exc:  # a failure the server should have answered with a status
                errors.append(f"{kind}: {type(exc).__name__}: {exc}")

    await asyncio.gather(*(client_loop(kind) for kind, count in mix.items() for _ in range(count)))
    return {"outcomes": outcomes, "errors": errors}


def overload(url: str, port: int, seconds: float = SECONDS, mix: dict[str, int] | None = None) -> dict:
    """Run the clients (one event loop, so they do not compete with each other for the GIL) for
    `seconds`; return every outcome and the /health latencies measured meanwhile."""
    prober = probe_health(url, seconds)
    result = asyncio.run(_load(url, port, seconds, mix or MIX))
    result["health"] = json.loads(prober.communicate(timeout=120)[0])
    return result


def _slowest(db) -> list[tuple[int, float]]:
    import sqlite3

    query = "SELECT status, MAX(latency_ms) FROM requests WHERE path = '/generate' GROUP BY status"
    return sqlite3.connect(db).execute(query).fetchall()


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
    proc, url, port, db = start_server(repo, *options)
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
            (
                "requests past their deadline, client side",
                str(len(late)),
                f"allowing {SLACK:g} s beyond each deadline; "
                + "; ".join(f"{k} {st} {t:.2f} s" for k, st, t in late[:3]),
            ),
            (
                "slowest answer per status, server side",
                ", ".join(f"{status}: {ms / 1000:.2f} s" for status, ms in _slowest(db)),
                "from the serving log: from the request's arrival to its status",
            ),
            ("requests without a status", str(len(lost)), "; ".join(map(str, lost[:3])) or "none"),
        ],
        "ratios": [
            ("/health p99 under load / 100 ms target", p99 / 0.1, p99 / 0.1, max(health) / 0.1, "< 1")
        ],
        "notes": f"`tuneledger serve {' '.join(options)}` on the default model. 32 clients send /generate "
        "back to back (waiting Retry-After after a 503); 16 trickle a body (408 at the body deadline); "
        "8 trickle headers (closed at the header deadline); 8 give up after 100 ms (logged as 499). /health "
        "answers on the event loop, never behind the model.",
    }
