"""Shadow traffic: the candidate answers the same requests in a separate, low-priority process.

Prod hands each finished request to a bounded queue and returns at once; when the queue is full,
or the shadow is not running, the request is dropped and counted. The shadow process runs at the
lowest CPU priority with one thread, so its work yields to prod, and its failures never reach a
prod response. A supervisor thread starts it, and restarts it with exponential backoff when it
fails to start or dies; nothing on the request path ever waits for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

from tuneledger.serve import log

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 600.0
FIRST_BACKOFF_S = 5.0
MAX_BACKOFF_S = 600.0
STABLE_AFTER_S = 60.0  # a shadow that ran this long before dying starts its backoff afresh


def token_agreement(tokenizer, a: str, b: str) -> float:
    """Share of positions where both outputs have the same token (1.0 when both are empty)."""
    left, right = tokenizer(a)["input_ids"], tokenizer(b)["input_ids"]
    longest = max(len(left), len(right))
    return 1.0 if longest == 0 else sum(x == y for x, y in zip(left, right, strict=False)) / longest


def request_text(job: dict[str, Any]) -> str:
    """What the log keeps (or hashes) of a request: the prompt, or the conversation as JSON."""
    if job.get("messages") is not None:
        return json.dumps(job["messages"], ensure_ascii=False)
    return job["prompt"]


def _answer(shadow, job: dict[str, Any], log_prompts: bool) -> dict[str, Any]:
    """The candidate's answer to one mirrored request, as a shadow_pairs row."""
    predictor = shadow.predictor
    started, output, error = time.perf_counter(), None, None
    try:
        if job.get("messages") is not None:
            query = predictor.chat_query(job["messages"], job["params"], tuple(job["stop"]))
        else:
            query = predictor.query(job["prompt"], job["params"], tuple(job["stop"]))
        output = predictor.complete(query).text
    except Exception as exc:  # a failing candidate is data for the report, not a crash
        error = log.short_error(exc)
    latency = (time.perf_counter() - started) * 1000
    return {
        "time": job["time"],
        "request_hash": job["request_hash"],
        **log.text_fields("prompt", request_text(job), log_prompts),
        **log.text_fields("prod_output", job["prod_output"], log_prompts),
        **log.text_fields("shadow_output", output, log_prompts),
        "exact_agreement": int(output is not None and output.strip() == job["prod_output"].strip()),
        "token_agreement": (
            token_agreement(predictor.tokenizer, job["prod_output"], output) if output is not None else None
        ),
        "prod_latency_ms": job["prod_latency_ms"],
        "shadow_latency_ms": latency if error is None else None,
        "prod_version": job["prod_version"],
        "prod_content_id": job["prod_content_id"],
        "shadow_version": shadow.version,
        "shadow_content_id": shadow.content_id,
        "error": error,
    }


def _worker(name: str, stage: str, cache: str, log_prompts: bool, jobs, results, ready) -> None:
    """The shadow process: load the candidate, then answer queued requests and send back pairs."""
    os.nice(19)
    import torch

    from tuneledger.core.progress import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(1)
    from tuneledger.serve.deployment import DeployFailed, deploy

    try:
        shadow = deploy(name, stage, Path(cache))
    except DeployFailed as exc:  # reported to the parent; prod keeps serving without a shadow
        ready.put({"reason": exc.reason, "detail": log.short_error(exc)})
        return
    ready.put({"version": shadow.version, "content_id": shadow.content_id})
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
        results.put(_answer(shadow, job, log_prompts))


