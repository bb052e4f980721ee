"""Text generation shared by evaluation, the CLI and the server: batched, left-padded, on one device."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from tuneledger import chat

Prompt = str | list[dict[str, str]]  # plain text, or a conversation rendered with the chat template


# Below this temperature sampling is greedy, as vLLM does (`_SAMPLING_EPS`): dividing logits by a
# tinier one overflows to inf, and softmax of inf is nan.
GREEDY_BELOW = 1e-5


def encode(tokenizer, prompts: list[Prompt], device) -> dict[str, Any]:
    """Left-padded input ids. A conversation is encoded with its template's special tokens (BOS among
    them) and none spelled by its contents (chat.encode_prompt)."""
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    if prompts and not isinstance(prompts[0], str):
        ids = [chat.encode_prompt(tokenizer, messages) for messages in prompts]
        return tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding=True).to(device)
    return tokenizer(prompts, return_tensors="pt", padding=True).to(device)


def sampling_options(temperature: float, top_p: float | None) -> dict[str, Any]:
    """Greedy when temperature is (nearly) 0; otherwise sampling."""
    if temperature < GREEDY_BELOW:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": None}


@contextlib.contextmanager
def own_random_state(seed: int | None, device) -> Iterator[None]:
    """Sample from a random state of this request's own: seeded by its seed, or fresh from the OS.

    transformers samples from torch's process-wide generator, so a seed set there would decide the
    next unseeded request's sample as well. The process-wide state is saved and restored around
    the request (requests generate one at a time)."""
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed if seed is not None else secrets.randbits(63))
        yield


@dataclass(frozen=True)
class Answer:
    text: str  # without the prompt and special tokens
    stopped: bool  # ended with an end-of-turn or eos token, not by running out of max_new_tokens


@torch.inference_mode()
def answer(
    model,
    tokenizer,
    prompts: list[Prompt],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float | None = None,
    eos_token_ids: list[int] | None = None,
) -> list[Answer]:
    """Answers to `prompts`; each stops at an end-of-turn or eos token, or after `max_new_tokens`."""
    if not prompts:
        return []
    stops = eos_token_ids or chat.eos_token_ids(tokenizer)
    batch = encode(tokenizer, prompts, next(model.parameters()).device)
    output = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stops,
        **sampling_options(temperature, top_p),
    )
    new_tokens = output[:, batch["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    stopped = torch.isin(new_tokens, torch.tensor(stops, device=new_tokens.device)).any(dim=1)
    return [Answer(text, bool(done)) for text, done in zip(texts, stopped.tolist(), strict=True)]


def generate(model, tokenizer, prompts: list[Prompt], max_new_tokens: int, **options) -> list[str]:
    """The answers' texts (options as for `answer`: temperature, top_p, eos_token_ids)."""
    return [reply.text for reply in answer(model, tokenizer, prompts, max_new_tokens, **options)]
