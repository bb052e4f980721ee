"""Pydantic models mirroring OpenAI's chat completion, completion and model schemas: the subset
this server implements, field for field, so the `openai` client (and vLLM/TGI users' code) works
unchanged. A request that does not fit is refused by validation, with the field named, before any
serving code runs. Fields this server does not implement are refused rather than ignored.

Every reply names what answered: `model` is `<artifact>@<version>`, `system_fingerprint` is the
version's content id, and `tuneledger` holds both with the stage (also sent as the
X-TuneLedger-Version and X-TuneLedger-Content-Id headers).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneledger.package.signature import MAX_SEED

MAX_STOP_SEQUENCES = 4  # OpenAI's own limit
MAX_STOP_CHARS = 64

StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(Request):
    type: Literal["text"]
    text: str


class ChatMessage(Request):
    role: str  # which roles a version accepts is its signature's business (422 naming the turn)
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(Request):
    include_usage: bool = False


class SamplingRequest(Request):
    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1  # one choice per request
    user: str | None = None  # accepted for compatibility; not used

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(SamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None  # the newer name of max_tokens


class CompletionRequest(SamplingRequest):
    prompt: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Provenance(BaseModel):
    name: str
    stage: str | None  # the stage the requested name resolved through; None for a pinned version
    version: str
    content_id: str
    arm: str | None = None  # stable or canary, when the followed name is split by --canary


class Reply(BaseModel):
    id: str
    created: int
    model: str
    system_fingerprint: str
    tuneledger: Provenance


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletionResponse(Reply):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(Reply):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class CompletionResponse(Reply):
    """A completion, or (streaming) one chunk of it: OpenAI uses the same object for both."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tuneledger"
    tuneledger: Provenance


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
