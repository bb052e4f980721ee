"""The /v1 routes: thin; the logic is in serving.py, the request and reply shapes in protocol.py.

Handlers take the raw request so that the body is bounded in size and time before it is parsed.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from tuneledger.serve.openai import protocol
from tuneledger.serve.openai.serving import OpenAIServing


def build_router(serving: OpenAIServing) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])

    @router.post("/chat/completions")
    async def create_chat_completion(request: Request) -> Response:
        return await serving.chat(request)

    @router.post("/completions")
    async def create_completion(request: Request) -> Response:
        return await serving.completion(request)

    @router.get("/models", response_model=protocol.ModelList)
    async def list_models() -> protocol.ModelList:
        return await serving.models()

    return router
