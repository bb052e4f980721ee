"""The OpenAI-compatible routes' logic: the `model` field names the version that answers (see
serve.routing), requests become signature-checked queries on it, answers become OpenAI objects
(whole, or streamed as server-sent events ending with `data: [DONE]`). Queueing, batching,
deadlines, the shadow and the log are the server's, as for /generate."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tuneledger.inference.predict import Completion, Query
from tuneledger.package.signature import SignatureViolation
from tuneledger.serve import log
from tuneledger.serve.errors import RequestRefused, from_signature, render
from tuneledger.serve.openai import protocol
from tuneledger.serve.request_log import note
from tuneledger.serve.server import Call, Server, TextStream

logger = logging.getLogger(__name__)


def _sse(payload: BaseModel) -> str:
    return f"data: {payload.model_dump_json()}\n\n"


class OpenAIServing:
    def __init__(self, server: Server):
        self.server = server

    # --- /v1/models ---------------------------------------------------------------------------
    async def models(self) -> protocol.ModelList:
        """Each name a request may give, with the version, content id and stage it resolves to now."""
        server, cards = self.server, []
        for name, resident, version, stage in server.models():
            content_id = (
                resident.content_id if resident else (await self._resolved(version)).manifest.content_id
            )
            cards.append(
                protocol.ModelCard(
                    id=name,
                    created=int(resident.since if resident else time.time()),
                    tuneledger=protocol.Provenance(
                        name=server.name, stage=stage, version=version, content_id=content_id
                    ),
                )
            )
        return protocol.ModelList(data=cards)

    async def _resolved(self, version: str):
        from fastapi.concurrency import run_in_threadpool

        return await run_in_threadpool(self.server.registry.resolved, version)

    # --- /v1/chat/completions and /v1/completions ----------------------------------------------
    async def chat(self, request: Request) -> Response:
        async with self.server.call(request, protocol.ChatCompletionRequest) as (parsed, call):
            messages = [{"role": m.role, "content": m.text()} for m in parsed.messages]
            note(request.scope, prompt=json.dumps(messages, ensure_ascii=False))
            if not call.resident.predictor.is_chat:
                raise RequestRefused(
                    400,
                    f"{call.resident.model_id} is not a chat model (its package has no chat template); "
                    "send a prompt to /v1/completions instead",
                )
            if parsed.max_tokens is not None and parsed.max_completion_tokens is not None:
                raise RequestRefused(422, "give max_tokens or max_completion_tokens, not both")
            limit_field = (
                "max_completion_tokens" if parsed.max_completion_tokens is not None else "max_tokens"
            )
            call.params = self._params(parsed, parsed.max_completion_tokens or parsed.max_tokens)
            call.query = self._check(
                lambda: call.resident.predictor.chat_query(messages, call.params, parsed.stop_strings()),
                limit_field,
            )
            return await self._respond(call, parsed, _ChatShapes)

    async def completion(self, request: Request) -> Response:
        async with self.server.call(request, protocol.CompletionRequest) as (parsed, call):
            note(request.scope, prompt=parsed.prompt)
            call.params = self._params(parsed, parsed.max_tokens)
            call.query = self._check(
                lambda: call.resident.predictor.query(parsed.prompt, call.params, parsed.stop_strings()),
                "max_tokens",
            )
            return await self._respond(call, parsed, _CompletionShapes)

    # --- shared steps --------------------------------------------------------------------------
    @staticmethod
    def _params(parsed: protocol.SamplingRequest, max_tokens: int | None) -> dict[str, Any]:
        """The generation params the client set (the signature supplies the rest)."""
        given = {
            "max_new_tokens": max_tokens,
            "temperature": parsed.temperature,
            "top_p": parsed.top_p,
            "seed": parsed.seed,
        }
        return {name: value for name, value in given.items() if value is not None}

    @staticmethod
    def _check(make_query: Callable[[], Query], limit_field: str) -> Query:
        try:
            return make_query()
        except SignatureViolation as exc:
            raise from_signature(exc, rename={"max_new_tokens": limit_field}) from None

    @staticmethod
    def _provenance(call: Call) -> protocol.Provenance:
        resident = call.resident
        return protocol.Provenance(
            name=resident.name,
            stage=call.stage,
            version=resident.version,
            content_id=resident.content_id,
            arm=call.arm,
        )

    async def _respond(self, call: Call, parsed: protocol.SamplingRequest, shapes) -> Response:
        resident = call.resident
        reply = {
            "id": f"{shapes.prefix}-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": resident.model_id,
            "system_fingerprint": resident.content_id,
            "tuneledger": self._provenance(call),
        }
        if parsed.stream:
            stream = await self.server.stream(call)
            include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
            return StreamingResponse(
                self._events(call, stream, shapes, reply, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", **resident.headers()},
            )
        completion = await self.server.complete(call)
        self.server.finished(call, completion)
        return JSONResponse(
            shapes.whole(reply, completion).model_dump(mode="json"), headers=resident.headers()
        )

    async def _events(
        self, call: Call, stream: TextStream, shapes, reply, include_usage
    ) -> AsyncIterator[str]:
        scope, chunk = call.request.scope, shapes.chunk
        try:
            if shapes.announces_role:
                yield _sse(chunk(reply, role="assistant", text=""))
            async for text in stream.deltas():
                yield _sse(chunk(reply, text=text))
            yield _sse(chunk(reply, finish_reason=stream.completion.finish_reason))
            if include_usage:
                yield _sse(chunk(reply, usage=_usage(stream.completion), no_choice=True))
            self.server.finished(call, stream.completion)
        except asyncio.CancelledError:
            note(scope, status=499, error="the client closed the stream", output=stream.text)
            raise
        except RequestRefused as exc:  # the status line is already sent: report in the stream
            note(scope, output=stream.text)
            yield f"data: {render(scope, exc).body.decode()}\n\n"
        except Exception as exc:
            message = log.short_error(exc)
            logger.error(f"streamed generation failed: {message}")
            note(scope, status=500, error=message, output=stream.text)
            failure = RequestRefused(500, "generation failed; see the server log")
            yield f"data: {render(scope, failure).body.decode()}\n\n"
        yield "data: [DONE]\n\n"


def _usage(completion: Completion) -> protocol.Usage:
    return protocol.Usage(
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        total_tokens=completion.prompt_tokens + completion.completion_tokens,
    )


class _ChatShapes:
    prefix = "chatcmpl"
    announces_role = True  # OpenAI's first chunk carries the role, with empty content

    @staticmethod
    def whole(reply: dict, completion: Completion) -> protocol.ChatCompletionResponse:
        return protocol.ChatCompletionResponse(
            **reply,
            choices=[
                protocol.ChatChoice(
                    message=protocol.AssistantMessage(content=completion.text),
                    finish_reason=completion.finish_reason,
                )
            ],
            usage=_usage(completion),
        )

    @staticmethod
    def chunk(reply, text=None, role=None, finish_reason=None, usage=None, no_choice=False):
        choices = (
            []
            if no_choice
            else [
                protocol.ChatChunkChoice(
                    delta=protocol.Delta(role=role, content=text), finish_reason=finish_reason
                )
            ]
        )
        return protocol.ChatCompletionChunk(**reply, choices=choices, usage=usage)


class _CompletionShapes:
    prefix = "cmpl"
    announces_role = False

    @staticmethod
    def whole(reply: dict, completion: Completion) -> protocol.CompletionResponse:
        return protocol.CompletionResponse(
            **reply,
            choices=[protocol.CompletionChoice(text=completion.text, finish_reason=completion.finish_reason)],
            usage=_usage(completion),
        )

    @staticmethod
    def chunk(reply, text=None, role=None, finish_reason=None, usage=None, no_choice=False):
        choices = (
            [] if no_choice else [protocol.CompletionChoice(text=text or "", finish_reason=finish_reason)]
        )
        return protocol.CompletionResponse(**reply, choices=choices, usage=usage)
