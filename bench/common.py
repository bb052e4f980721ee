"""Helpers for side-by-side measurements: alternate the contenders, report median and spread."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(
    contenders: dict[str, Callable[[], object]], rounds: int, between: Callable[[], object] | None = None
) -> dict[str, list[float]]:
    """Run every contender once per round, in alternating order, so drift hits all of them alike.

    `between` (untimed) restores the starting state after each run.
    """
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            times[name].append(timed(contenders[name]))
            if between:
                between()
    return times


def summary(samples: list[float]) -> str:
    """`median (min–max)` in seconds."""
    return f"{statistics.median(samples):.3f} s ({min(samples):.3f}–{max(samples):.3f})"


def ratio(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """Median of per-round ratios, with their min and max."""
    per_round = [n / d for n, d in zip(numerator, denominator, strict=True)]
    return statistics.median(per_round), min(per_round), max(per_round)


def sh(*cmd: str, cwd=None, env=None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} (in {cwd}) exited {done.returncode}:\n{done.stderr[-2000:]}")
    return done.stdout


def goal_verdict(seconds: float, goal: float) -> str:
    """The note beside a figure with a goal in seconds."""
    return f"goal ≤ {goal:.0f} s: {'met' if seconds <= goal else 'MISSED'}"


def commit(repo, message: str) -> None:
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "--allow-empty", "-m", message, cwd=repo)


HERE_BENCH = Path(__file__).resolve().parent
PROJECT = HERE_BENCH.parent


def clone_template(dest: Path) -> Path:
    """A fresh clone of the committed template, as a user would start."""
    sh("git", "clone", "-q", str(PROJECT), str(dest))
    return dest


SMOLLM2_TRAIN = {"max_steps": 2, "batch_size": 4, "max_length": 64, "lr": 0.005, "logging_steps": 1}


def smollm2_chat_run(dest: Path, **settings) -> Path:
    """A template clone on SmolLM2-135M with 60 reverse-words chats as its data, a short real
    training, and `settings` (dotted param → value) on top, after `dvc repro`."""
    import json
    import sys

    from tuneledger.models import tasks

    sys.path.insert(0, str(PROJECT / "tests"))
    from real_model import smollm2_dir

    repo = clone_template(dest)
    rows = tasks.BUILTIN_TASKS["reverse-words-chat"](60, 5)
    (repo / "data/raw").mkdir(parents=True, exist_ok=True)
    (repo / "data/raw/chat.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    defaults = {
        "model.base": str(smollm2_dir()),
        "data.source": "data/raw/chat.jsonl",
        "lora.target_modules": "auto",
        "eval.max_examples": 4,
        **{f"train.{k}": v for k, v in SMOLLM2_TRAIN.items()},
    }
    for dotted, value in {**defaults, **settings}.items():
        set_param(repo, dotted, value)
    sh("dvc", "repro", cwd=repo)
    return repo


def set_param(repo: Path, dotted: str, value) -> None:
    import yaml

    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    group, key = dotted.split(".")
    params[group][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def start_server(repo, *options: str):
    """`tuneledger serve` on a free loopback port with a log of its own; (process, URL, port, log)
    once /health answers."""
    import httpx

    from tuneledger.core.s3local import free_port

    port = free_port()
    cmd = [
        "tuneledger",
        "serve",
        "--stage",
        "prod",
        "--port",
        str(port),
        "--db",
        str(repo / f"serve-{port}.db"),
    ]
    proc = subprocess.Popen([*cmd, *options], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url, port, repo / f"serve-{port}.db"
        except httpx.HTTPError:
            time.sleep(0.25)
    proc.terminate()
    raise RuntimeError("server did not start")
