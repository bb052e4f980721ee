"""Text generation shared by evaluation, the CLI and the server: batched, left-padded, on one device."""

from __future__ import annotations

import torch


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int | None = None,
) -> list[str]:
    """Completions for `prompts` (greedy when temperature is 0), without the prompt or special tokens."""
    if not prompts:
        return []
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    device = next(model.parameters()).device
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    sampling = temperature > 0
    if sampling and seed is not None:
        torch.manual_seed(seed)
    output = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    new_tokens = output[:, batch["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
