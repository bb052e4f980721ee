"""The serving core, below HTTP: the live deployment, hot swaps, the shadow, and running requests
on the model within bounds (a bounded queue, a deadline, cancellation when the client leaves)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import hashlib
import math
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from tuneledger.faults import FAULT_VARIABLE
from tuneledger.predict import Completion, Interrupt, Interrupted, Query, StopScanner
from tuneledger.progress import say
from tuneledger.serve import log
from tuneledger.serve.config import ServeConfig
from tuneledger.serve.deployment import DeployFailed, Deployment, current_version, deploy
from tuneledger.serve.errors import RequestRefused, from_validation, note
from tuneledger.serve.guards import read_body
from tuneledger.serve.metrics import ServerMetrics
from tuneledger.serve.shadow import ShadowRunner


@dataclass
class Call:
    """One request on its way through: what it asked, and which deployment answers it."""

    request: Request
    deployment: Deployment
    request_hash: str
    started: float = field(default_factory=time.perf_counter)
    params: dict[str, Any] = field(default_factory=dict)  # generation params as the client gave them
    query: Query | None = None


class ModelQueue:
    """Admission in front of the models: one request generates while at most `depth` wait; more
    are refused at once (503 with Retry-After) rather than piling up behind the model.

    Only the event loop touches it (admission in handlers, release in future callbacks).
    """

    def __init__(self, depth: int):
        self.capacity = depth + 1
        self.admitted = self.refused = 0
        self.seconds_each = 1.0  # moving average of generation time, for Retry-After

    def admit(self) -> None:
        if self.admitted >= self.capacity:
            self.refused += 1
            raise RequestRefused(
                503,
                f"the model is busy ({self.admitted} requests admitted, {self.capacity - 1} may wait); "
                "retry later",
                headers={"Retry-After": str(self.retry_after())},
            )
        self.admitted += 1

    def release(self, seconds: float | None) -> None:
        self.admitted -= 1
        if seconds is not None:
            self.seconds_each = 0.8 * self.seconds_each + 0.2 * seconds

    def retry_after(self) -> int:
        return max(1, min(600, math.ceil(self.admitted * self.seconds_each)))

    def describe(self) -> dict[str, Any]:
        return {"admitted": self.admitted, "capacity": self.capacity, "refused": self.refused}


def _exempt_loaded_objects_from_gc() -> None:
    """A loaded model is many long-lived Python objects. Moving them out of the cyclic garbage
    collector's reach keeps its full passes, which stop the event loop, short under request churn
    (measured: /health max under load 480 ms without, 140 ms with)."""
    gc.freeze()


def _injected_failure(query: Query) -> None:
    """Test-only: TUNELEDGER_FAULT=serve.generate:<prompt> makes generating that prompt raise, so
    tests can reach the 500 path of a real server."""
    if os.environ.get(FAULT_VARIABLE) == f"serve.generate:{query.prompt}":
        raise RuntimeError("injected failure")


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _outcome(exc: Interrupted, timeout: float) -> RequestRefused:
    if exc.reason == "deadline":
        return RequestRefused(504, f"no answer within the request deadline of {timeout:g} s")
    return RequestRefused(499, "the client closed the request")


class TextStream:
    """A generation whose text arrives as the model produces it (stop strings held back)."""

    def __init__(self, streamer, future: asyncio.Future, interrupt: Interrupt, query: Query, timeout: float):
        self.streamer, self.future, self.interrupt, self.timeout = streamer, future, interrupt, timeout
        self.scanner = StopScanner(query.stop)
        self.pending: list[str] = []  # text read while waiting for the first chunk
        self.text = ""
        self.completion: Completion | None = None

    async def deltas(self) -> AsyncIterator[str]:
        """The text as it comes; then `completion` is set. Raises RequestRefused if generation
        ends early (deadline) or fails; the client leaving cancels it."""
        try:
            for chunk in self.pending:
                if out := self.scanner.feed(chunk):
                    self.text += out
                    yield out
            async for chunk in self.streamer:
                if out := self.scanner.feed(chunk):
                    self.text += out
                    yield out
            if out := self.scanner.flush():
                self.text += out
                yield out
            try:
                completion, _ = await self.future
            except Interrupted as exc:
                raise _outcome(exc, self.timeout) from None
            self.completion = Completion(
                self.text, completion.prompt_tokens, completion.completion_tokens, completion.finish_reason
            )
        finally:
            self.interrupt.cancel()  # no-op when finished; stops the model when the client left


class Server:
    """The live prod deployment, an optional shadow, the request queue and the serving log."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.name, self.stage = config.name, config.stage
        self.writer = log.LogWriter(config.db, config.log_queue, config.log_retention_days, config.log_max_mb)
        self.queue = ModelQueue(config.max_queue)
        self.metrics = ServerMetrics(queue_depth=lambda: self.queue.admitted, resident=self.resident_versions)
        self._reload_lock = threading.Lock()
        self.last_reload: dict[str, Any] | None = None
        self.current: Deployment = deploy(config.name, config.stage, config.cache)
        self.record_event("start", "prod", self.current.stage, self.current.version, self.current.content_id)
        self.shadow = (
            ShadowRunner(
                config.name,
                config.shadow,
                config.cache,
                self.writer,
                config.shadow_queue,
                config.log_prompts,
                record_event=self.record_event,
            )
            if config.shadow
            else None
        )
        _exempt_loaded_objects_from_gc()

    def resident_versions(self) -> list[tuple[str, str, str | None, str | None]]:
        """(role, stage, version, content id) of each version loaded now."""
        loaded = [("prod", self.current.stage, self.current.version, self.current.content_id)]
        if self.shadow is not None:
            loaded.append(("shadow", self.shadow.stage, self.shadow.version, self.shadow.content_id))
        return loaded

    def record_event(
        self, event: str, role: str, stage: str, version: str | None, content_id: str | None, error=None
    ) -> None:
        self.writer.insert(
            "events",
            time=log.now(),
            event=event,
            role=role,
            name=self.name,
            stage=stage,
            version=version,
            content_id=content_id,
            error=error,
        )

    # --- running requests on the model ---------------------------------------------------------
    def _start(self, deployment: Deployment, query: Query, interrupt: Interrupt, streamer=None):
        """Admit a request (or refuse it: 503) and queue it on its model's thread."""
        self.queue.admit()
        loop = asyncio.get_running_loop()
        job = deployment.executor.submit(self._generate, deployment, query, interrupt, streamer)
        self.metrics.batch_size.observe(1)  # the model answers one request per call

        def release(done: concurrent.futures.Future) -> None:
            # When the model is really free (not when the client is answered), on the event loop.
            ok = not done.cancelled() and done.exception() is None
            with contextlib.suppress(RuntimeError):  # the loop has closed: the server is stopping
                loop.call_soon_threadsafe(self.queue.release, done.result()[1] if ok else None)

        job.add_done_callback(release)
        return asyncio.wrap_future(job, loop=loop)

    @staticmethod
    def _generate(deployment: Deployment, query: Query, interrupt: Interrupt, streamer):
        if interrupt.reason() is not None:  # expired or abandoned while it waited: skip it
            if streamer is not None:
                streamer.end()
            raise Interrupted(interrupt.reason())
        _injected_failure(query)
        started = time.perf_counter()
        completion = deployment.predictor.complete(query, interrupt, streamer)
        return completion, time.perf_counter() - started

    def _interrupt(self) -> Interrupt:
        return Interrupt(time.monotonic() + self.config.request_timeout)

    async def _wait(self, awaitable, interrupt: Interrupt, request: Request):
        """The awaitable's result, unless the deadline passes or the client leaves first; either
        way the model stops at its next token."""
        work = asyncio.ensure_future(awaitable)
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            done, _ = await asyncio.wait(
                {work, gone}, timeout=interrupt.remaining(), return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            interrupt.cancel()
            raise
        finally:
            gone.cancel()
        if work in done:
            try:
                return work.result()
            except Interrupted as exc:
                raise _outcome(exc, self.config.request_timeout) from None
        interrupt.cancel()
        work.cancel()
        raise _outcome(Interrupted("cancelled" if gone in done else "deadline"), self.config.request_timeout)

    async def complete(self, deployment: Deployment, query: Query, request: Request) -> Completion:
        interrupt = self._interrupt()
        completion, _ = await self._wait(self._start(deployment, query, interrupt), interrupt, request)
        return completion

    async def stream(self, deployment: Deployment, query: Query, request: Request) -> TextStream:
        """Start a streamed generation; returns once its first text (or its end) is there, so a
        request that times out in the queue still gets a plain 504 rather than a broken stream."""
        from transformers import AsyncTextIteratorStreamer

        interrupt = self._interrupt()
        streamer = AsyncTextIteratorStreamer(
            deployment.predictor.tokenizer, skip_prompt=True, skip_special_tokens=True
        )
        future = self._start(deployment, query, interrupt, streamer)
        stream = TextStream(streamer, future, interrupt, query, self.config.request_timeout)
        with contextlib.suppress(StopAsyncIteration):  # no text at all: the stream's end says why
            stream.pending.append(await self._wait(anext(streamer), interrupt, request))
        return stream

    # --- a request's life: accepted, answered, mirrored, logged ---------------------------------
    async def accept(self, request: Request, model: type[BaseModel]) -> tuple[Any, Call]:
        """Read the body (bounded in size and time), pin the deployment that will answer, and
        validate the body against `model` (422 naming the field)."""
        body = await read_body(request, self.config.max_body, self.config.body_timeout)
        deployment = self.current  # held for the whole request: a swap meanwhile does not touch it
        call = Call(request, deployment, hashlib.sha256(body).hexdigest())
        note(
            request.scope,
            version=deployment.version,
            content_id=deployment.content_id,
            request_hash=call.request_hash,
        )
        try:
            return model.model_validate_json(body), call
        except ValidationError as exc:
            raise from_validation(exc) from None

    def finished(self, call: Call, completion: Completion) -> None:
        """Note the answer for the log and hand the request to the shadow (never waits)."""
        latency_ms = (time.perf_counter() - call.started) * 1000
        note(
            call.request.scope,
            output=completion.text,
            finish_reason=completion.finish_reason,
            completion_tokens=completion.completion_tokens,
        )
        if self.shadow is None:
            return
        query = call.query
        self.shadow.submit(
            {
                "time": log.now(),
                "request_hash": call.request_hash,
                "prompt": query.prompt if query.messages is None else None,
                "messages": query.messages,
                "params": call.params,  # as the client gave them: the candidate applies its own defaults
                "stop": list(query.stop),
                "prod_output": completion.text,
                "prod_latency_ms": latency_ms,
                "prod_version": call.deployment.version,
                "prod_content_id": call.deployment.content_id,
            }
        )

    def log_request(self, row: dict[str, Any], prompt_text: str | None, output: str | None) -> None:
        keep = self.config.log_prompts
        self.writer.insert(
            "requests",
            **log.clipped(row),
            **log.text_fields("prompt", prompt_text, keep),
            **log.text_fields("output", output, keep),
        )

    # --- state and swaps -------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Answered from memory only: never waits for the model, the log or the registry."""
        writer = self.writer.health()
        return {
            "status": "ok" if writer["healthy"] else "degraded",
            "version": self.current.version,
            "content_id": self.current.content_id,
            "queue": self.queue.describe(),
            "log": writer,
        }

    def describe(self) -> dict[str, Any]:
        return {
            **self.current.describe(),
            "model": self.current.model_id,
            "queue": self.queue.describe(),
            "last_reload": self.last_reload,
            "shadow": self.shadow.describe() if self.shadow else None,
        }

    def reload(self) -> dict[str, Any]:
        """Re-resolve the stage; if it moved, fetch, verify and load the new version, then swap.

        Downloads happen outside any lock that requests take; a second reload while one runs is
        refused (409) rather than queued behind a download.
        """
        if not self._reload_lock.acquire(blocking=False):
            raise RequestRefused(409, "a reload is already running; retry when it has finished")
        try:
            return self._reload()
        except DeployFailed as exc:
            self.last_reload = {"time": log.now(), "ok": False, "reason": exc.reason}
            say(f"serve: reload failed, still serving {self.current.version}: {exc}")
            self.record_event("error", "prod", self.stage, None, None, error=log.short_error(exc))
            raise RequestRefused(
                500, f"reload failed ({exc.reason}); still serving {self.current.version}; see the server log"
            ) from None
        finally:
            self._reload_lock.release()

    def _reload(self) -> dict[str, Any]:
        changed = current_version(self.name, self.stage) != self.current.version
        if changed:
            new = deploy(self.name, self.stage, self.config.cache)
            old, self.current = self.current, new  # one reference assignment: atomic for readers
            # The old model must become collectable once its last request ends; then freeze again.
            gc.unfreeze()
            weakref.finalize(old, _exempt_loaded_objects_from_gc)
            self.record_event("swap", "prod", self.stage, new.version, new.content_id)
            say(f"serve: {self.stage} {old.version} → {new.version}")
        if self.shadow and current_version(self.name, self.shadow.stage) != self.shadow.target:
            self.shadow.restart()  # asynchronous; /version shows its progress
        self.last_reload = {"time": log.now(), "ok": True, "changed": changed}
        return {"changed": changed, **self.current.describe()}

    def reload_in_background(self, *_: Any) -> None:
        threading.Thread(target=self._reload_logged, name="serve-reload", daemon=True).start()

    def _reload_logged(self) -> None:
        try:
            self.reload()
        except RequestRefused as exc:  # a failed reload is already in the server's log
            if exc.status == 409:
                say(f"serve: {exc.message}")

    def close(self) -> None:
        if self.shadow:
            self.shadow.stop()
        self.writer.close()
