"""The HTTP API: answers from the stage's version, proves provenance, hot-swaps on reload."""

from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from tuneledger.package.signature import SignatureViolation
from tuneledger.progress import say
from tuneledger.serve import log
from tuneledger.serve.deployment import DEFAULT_CACHE, Deployment, current_version, deploy
from tuneledger.serve.shadow import ShadowRunner

MAX_BODY_BYTES = 64 * 1024


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: str
    max_new_tokens: int | None = None
    temperature: float | None = None


class Server:
    """The live prod deployment, an optional shadow, and the serving log."""

    def __init__(
        self,
        name: str,
        stage: str,
        shadow_stage: str | None = None,
        cache: Path = DEFAULT_CACHE,
        db_path: Path = log.DEFAULT_DB,
        shadow_queue: int = 64,
    ):
        self.name, self.stage, self.shadow_stage, self.cache, self.db_path = (
            name,
            stage,
            shadow_stage,
            cache,
            db_path,
        )
        self.writer = log.LogWriter(db_path)
        self.swap_lock = threading.Lock()
        self.current: Deployment = deploy(name, stage, cache)
        self._record("start", "prod", self.current.stage, self.current.version, self.current.content_id)
        self.shadow = (
            ShadowRunner(name, shadow_stage, cache, db_path, self.writer, shadow_queue)
            if shadow_stage
            else None
        )
        if self.shadow:
            self._record("start", "shadow", shadow_stage, self.shadow.version, self.shadow.content_id)

    def _record(self, event: str, role: str, stage: str, version: str | None, content_id: str | None) -> None:
        self.writer.insert(
            "events",
            time=log.now(),
            event=event,
            role=role,
            name=self.name,
            stage=stage,
            version=version,
            content_id=content_id,
        )

    def generate(self, request: GenerateRequest, request_hash: str) -> dict[str, Any]:
        deployment = self.current  # held for the whole request: a swap meanwhile does not touch it
        params = {
            k: v
            for k, v in (("max_new_tokens", request.max_new_tokens), ("temperature", request.temperature))
            if v is not None
        }
        started = time.perf_counter()
        text = deployment.generate(request.prompt, params)
        latency = (time.perf_counter() - started) * 1000
        now = log.now()
        self.writer.insert(
            "requests",
            time=now,
            request_hash=request_hash,
            status=200,
            version=deployment.version,
            content_id=deployment.content_id,
            latency_ms=latency,
        )
        if self.shadow:
            self.shadow.submit(
                {
                    "time": now,
                    "request_hash": request_hash,
                    "prompt": request.prompt,
                    "params": params,
                    "prod_output": text,
                    "prod_latency_ms": latency,
                    "prod_version": deployment.version,
                    "prod_content_id": deployment.content_id,
                }
            )
        return {
            "text": text,
            "version": deployment.version,
            "content_id": deployment.content_id,
            "latency_ms": round(latency, 3),
        }

    def reload(self) -> dict[str, Any]:
        """Re-resolve the stage; if it moved, fetch, verify and load the new version, then swap."""
        with self.swap_lock:
            changed = current_version(self.name, self.stage) != self.current.version
            if changed:
                new = deploy(self.name, self.stage, self.cache)
                old, self.current = self.current, new  # one reference assignment: atomic for readers
                self._record("swap", "prod", self.stage, new.version, new.content_id)
                say(f"serve: {self.stage} {old.version} → {new.version}")
            if self.shadow and current_version(self.name, self.shadow_stage) != self.shadow.version:
                self.shadow.restart()
                self._record("swap", "shadow", self.shadow_stage, self.shadow.version, self.shadow.content_id)
            return {"changed": changed, **self.current.describe()}

    def reload_in_background(self, *_: Any) -> None:
        threading.Thread(target=self._reload_logged, name="serve-reload", daemon=True).start()

    def _reload_logged(self) -> None:
        try:
            self.reload()
        except Exception as exc:  # the old version keeps serving; the failure is reported, not fatal
            say(f"serve: reload failed, still serving {self.current.version}: {exc}")

    def close(self) -> None:
        if self.shadow:
            self.shadow.stop()
        self.writer.close()


def _unprocessable(field: str, message: str, kind: str) -> JSONResponse:
    return JSONResponse(
        status_code=422, content={"detail": [{"loc": ["body", field], "msg": message, "type": kind}]}
    )


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it exceeds `limit` (the declared length is checked first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def create_app(server: Server, max_body: int = MAX_BODY_BYTES) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        server.close()  # uvicorn re-raises SIGTERM after shutdown, so a `finally` would never run

    app = FastAPI(
        title="TuneLedger",
        description="Answers from the registry's version; every reply names it.",
        lifespan=lifespan,
    )

    @app.post("/generate")
    async def generate(request: Request):
        body = await _read_limited(request, max_body)
        if body is None:
            return JSONResponse(
                status_code=413, content={"detail": f"request body larger than {max_body} bytes"}
            )
        try:
            parsed = GenerateRequest.model_validate_json(body)
        except ValidationError as exc:
            errors = [
                {"loc": ["body", *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors(include_url=False)
            ]
            return JSONResponse(status_code=422, content={"detail": errors})
        request_hash = hashlib.sha256(body).hexdigest()
        try:
            return await run_in_threadpool(server.generate, parsed, request_hash)
        except SignatureViolation as exc:
            return _unprocessable(exc.field, exc.rule, "signature")

    @app.get("/health")
    def health():
        return {"status": "ok", "version": server.current.version, "content_id": server.current.content_id}

    @app.get("/version")
    def version():
        return {**server.current.describe(), "shadow": server.shadow.describe() if server.shadow else None}

    @app.post("/admin/reload")
    async def reload():
        return await run_in_threadpool(server.reload)

    return app


def serve(
    name: str,
    stage: str,
    shadow: str | None,
    host: str,
    port: int,
    db_path: Path,
    cache: Path,
    max_body: int = MAX_BODY_BYTES,
    shadow_queue: int = 64,
) -> None:
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        say(f"serve: binding {host}: /admin/reload has no authentication; put the server behind a proxy")
    server = Server(name, stage, shadow, cache, db_path, shadow_queue)
    signal.signal(signal.SIGHUP, server.reload_in_background)  # `kill -HUP` after a rollback
    shadow_note = f", shadow {shadow} {server.shadow.version}" if server.shadow else ""
    say(
        f"serving {name} {stage} {server.current.version} ({server.current.content_id[:12]}){shadow_note} "
        f"on http://{host}:{port}; log {db_path}"
    )
    uvicorn.run(create_app(server, max_body), host=host, port=port, log_level="warning", access_log=False)
