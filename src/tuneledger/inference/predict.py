"""Answering requests with a verified package, within the bounds of its signature.

`Predictor.query` / `Predictor.chat_query` check a request against signature.json and render it;
`Predictor.row` turns the checked query into a row for tuneledger.inference.generation.decode, the one
decoding path of evaluation, the CLI, the server's batches and the shadow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneledger.inference.generation import Decoded, Interrupt, Interrupted, Row, decode, sampling_options
from tuneledger.package import signature
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


def completion_of(query: Query, decoded: Decoded) -> Completion:
    """A decoded row as the answer to its query (Interrupted if it was stopped early)."""
    if decoded.interrupted:
        raise Interrupted(decoded.interrupted)
    return Completion(decoded.text, query.prompt_tokens, len(decoded.token_ids), decoded.finish_reason)


@dataclass
class Predictor:
    model: Any
    tokenizer: Any
    signature: dict
    version: dict  # content id and other identity facts of the loaded package
    eos_token_ids: list[int] = field(default_factory=list)
    adapter: str | None = None  # the adapter's name on a model shared by several versions

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
        resolved = signature.check_request(self.signature, prompt, params)
        ids = self.tokenizer(prompt)["input_ids"]
        signature.check_prompt_tokens(self.signature, len(ids))
        return Query(prompt, resolved, ids, tuple(stop))

    def chat_query(self, messages: Any, params: dict[str, Any], stop: tuple[str, ...] = ()) -> Query:
        """Check a conversation against the signature and render it with the chat template."""
        if not self.is_chat:
            raise SignatureViolation(
                "messages", "this version has no chat template; send a plain `prompt` instead"
            )
        from tuneledger.models.chat import encode_prompt, render_prompt

        signature.check_messages(self.signature, messages)
        resolved = signature.check_params(self.signature, params)
        ids = encode_prompt(self.tokenizer, messages)
        signature.check_prompt_tokens(self.signature, len(ids), field="messages")
        return Query(render_prompt(self.tokenizer, messages), resolved, ids, tuple(stop), messages=messages)

    def row(self, query: Query, interrupt: Interrupt | None = None, on_text=None, on_end=None) -> Row:
        """The checked query as a row of a batch, on this version's adapter."""
        params = query.params
        return Row(
            list(query.input_ids),
            params["max_new_tokens"],
            self.eos_token_ids,
            self.tokenizer,
            **sampling_options(params["temperature"], params.get("top_p")),
            seed=params.get("seed"),
            stop=query.stop,
            adapter=self.adapter,
            interrupt=interrupt or Interrupt(),
            on_text=on_text,
            on_end=on_end,
        )

    def complete(self, query: Query, interrupt: Interrupt | None = None) -> Completion:
        """Generate the answer to a checked query alone. Raises Interrupted if `interrupt` stopped it."""
        return completion_of(query, decode(self.model, [self.row(query, interrupt)])[0])

    def predict(self, prompt: Any, params: dict[str, Any] | None = None) -> str:
        return self.complete(self.query(prompt, params or {})).text

    def chat(self, messages: Any, params: dict[str, Any] | None = None) -> str:
        return self.complete(self.chat_query(messages, params or {})).text
