"""Shadow traffic: the candidate answers the same requests in a separate, low-priority process.

Prod hands each finished request to a bounded queue and returns at once; when the queue is full
the request is dropped and counted. The shadow process runs at the lowest CPU priority with one
thread, so its work yields to prod, and its failures never reach a prod response.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import time
from pathlib import Path
from typing import Any

from tuneledger.serve import log


def token_agreement(tokenizer, a: str, b: str) -> float:
    """Share of positions where both outputs have the same token (1.0 when both are empty)."""
    left, right = tokenizer(a)["input_ids"], tokenizer(b)["input_ids"]
    longest = max(len(left), len(right))
    return 1.0 if longest == 0 else sum(x == y for x, y in zip(left, right, strict=False)) / longest


def _worker(name: str, stage: str, cache: str, db_path: str, jobs, ready) -> None:
    """The shadow process: load the candidate, then answer queued requests and log the pairs."""
    os.nice(19)
    import torch

    from tuneledger.progress import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(1)
    from tuneledger.serve.deployment import deploy

    try:
        shadow = deploy(name, stage, Path(cache))
    except Exception as exc:  # reported to the parent; prod keeps serving without a shadow
        ready.put({"error": str(exc).splitlines()[0]})
        return
    ready.put({"version": shadow.version, "content_id": shadow.content_id})
    db = log.connect(Path(db_path))
    parent = os.getppid()
    while True:
        try:
            job = jobs.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the server died without saying goodbye: do not linger
                return
            continue
        if job is None:
            return
        started, output, error = time.perf_counter(), None, None
        try:
            output = shadow.generate(job["prompt"], job["params"])
        except Exception as exc:  # a failing candidate is data for the report, not a crash
            error = f"{type(exc).__name__}: {exc}"
        latency = (time.perf_counter() - started) * 1000
        agree = output is not None and output.strip() == job["prod_output"].strip()
        tokens = (
            token_agreement(shadow.predictor.tokenizer, job["prod_output"], output)
            if output is not None
            else None
        )
        db.execute(
            "INSERT INTO shadow_pairs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                job["time"],
                job["request_hash"],
                job["prompt"],
                job["prod_output"],
                output,
                int(agree),
                tokens,
                job["prod_latency_ms"],
                latency if error is None else None,
                job["prod_version"],
                job["prod_content_id"],
                shadow.version,
                shadow.content_id,
                error,
            ],
        )
        db.commit()


class ShadowRunner:
    """The parent's handle on the shadow process: a non-blocking submit, drop counting, restart."""

    def __init__(
        self, name: str, stage: str, cache: Path, db_path: Path, writer: log.LogWriter, queue_size: int = 64
    ):
        self.name, self.stage, self.cache, self.db_path, self.writer = name, stage, cache, db_path, writer
        self.queue_size = queue_size
        self.context = multiprocessing.get_context("spawn")  # never fork a process holding torch threads
        self.version: str | None = None
        self.content_id: str | None = None
        self.error: str | None = None
        self.dropped = 0
        self._start()

    def _start(self) -> None:
        self.jobs = self.context.Queue(maxsize=self.queue_size)
        ready = self.context.Queue()
        self.process = self.context.Process(
            target=_worker,
            args=(self.name, self.stage, str(self.cache), str(self.db_path), self.jobs, ready),
            name="tuneledger-shadow",
            daemon=True,
        )
        self.process.start()
        state = ready.get(timeout=600)
        self.version, self.content_id, self.error = (
            state.get("version"),
            state.get("content_id"),
            state.get("error"),
        )

    def submit(self, job: dict[str, Any]) -> bool:
        """Queue a pair for the shadow; never waits. False (and a counted drop) when full or down."""
        if self.error is None and self.process.is_alive():
            try:
                self.jobs.put_nowait(job)
                return True
            except queue.Full:
                pass
        self.dropped += 1
        self.writer.insert(
            "shadow_drops", time=job["time"], request_hash=job["request_hash"], shadow_version=self.version
        )
        return False

    def describe(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "version": self.version,
            "content_id": self.content_id,
            "error": self.error,
            "alive": self.process.is_alive(),
            "queued": self._queued(),
            "dropped": self.dropped,
        }

    def _queued(self) -> int | None:
        try:
            return self.jobs.qsize()
        except NotImplementedError:  # macOS has no sem_getvalue
            return None

    def restart(self) -> None:
        self.stop()
        self._start()

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(queue.Full):
                self.jobs.put_nowait(None)
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.terminate()
