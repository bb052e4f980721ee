"""Shadow overhead: prod p50 latency of a server with a shadow versus one without."""

from __future__ import annotations

import statistics
import time

import httpx
from common import sh, start_server

REQUESTS = 40
PROMPTS = [
    f"reverse: {a} {b} {c} =>"
    for a, b, c in zip(
        "red blue gold pink".split(), "cat dog owl fox".split(), "sun moon star rain".split(), strict=True
    )
]


def _p50(url: str) -> float:
    latencies = []
    with httpx.Client(timeout=60) as client:
        for i in range(REQUESTS):
            started = time.perf_counter()
            client.post(f"{url}/generate", json={"prompt": PROMPTS[i % len(PROMPTS)]}).raise_for_status()
            latencies.append(time.perf_counter() - started)
    return statistics.median(latencies)


def _drain(url: str) -> None:
    """Wait until the shadow has answered everything queued, so rounds do not overlap."""
    with httpx.Client(timeout=10) as client:
        for _ in range(600):
            if not client.get(f"{url}/version").json()["shadow"]["queued"]:
                time.sleep(0.2)  # the job it took last
                return
            time.sleep(0.1)


def run(ctx: dict, rounds: int = 5) -> dict:
    repo = ctx["repo"]
    sh("tuneledger", "promote", "v1.1.0", "--stage", "staging", "--force", "--reason", "bench", cwd=repo)
    plain, plain_url, _, _ = start_server(repo)
    shadowed, shadow_url, _, _ = start_server(repo, "--shadow", "staging")
    try:
        off, on = [], []
        for round_ in range(rounds):
            order = [("off", plain_url), ("on", shadow_url)]
            for label, url in order if round_ % 2 == 0 else reversed(order):
                (off if label == "off" else on).append(_p50(url))
                if label == "on":
                    _drain(url)
    finally:
        for proc in (plain, shadowed):
            proc.terminate()
            proc.wait(timeout=30)
    per_round = [b / a for a, b in zip(off, on, strict=True)]
    return {
        "title": f"Shadow overhead on prod latency ({REQUESTS} sequential requests per round)",
        "rows": [
            (
                "prod p50, no shadow",
                f"{statistics.median(off) * 1000:.1f} ms ({min(off) * 1000:.1f}–{max(off) * 1000:.1f})",
                "`tuneledger serve --stage prod`",
            ),
            (
                "prod p50, shadow on",
                f"{statistics.median(on) * 1000:.1f} ms ({min(on) * 1000:.1f}–{max(on) * 1000:.1f})",
                "`--shadow staging` (a second model, niced)",
            ),
        ],
        "ratios": [
            (
                "prod p50 with shadow / without",
                statistics.median(per_round),
                min(per_round),
                max(per_round),
                "≤ 1.10",
            )
        ],
        "notes": "Client-side latency over HTTP on 127.0.0.1. The shadow process runs at nice 19 with one "
        "thread, so on 2 cores it competes with prod only for the core prod is not using.",
    }
