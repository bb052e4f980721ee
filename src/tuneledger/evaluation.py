"""Held-out metrics: loss and perplexity on the answer tokens, and exact match of greedy answers."""

from __future__ import annotations

import math

import torch

from tuneledger.generation import generate
from tuneledger.progress import progress_bar


def _labelled(tokenizer, row: dict[str, str]) -> tuple[list[int], list[int]]:
    """Token ids and labels: for prompt/completion rows only the completion (and EOS) is scored."""
    if "text" in row:
        ids = tokenizer(row["text"])["input_ids"] + [tokenizer.eos_token_id]
        return ids, list(ids)
    prompt = tokenizer(row["prompt"])["input_ids"]
    ids = tokenizer(row["prompt"] + row["completion"])["input_ids"] + [tokenizer.eos_token_id]
    return ids, [-100] * len(prompt) + ids[len(prompt) :]


@torch.inference_mode()
def answer_loss(model, tokenizer, rows: list[dict[str, str]], batch_size: int) -> float:
    """Mean negative log-likelihood per scored token over all rows."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        pairs = [_labelled(tokenizer, row) for row in rows[start : start + batch_size]]
        width = max(len(ids) for ids, _ in pairs)
        ids = torch.full((len(pairs), width), tokenizer.pad_token_id)
        labels = torch.full((len(pairs), width), -100)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for i, (row_ids, row_labels) in enumerate(pairs):
            ids[i, : len(row_ids)] = torch.tensor(row_ids)
            labels[i, : len(row_labels)] = torch.tensor(row_labels)
            mask[i, : len(row_ids)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        targets = labels[:, 1:].to(device)
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total += nll.item()
        count += int((targets != -100).sum())
    return total / max(count, 1)


def exact_match(
    model, tokenizer, rows: list[dict[str, str]], max_new_tokens: int, batch_size: int, label: str
) -> float | None:
    """Share of prompts whose greedy answer equals the reference (None for text-only data)."""
    scored = [row for row in rows if "prompt" in row]
    if not scored:
        return None
    hits = 0
    batches = range(0, len(scored), batch_size)
    with progress_bar(f"exact match ({label})", total=len(batches)) as advance:
        for start in batches:
            chunk = scored[start : start + batch_size]
            answers = generate(model, tokenizer, [r["prompt"] for r in chunk], max_new_tokens)
            hits += sum(a.strip() == r["completion"].strip() for a, r in zip(answers, chunk, strict=True))
            advance()
    return hits / len(scored)


def evaluate(
    model, tokenizer, rows: list[dict[str, str]], max_new_tokens: int, batch_size: int, label: str
) -> dict[str, float | None]:
    loss = answer_loss(model, tokenizer, rows, batch_size)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),  # exp overflows a float beyond ~709
        "exact_match": exact_match(model, tokenizer, rows, max_new_tokens, batch_size, label),
    }
