"""TuneLedger's own routes, beside the OpenAI-compatible ones in openai/: POST /generate (the
`version` field names what answers, as `model` does under /v1), GET /health (from memory, no key),
GET /metrics, GET /version and POST /admin/reload."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict
from starlette.responses import JSONResponse, Response

from tuneledger.package.signature import SignatureViolation
from tuneledger.serve.errors import from_signature
from tuneledger.serve.request_log import note
from tuneledger.serve.server import Server


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: str
    version: str | None = None  # NAME, NAME@STAGE, NAME@vX.Y.Z or a content-id prefix; None: NAME
    user: str | None = None  # keeps a client in one canary arm
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None


def native_router(server: Server) -> APIRouter:
    router = APIRouter()

    @router.post("/generate")
    async def generate(request: Request):
        async with server.call(request, GenerateRequest, requested=lambda parsed: parsed.version) as (
            parsed,
            call,
        ):
            note(request.scope, prompt=parsed.prompt)
            call.params = parsed.model_dump(
                include={"max_new_tokens", "temperature", "top_p", "seed"}, exclude_none=True
            )
            try:
                call.query = call.resident.predictor.query(parsed.prompt, call.params)
            except SignatureViolation as exc:
                raise from_signature(exc) from None
            completion = await server.complete(call)
            server.finished(call, completion)
            return JSONResponse(
                {
                    "text": completion.text,
                    "version": call.resident.version,
                    "content_id": call.resident.content_id,
                    "latency_ms": round((time.perf_counter() - call.started) * 1000, 3),
                },
                headers=call.resident.headers(),
            )

    @router.get("/health")
    async def health() -> dict[str, Any]:
        return server.health()  # from memory, on the event loop: never queued behind the model

    @router.get("/metrics")
    async def metrics() -> Response:
        content, media_type = server.metrics.render()
        return Response(content, media_type=media_type)

    @router.get("/version")
    async def version() -> dict[str, Any]:
        return server.describe()

    @router.post("/admin/reload")
    async def reload() -> dict[str, Any]:
        return await run_in_threadpool(server.reload)  # a download must not block the event loop

    return router
