"""Answering one request with a verified package, within the bounds of its signature.

`Predictor.query` / `Predictor.chat_query` check a request against signature.json and render it;
`Predictor.complete` generates the answer. The CLI, the server and the shadow all answer through
`complete`, so a shadow pair compares like with like. The server adds what only it needs: an
`Interrupt` (deadline, client gone) and a streamer. Batched generation for evaluation is
tuneledger.generation.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, StopStringCriteria

from tuneledger.generation import own_random_state, sampling_options
from tuneledger.package import signature as signature_format
from tuneledger.package.loader import load_package
from tuneledger.package.signature import SignatureViolation


@dataclass(frozen=True)
class Query:
    """A request the signature accepted: the prompt as the model sees it, and every parameter."""

    prompt: str
    params: dict[str, Any]  # max_new_tokens, temperature, top_p, seed (None: unset)
    input_ids: list[int]  # what the model reads: a chat's contents never spell special tokens
    stop: tuple[str, ...] = ()
    messages: list[dict[str, str]] | None = None  # the conversation a chat prompt was rendered from

    @property
    def prompt_tokens(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string) or "length" (max_new_tokens)


class Interrupted(Exception):
    """Generation stopped early: `reason` is "deadline" or "cancelled" (the client went away)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class Interrupt(StoppingCriteria):
    """Stops a generation at its deadline, or as soon as `cancel()` is called (checked per token)."""

    def __init__(self, deadline: float = float("inf")):
        self.deadline = deadline  # time.monotonic()
        self.cancelled = threading.Event()
        self.fired: str | None = None

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def cancel(self) -> None:
        self.cancelled.set()

    def reason(self) -> str | None:
        if self.cancelled.is_set():
            return "cancelled"
        return "deadline" if time.monotonic() >= self.deadline else None

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        reason = self.reason()
        if reason is not None:
            self.fired = reason
        return torch.full(
            (input_ids.shape[0],), reason is not None, dtype=torch.bool, device=input_ids.device
        )


class StopScanner:
    """Cuts text at the first stop string; while streaming, holds back a tail that may be the
    beginning of one, so a client never sees part of a stop string."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.pending, self.stopped = stops, "", False

    def feed(self, text: str) -> str:
        """The part of `text` (after what was held back) that is safe to emit."""
        if self.stopped:
            return ""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending, self.stopped = self.pending[: min(hits)], "", True
            return out
        hold = max(
            (n for s in self.stops for n in range(len(s) - 1, 0, -1) if self.pending.endswith(s[:n])),
            default=0,
        )
        out, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold :]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


@dataclass
class Predictor:
    model: Any
    tokenizer: Any
    signature: dict
    version: dict  # content id and other identity facts of the loaded package
    eos_token_ids: list[int] = field(default_factory=list)

    @classmethod
    def open(
        cls, package: Path, base: Path | None = None, device: str | None = None, manifest: Path | None = None
    ) -> Predictor:
        loaded = load_package(package, device=device, base=base, manifest=manifest)
        identity = {"content_id": loaded.metadata["content_id"]}
        return cls(loaded.model, loaded.tokenizer, loaded.signature, identity, loaded.eos_token_ids)

    @property
    def is_chat(self) -> bool:
        """A chat package carries a chat template with its tokenizer files."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def query(self, prompt: Any, params: dict[str, Any], stop: tuple[str, ...] = ()) -> Query:
        """Check a plain prompt and its params against the signature (SignatureViolation if not).

        A raw prompt is the client's own text, special tokens included, as in every completions API."""
        resolved = signature_format.check_request(self.signature, prompt, params)
        ids = self.tokenizer(prompt)["input_ids"]
        signature_format.check_prompt_tokens(self.signature, len(ids))
        return Query(prompt, resolved, ids, tuple(stop))

    def chat_query(self, messages: Any, params: dict[str, Any], stop: tuple[str, ...] = ()) -> Query:
        """Check a conversation against the signature and render it with the chat template."""
        if not self.is_chat:
            raise SignatureViolation(
                "messages", "this version has no chat template; send a plain `prompt` instead"
            )
        from tuneledger.chat import encode_prompt, render_prompt

        signature_format.check_messages(self.signature, messages)
        resolved = signature_format.check_params(self.signature, params)
        ids = encode_prompt(self.tokenizer, messages)
        signature_format.check_prompt_tokens(self.signature, len(ids), field="messages")
        return Query(render_prompt(self.tokenizer, messages), resolved, ids, tuple(stop), messages=messages)

    @torch.inference_mode()
    def complete(self, query: Query, interrupt: Interrupt | None = None, streamer=None) -> Completion:
        """Generate the answer to a checked query. Raises Interrupted if `interrupt` stopped it."""
        params, tokenizer = query.params, self.tokenizer
        device = next(self.model.parameters()).device
        ids = torch.tensor([query.input_ids], device=device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        stopping = StoppingCriteriaList([interrupt or Interrupt()])
        if query.stop:
            stopping.append(StopStringCriteria(tokenizer, list(query.stop)))
        eos = self.eos_token_ids or None
        try:
            with own_random_state(params.get("seed"), device):
                output = self.model.generate(
                    **inputs,
                    max_new_tokens=params["max_new_tokens"],
                    **sampling_options(params["temperature"], params.get("top_p")),
                    pad_token_id=tokenizer.pad_token_id
                    if tokenizer.pad_token_id is not None
                    else (eos or [0])[0],
                    eos_token_id=eos,
                    stopping_criteria=stopping,
                    streamer=streamer,
                )
        except BaseException:
            if streamer is not None:
                streamer.end()  # a waiting reader must not wait forever
            raise
        if interrupt is not None and interrupt.fired:
            raise Interrupted(interrupt.fired)
        new_tokens = output[0, len(inputs["input_ids"][0]) :].tolist()
        scanner = StopScanner(query.stop)
        text = scanner.feed(tokenizer.decode(new_tokens, skip_special_tokens=True)) + scanner.flush()
        ended = scanner.stopped or bool(new_tokens and eos and new_tokens[-1] in eos)
        finish = "length" if not ended and len(new_tokens) >= params["max_new_tokens"] else "stop"
        return Completion(text, query.prompt_tokens, len(new_tokens), finish)

    def predict(self, prompt: Any, params: dict[str, Any] | None = None) -> str:
        return self.complete(self.query(prompt, params or {})).text

    def chat(self, messages: Any, params: dict[str, Any] | None = None) -> str:
        return self.complete(self.chat_query(messages, params or {})).text