class ShadowRunner:
    """The parent's handle on the shadow process: a non-blocking submit, drop counting, and a
    supervisor that (re)starts the process with backoff."""

    def __init__(
        self,
        name: str,
        stage: str,
        cache: Path,
        writer: log.LogWriter,
        queue_size: int = 64,
        log_prompts: bool = False,
        record_event=None,
    ):
        self.name, self.stage, self.cache, self.writer = name, stage, cache, writer
        self.queue_size, self.log_prompts = queue_size, log_prompts
        self.record_event = record_event or (lambda *args, **kwargs: None)
        self.context = multiprocessing.get_context("spawn")  # never fork a process holding torch threads
        self.version: str | None = None
        self.content_id: str | None = None
        self.target: str | None = None  # the stage's version when the last start was attempted
        self.state, self.reason = "starting", None
        self.dropped, self.attempts = 0, 0
        self.next_attempt: float | None = None
        self.process = None
        self.jobs = self.results = None
        self._restart, self._stopping = threading.Event(), threading.Event()
        self._first_attempt = threading.Event()
        threading.Thread(target=self._supervise, name="shadow-supervisor", daemon=True).start()
        threading.Thread(target=self._collect, name="shadow-results", daemon=True).start()
        self._first_attempt.wait(START_TIMEOUT_S)

    # --- the request path: never blocks -------------------------------------------------------
    def submit(self, job: dict[str, Any]) -> bool:
        """Queue a request for the shadow. False (and a counted drop) when it is full or down."""
        if self.state == "ready" and self.process is not None and self.process.is_alive():
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
            "state": self.state,
            "stage_version": self.target,  # what the stage held when the shadow last (re)started
            "error": self.reason,  # short; the details are in the server's log
            "alive": bool(self.process and self.process.is_alive()),
            "pid": self.process.pid if self.process else None,
            "queued": self._queued(),
            "queue_size": self.queue_size,
            "dropped": self.dropped,
            "attempts": self.attempts,
            "next_attempt_in_s": (
                round(max(0.0, self.next_attempt - time.monotonic()), 1) if self.next_attempt else None
            ),
        }

    def _queued(self) -> int | None:
        if self.jobs is None:
            return 0
        try:
            return self.jobs.qsize()
        except NotImplementedError:  # macOS has no sem_getvalue
            return None

    # --- control ---------------------------------------------------------------------------------
    def restart(self) -> None:
        """Start afresh (the stage moved): at once, whatever the backoff. Returns immediately."""
        self._restart.set()

    def stop(self) -> None:
        self._stopping.set()
        self._restart.set()
        self._terminate()

    def _terminate(self) -> None:
        process, jobs = self.process, self.jobs
        if process is None or not process.is_alive():
            return
        with contextlib.suppress(queue.Full, ValueError, OSError):
            jobs.put_nowait(None)
        process.join(timeout=5)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)

    def _supervise(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._restart.clear()
            started = time.monotonic()
            if self._launch():
                self._watch()
                if self._stopping.is_set():
                    return
                if self._restart.is_set():
                    self._terminate()
                    failures = 0
                    continue
                self._failed("the shadow process exited", f"exit code {self.process.exitcode}", event="exit")
                failures = 0 if time.monotonic() - started > STABLE_AFTER_S else failures
            self._first_attempt.set()
            failures += 1
            delay = min(FIRST_BACKOFF_S * 2 ** (failures - 1), MAX_BACKOFF_S)
            self.next_attempt = time.monotonic() + delay
            self._restart.wait(delay)  # a reload to a new version retries at once
            self.next_attempt = None

    def _launch(self) -> bool:
        """Start a shadow process and wait until it has loaded its version (or failed to)."""
        from tuneledger.serve.deployment import current_version

        self.state, self.attempts = "starting", self.attempts + 1
        try:
            self.target = current_version(self.name, self.stage)
        except Exception as exc:  # the registry is unreadable now; the backoff tries again
            self._failed(f"resolving stage {self.stage} failed", log.short_error(exc))
            return False
        self.jobs = self.context.Queue(maxsize=self.queue_size)  # fresh queues: a killed process
        self.results = self.context.Queue()  # may have died holding the old ones' locks
        ready = self.context.Queue()
        self.process = self.context.Process(
            target=_worker,
            args=(self.name, self.stage, str(self.cache), self.log_prompts, self.jobs, self.results, ready),
            name="tuneledger-shadow",
            daemon=True,
        )
        self.process.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and not self._stopping.is_set():
            try:
                state = ready.get(timeout=1.0)
                break
            except queue.Empty:
                if not self.process.is_alive():
                    state = {"reason": "the shadow process exited while loading", "detail": ""}
                    break
        else:
            state = {"reason": "the shadow did not load in time", "detail": f"{START_TIMEOUT_S:.0f} s"}
            self._terminate()
        if "reason" in state:
            self._failed(state["reason"], state["detail"])
            return False
        self.version, self.content_id = state["version"], state["content_id"]
        self.state, self.reason = "ready", None
        self.record_event("start", "shadow", self.stage, self.version, self.content_id)
        self._first_attempt.set()
        return True

    def _watch(self) -> None:
        while self.process.is_alive() and not self._restart.is_set():
            self._restart.wait(1.0)

    def _failed(self, reason: str, detail: str, event: str = "error") -> None:
        self.state, self.reason = "failed", reason
        logger.warning(f"shadow {self.stage}: {reason}: {detail}")
        self.record_event(event, "shadow", self.stage, self.target, None, error=f"{reason}: {detail}")

    def _collect(self) -> None:
        """Move the shadow's pairs into the serving log (one writer for the whole server)."""
        while not self._stopping.is_set():
            results = self.results
            if results is None:
                time.sleep(0.2)
                continue
            try:
                row = results.get(timeout=0.5)
            except queue.Empty:
                continue
            except Exception:  # a process killed mid-write leaves a broken queue; its successor has a new one
                time.sleep(0.5)
                continue
            self.writer.insert("shadow_pairs", **row)
