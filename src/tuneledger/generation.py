"""Text generation shared by evaluation, the CLI and the server: batched, left-padded, on one device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tuneledger import chat

Prompt = str | list[dict[str, str]]  # plain text, or a conversation rendered with the chat template


def encode(tokenizer, prompts: list[Prompt], device) -> dict[str, Any]:
    """Left-padded input ids. A rendered conversation already holds its special tokens (BOS among them)."""
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    if prompts and not isinstance(prompts[0], str):
        texts = [chat.render_prompt(tokenizer, messages) for messages in prompts]
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    return tokenizer(prompts, return_tensors="pt", padding=True).to(device)


def sampling_options(temperature: float, top_p: float | None, seed: int | None) -> dict[str, Any]:
    """Greedy when temperature is 0; otherwise sampling, reproducible when a seed is given."""
    if temperature <= 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    if seed is not None:
        torch.manual_seed(seed)
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": None}


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
        **sampling_options(temperature, top_p, seed=None),
    )
    new_tokens = output[:, batch["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    stopped = torch.isin(new_tokens, torch.tensor(stops, device=new_tokens.device)).any(dim=1)
    return [Answer(text, bool(done)) for text, done in zip(texts, stopped.tolist(), strict=True)]


def generate(model, tokenizer, prompts: list[Prompt], max_new_tokens: int, **options) -> list[str]:
    """The answers' texts (options as for `answer`: temperature, top_p, eos_token_ids)."""
    return [reply.text for reply in answer(model, tokenizer, prompts, max_new_tokens, **options)]
