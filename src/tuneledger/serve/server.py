"""The serving core, below HTTP: the registry's versions resident on one base, the name each request
gives resolved to one of them, batches on the model's thread, following the registry's stages,
the canary split, the shadow, and every request bounded (a bounded queue, a deadline,
cancellation when the client leaves)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from tuneledger.core import git
from tuneledger.core.faults import FAULT_VARIABLE
from tuneledger.inference.generation import Decoded, Interrupt, Interrupted
from tuneledger.inference.predict import Completion, Query, completion_of
from tuneledger.package.loader import ForeignBase
from tuneledger.registry import tags
from tuneledger.serve import log, routing
from tuneledger.serve.batcher import Batcher, Job
from tuneledger.serve.config import ServeConfig
from tuneledger.serve.deployment import DeployFailed
from tuneledger.serve.errors import RequestRefused, from_validation
from tuneledger.serve.guards import SECOND_LOOK
from tuneledger.serve.metrics import ServerMetrics
from tuneledger.serve.request_log import note
from tuneledger.serve.residents import Resident, ResidentVersions
from tuneledger.serve.shadow import ShadowRunner

logger = logging.getLogger(__name__)

TAGS_POLL_S = 0.2  # how often the tag refs are looked at (a few stat calls)
SESSION_HEADER = "x-tuneledger-session"  # keeps a client in one canary arm when it sends no `user`


@dataclass
class Call:
    """One request on its way through: what it asked, and which version answers it."""

    request: Request
    resident: Resident
    request_hash: str
    stage: str | None  # the stage the requested name resolved through (None: a pinned version)
    arm: str | None = None  # stable or canary, when the followed name was split
    started: float = field(default_factory=time.perf_counter)
    params: dict[str, Any] = field(default_factory=dict)  # generation params as the client gave them
    query: Query | None = None


class ModelQueue:
    """Admission in front of the model: a batch of `max_batch` generates while at most `depth` wait;
    more are refused at once (503 with Retry-After) rather than piling up behind the model.

    Only the event loop touches it (admission in handlers, release in callbacks scheduled on it).
    """

    def __init__(self, depth: int, max_batch: int):
        self.capacity, self.max_batch = depth + max_batch, max_batch
        self.admitted = self.refused = 0
        self.seconds_each = 1.0  # moving average of a request's time on the model, for Retry-After

    def admit(self) -> None:
        if self.admitted >= self.capacity:
            self.refused += 1
            raise RequestRefused(
                503,
                f"the model is busy ({self.admitted} requests admitted, {self.capacity - self.max_batch} may "
                "wait beyond a batch); retry later",
                headers={"Retry-After": str(self.retry_after())},
            )
        self.admitted += 1

    def release(self, seconds: float | None) -> None:
        self.admitted -= 1
        if seconds is not None:
            self.seconds_each = 0.8 * self.seconds_each + 0.2 * seconds

    def retry_after(self) -> int:
        return max(1, min(600, math.ceil(self.admitted / self.max_batch * self.seconds_each)))

    def describe(self) -> dict[str, Any]:
        return {"admitted": self.admitted, "capacity": self.capacity, "refused": self.refused}


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, or 413 as soon as it exceeds `limit` bytes (the declared length is
    checked first), or 408 when it has not fully arrived within `timeout` seconds."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestRefused(413, f"request body larger than {limit} bytes")

    async def receive_all() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestRefused(413, f"request body larger than {limit} bytes")
        return bytes(body)

    reading = asyncio.ensure_future(receive_all())
    try:
        for wait in (timeout, SECOND_LOOK):  # see SECOND_LOOK
            done, _ = await asyncio.wait({reading}, timeout=wait)
            if done:
                return reading.result()
    finally:
        reading.cancel()  # the client left, or the time is up (a no-op once it is done)
    raise RequestRefused(
        408, f"request body not received within {timeout:g} s", headers={"Connection": "close"}
    )


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


END_OF_TEXT = None  # put on a stream's queue after its last text, once its outcome is set


class TextStream:
    """A generation whose text arrives as the model produces it (stop strings already held back)."""

    def __init__(self, texts: asyncio.Queue, future: asyncio.Future, interrupt: Interrupt, timeout: float):
        self.texts, self.future, self.interrupt, self.timeout = texts, future, interrupt, timeout
        self.pending: list[str | None] = []  # read while waiting for the first text
        self.text = ""
        self.completion: Completion | None = None

    async def _items(self) -> AsyncIterator[str | None]:
        for item in self.pending:
            yield item
        while True:
            yield await self.texts.get()

    async def deltas(self) -> AsyncIterator[str]:
        """The text as it comes; then `completion` is set. Raises RequestRefused if generation
        ends early (deadline) or fails; the client leaving cancels it."""
        try:
            async for text in self._items():
                if text is END_OF_TEXT:
                    break
                self.text += text
                yield text
            try:
                self.completion = self.future.result()
            except Interrupted as exc:
                raise _outcome(exc, self.timeout) from None
        finally:
            self.interrupt.cancel()  # no-op when finished; stops the row when the client left


class Server:
    """The resident versions, the followed stage (and canary), the batcher, the shadow and the log."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.name, self.stage = config.name, config.stage
        self.writer = log.LogWriter(config.db, config.log_queue, config.log_retention_days, config.log_max_mb)
        self.queue = ModelQueue(config.max_queue, config.max_batch)
        self.metrics = ServerMetrics(queue_depth=lambda: self.queue.admitted, resident=self.resident_versions)
        self.residents = ResidentVersions(
            config.name,
            config.cache,
            config.max_versions,
            on_model_thread=lambda work: self.batcher.call(work),
        )
        self.batcher = Batcher(
            self.residents,
            config.batch_window_ms / 1000,
            config.max_batch,
            self.metrics.batch_size.observe,
            kept=self._followed_content_ids,
        )
        if config.canary:
            tags.check_stage(config.canary[0])  # a stage .gto does not declare can never hold a version
        self.registry = routing.RegistryView(config.name)
        self._sync_lock = threading.Lock()
        self.last_reload: dict[str, Any] | None = None
        self.followed: Resident | None = None
        self.canary: Resident | None = None
        self._follow_first_holder()
        self.record_event("start", "prod", self.stage, self.followed.version, self.followed.content_id)
        if config.canary:
            self._follow_canary()
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
        self._stopping = threading.Event()
        if config.sync_seconds > 0:
            threading.Thread(target=self._follow_registry, name="registry-sync", daemon=True).start()
        _exempt_loaded_objects_from_gc()

    def _followed_content_ids(self) -> set[str]:
        followed = [getattr(self, "followed", None), getattr(self, "canary", None)]  # None while starting
        return {resident.content_id for resident in followed if resident is not None}

    def _follow_first_holder(self) -> None:
        step = f"resolving stage {self.stage}"
        try:
            self.registry.refresh()
            version, _ = self.registry.version_for(routing.Name("follow"), self.stage)
            with self._new_holder(version) as first:
                self.followed = first
        except DeployFailed:
            self.batcher.stop()
            raise
        except Exception as exc:
            self.batcher.stop()
            raise DeployFailed(f"{step} failed", exc) from exc

    def resident_versions(self) -> list[tuple[str, str, str | None, str | None]]:
        """(role, stage, version, content id) of each version loaded now."""
        holders = {version: stage for stage, version in self.registry.holders.items()}
        loaded = []
        for resident in self.residents.all():
            role = (
                "prod" if resident is self.followed else "canary" if resident is self.canary else "resident"
            )
            loaded.append((role, holders.get(resident.version, ""), resident.version, resident.content_id))
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

    # --- which version answers ---------------------------------------------------------------
    async def route(self, requested: str | None, key: str | None) -> tuple[Resident, str | None, str | None]:
        """(version that answers, pinned; stage the name resolved through; canary arm) for a
        requested name; 404 for a name that resolves to nothing (nothing is loaded for it)."""
        try:
            name = routing.parse(requested if requested is not None else self.name, self.name)
            if name.kind == "follow":
                return self._split(key)
            version, stage = await run_in_threadpool(self.registry.version_for, name, self.stage)
        except routing.UnknownName as exc:
            raise RequestRefused(
                404, str(exc), [{"loc": ["model"], "msg": "not served here", "type": "model_not_found"}]
            ) from None
        if (resident := self.residents.pinned(version)) is not None:
            return resident, stage, None
        return await self._load_on_demand(version), stage, None

    def _split(self, key: str | None) -> tuple[Resident, str | None, str | None]:
        followed, canary = self.followed, self.canary
        if not self.config.canary:
            chosen = (followed, self.stage, None)
        elif canary is not None and routing.in_canary(key, self.config.canary[1]):
            chosen = (canary, self.config.canary[0], routing.CANARY)
        else:
            chosen = (followed, self.stage, routing.STABLE)
        self.residents.pin(chosen[0])
        return chosen

    async def _load_on_demand(self, version: str) -> Resident:
        """Fetch, verify and load a version a request named (the request waits, within its deadline;
        other requests go on). A load the request stops waiting for still completes, unpinned."""
        try:
            resolved = await run_in_threadpool(self.registry.resolved, version)
            loading = asyncio.ensure_future(run_in_threadpool(self.residents.ensure, resolved))
            try:
                return await asyncio.wait_for(asyncio.shield(loading), timeout=self.config.request_timeout)
            except BaseException:
                loading.add_done_callback(self._unpin_loaded)
                raise
        except TimeoutError:
            raise RequestRefused(
                503, f"{self.name}@{version} is still loading; retry shortly", headers={"Retry-After": "5"}
            ) from None
        except DeployFailed as exc:
            logger.warning(f"{exc}")
            if isinstance(exc.__cause__, ForeignBase):
                raise RequestRefused(409, f"{self.name}@{version}: {exc.__cause__}") from None
            raise RequestRefused(503, f"{self.name}@{version}: {exc.reason}; see the server log") from None

    def _unpin_loaded(self, loading: asyncio.Future) -> None:
        if not loading.cancelled() and loading.exception() is None:
            self.residents.unpin(loading.result())

    # --- a request's life: accepted, answered, mirrored, logged ---------------------------------
    @contextlib.asynccontextmanager
    async def call(self, request: Request, model: type[BaseModel], requested=lambda parsed: parsed.model):
        """Read the body (bounded in size and time), validate it against `model` (422 naming the
        field), resolve the version it names and hold that version resident until the request
        ends (a swap or an eviction meanwhile never touches it)."""
        body = await read_body(request, self.config.max_body, self.config.body_timeout)
        request_hash = hashlib.sha256(body).hexdigest()
        note(request.scope, request_hash=request_hash)
        try:
            parsed = model.model_validate_json(body)
        except ValidationError as exc:
            raise from_validation(exc) from None
        key = getattr(parsed, "user", None) or request.headers.get(SESSION_HEADER)
        resident, stage, arm = await self.route(requested(parsed), key)
        try:
            note(request.scope, version=resident.version, content_id=resident.content_id, arm=arm)
            yield parsed, Call(request, resident, request_hash, stage, arm)
        finally:
            self.residents.unpin(resident)

    def _start(self, call: Call, interrupt: Interrupt, texts: asyncio.Queue | None = None) -> asyncio.Future:
        """Admit a request (or refuse it: 503) and queue its row for the model's next batch."""
        _injected_failure(call.query)
        self.queue.admit()
        loop, future = asyncio.get_running_loop(), None
        future = loop.create_future()
        started = time.perf_counter()

        def settle(outcome: Decoded | BaseException) -> None:  # on the event loop
            self.queue.release(time.perf_counter() - started)
            if not future.done():
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    try:
                        future.set_result(completion_of(call.query, outcome))
                    except Interrupted as exc:
                        future.set_exception(exc)
            if texts is not None:
                texts.put_nowait(END_OF_TEXT)

        def from_model_thread(callback, *args) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the server is stopping
                loop.call_soon_threadsafe(callback, *args)

        row = call.resident.predictor.row(
            call.query,
            interrupt,
            on_text=(lambda text: from_model_thread(texts.put_nowait, text)) if texts is not None else None,
            on_end=lambda decoded: from_model_thread(settle, decoded),
        )
        self.batcher.submit(Job(row, call.resident, on_failed=lambda exc: from_model_thread(settle, exc)))
        return future

    def _interrupt(self) -> Interrupt:
        return Interrupt(time.monotonic() + self.config.request_timeout)

    async def _wait(self, awaitable, interrupt: Interrupt, request: Request):
        """The awaitable's result, unless the deadline passes or the client leaves first; either
        way the row stops at its next token."""
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

    async def complete(self, call: Call) -> Completion:
        interrupt = self._interrupt()
        return await self._wait(self._start(call, interrupt), interrupt, call.request)

    async def stream(self, call: Call) -> TextStream:
        """Start a streamed generation; returns once its first text (or its end) is there, so a
        request that times out in the queue still gets a plain 504 rather than a broken stream."""
        interrupt, texts = self._interrupt(), asyncio.Queue()
        future = self._start(call, interrupt, texts)
        stream = TextStream(texts, future, interrupt, self.config.request_timeout)
        first = await self._wait(texts.get(), interrupt, call.request)
        if first is END_OF_TEXT and future.done() and future.exception() is not None:
            exc = future.exception()
            raise _outcome(exc, self.config.request_timeout) if isinstance(exc, Interrupted) else exc
        stream.pending.append(first)
        return stream

    def finished(self, call: Call, completion: Completion) -> None:
        """Note the answer for the log and hand the request to the shadow (never waits)."""
        latency_ms = (time.perf_counter() - call.started) * 1000
        note(
            call.request.scope,
            output=completion.text,
            finish_reason=completion.finish_reason,
            completion_tokens=completion.completion_tokens,
        )
        if self.shadow is None or call.resident is not self.followed or call.arm == routing.CANARY:
            return  # the shadow mirrors what the followed stage answered
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
                "prod_version": call.resident.version,
                "prod_content_id": call.resident.content_id,
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

    # --- state ---------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Answered from memory only: never waits for the model, the log or the registry."""
        writer = self.writer.health()
        return {
            "status": "ok" if writer["healthy"] else "degraded",
            "version": self.followed.version,
            "content_id": self.followed.content_id,
            "canary": self.canary.version if self.canary else None,
            "resident": len(self.residents.all()),
            "queue": self.queue.describe(),
            "log": writer,
        }

    def describe(self) -> dict[str, Any]:
        return {
            **self.followed.describe(),
            "stage": self.stage,
            "model": self.followed.model_id,
            "canary": (
                {"stage": self.config.canary[0], "percent": self.config.canary[1], **self.canary.describe()}
                if self.canary
                else None
            ),
            "resident": [
                {"role": role, "stage": stage, "version": version, "content_id": content_id}
                for role, stage, version, content_id in self.resident_versions()
                if role != "shadow"
            ],
            "max_versions": self.config.max_versions,
            "batches": self.batcher.batches,
            "joined": self.batcher.joined,
            "loads": self.residents.loads,
            "evictions": self.residents.evictions,
            "queue": self.queue.describe(),
            "last_reload": self.last_reload,
            "shadow": self.shadow.describe() if self.shadow else None,
        }

    def models(self) -> list[tuple[str, Resident | None, str, str | None]]:
        """(name, resident or None, version, stage) for /v1/models: the followed name, every held
        stage and every resident version."""
        listed = [(self.name, self.followed, self.followed.version, self.stage)]
        for stage, version in sorted(self.registry.holders.items()):
            listed.append((f"{self.name}@{stage}", self.residents.get(version), version, stage))
        for resident in sorted(self.residents.all(), key=lambda r: r.version):
            listed.append((resident.model_id, resident, resident.version, None))
        return listed

    # --- following the registry ----------------------------------------------------------------
    def reload(self) -> dict[str, Any]:
        """Re-read the registry now; load what the followed stage (and canary) hold if they moved.

        Downloads happen outside anything requests wait for; a second reload while one runs is
        refused (409) rather than queued behind a download.
        """
        if not self._sync_lock.acquire(blocking=False):
            raise RequestRefused(409, "a reload is already running; retry when it has finished")
        try:
            return self._sync()
        except DeployFailed as exc:
            self.last_reload = {"time": log.now(), "ok": False, "reason": exc.reason}
            logger.error(f"reload failed, still serving {self.followed.version}: {exc}")
            self.record_event("error", "prod", self.stage, None, None, error=log.short_error(exc))
            raise RequestRefused(
                500,
                f"reload failed ({exc.reason}); still serving {self.followed.version}; see the server log",
            ) from None
        finally:
            self._sync_lock.release()

    def _sync(self) -> dict[str, Any]:
        try:
            self.registry.refresh()
        except Exception as exc:
            raise DeployFailed("reading the registry failed", exc) from exc
        holder = self.registry.holders.get(self.stage)
        changed = holder is not None and holder != self.followed.version
        if changed:
            with self._new_holder(holder) as new:
                old, self.followed = self.followed, new  # one reference assignment: atomic for readers
            self.record_event("swap", "prod", self.stage, new.version, new.content_id)
            logger.info(f"{self.stage} {old.version} → {new.version}")
        if self.config.canary:
            self._follow_canary()
        if self.shadow and self.registry.holders.get(self.shadow.stage) != self.shadow.target:
            self.shadow.restart()  # asynchronous; /version shows its progress
        self.last_reload = {"time": log.now(), "ok": True, "changed": changed}
        return {"changed": changed, **self.followed.describe()}

    @contextlib.contextmanager
    def _new_holder(self, version: str) -> Iterator[Resident]:
        """A stage's new holder, loaded and pinned while the caller makes it followed (and so
        kept): no eviction can take it in between."""
        try:
            resident = self.residents.ensure(self.registry.resolved(version))
        except DeployFailed:
            raise
        except Exception as exc:
            raise DeployFailed(f"resolving {version} failed", exc) from exc
        try:
            yield resident
        finally:
            self.residents.unpin(resident)

    def _follow_canary(self) -> None:
        stage = self.config.canary[0]
        holder = self.registry.holders.get(stage)
        current = self.canary.version if self.canary else None
        if holder == current:
            return
        if holder is None:
            self.canary = None
            return
        with self._new_holder(holder) as new:
            self.canary = new
        self.record_event("swap", "canary", stage, new.version, new.content_id)

    def _follow_registry(self) -> None:
        """A stage moved by promote or rollback (here, or pushed from another clone) is live without
        a restart: the registry is re-read as soon as git's tag refs change (a stat, TAGS_POLL_S
        apart) and at the latest every --sync-seconds. A failed sync keeps serving; the next retries."""
        git_dir = git.common_dir()
        seen, synced = git.tag_refs_state(git_dir), time.monotonic()
        while not self._stopping.wait(min(TAGS_POLL_S, self.config.sync_seconds)):
            now = git.tag_refs_state(git_dir)
            if now == seen and time.monotonic() - synced < self.config.sync_seconds:
                continue
            if not self._sync_lock.acquire(blocking=False):
                continue  # a reload is running; it does the same work
            seen, synced = now, time.monotonic()
            try:
                self._sync()
            except Exception as exc:
                self.last_reload = {"time": log.now(), "ok": False, "reason": log.short_error(exc)}
                logger.warning(f"following the registry failed, still serving {self.followed.version}: {exc}")
            finally:
                self._sync_lock.release()

    def reload_in_background(self, *_: Any) -> None:
        threading.Thread(target=self._reload_logged, name="serve-reload", daemon=True).start()

    def _reload_logged(self) -> None:
        try:
            self.reload()
        except RequestRefused as exc:  # a failed reload is already in the server's log
            if exc.status == 409:
                logger.info(f"{exc.message}")

    def close(self) -> None:
        self._stopping.set()
        self.batcher.stop()
        if self.shadow:
            self.shadow.stop()
        self.writer.close()
