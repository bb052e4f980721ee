"""Held-out metrics: loss and perplexity on the answer tokens, exact match of greedy answers, and
how often an answer ends by itself (with an end-of-turn or eos token) rather than at the length limit.

Plain rows are scored as before: `prompt` → `completion` (+ eos), or every token of `text`.
Conversational rows are scored on their last assistant turn: the turns before it, rendered with the
chat template and its generation prompt, are the prompt; that turn's content and its end-of-turn
token are the answer. Base and tuned models are scored the same way.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tuneledger.core.progress import progress_bar
from tuneledger.inference.generation import answer
from tuneledger.models import chat


def _conversation_ids(tokenizer, row: dict) -> tuple[list[int], int]:
    """Token ids of the conversation up to and including the scored answer, and the prompt's length."""
    turns, reply = chat.prompt_and_answer(row)
    prompt = tokenizer.apply_chat_template(
        turns, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    whole = tokenizer.apply_chat_template(
        [*turns, {"role": "assistant", "content": reply}], tokenize=True, return_dict=False
    )
    # Score up to the end-of-turn token: what a template renders after it belongs to the next turn.
    end = tokenizer.convert_tokens_to_ids(chat.end_of_turn_token(tokenizer))
    stop = next(i for i in range(len(prompt), len(whole)) if whole[i] == end) + 1
    return list(whole[:stop]), len(prompt)


def _labelled(tokenizer, row: dict) -> tuple[list[int], list[int]]:
    """Token ids and labels: only the answer (and its eos or end-of-turn) is scored, or all of `text`."""
    if chat.is_conversational(row):
        ids, prompt_length = _conversation_ids(tokenizer, row)
        return ids, [-100] * prompt_length + ids[prompt_length:]
    if "text" in row:
        ids = tokenizer(row["text"])["input_ids"] + [tokenizer.eos_token_id]
        return ids, list(ids)
    prompt = tokenizer(row["prompt"])["input_ids"]
    ids = tokenizer(row["prompt"] + row["completion"])["input_ids"] + [tokenizer.eos_token_id]
    return ids, [-100] * len(prompt) + ids[len(prompt) :]


@torch.inference_mode()
def answer_loss(model, tokenizer, rows: list[dict], batch_size: int) -> float:
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


def question_and_reference(row: dict) -> tuple[str | list[dict], str] | None:
    """What the model is asked and the exact answer expected (None: a `text` row has no answer)."""
    if chat.is_conversational(row):
        return chat.prompt_and_answer(row)
    if "prompt" in row:
        return row["prompt"], row["completion"]
    return None


def greedy_answers(
    model, tokenizer, rows: list[dict], max_new_tokens: int, batch_size: int, label: str
) -> dict[str, Any]:
    """Exact match of greedy answers with the references, the share that ended by themselves, and
    each answer (`answers`: row index in the split, answer, reference, hit)."""
    scored = [(i, pair) for i, row in enumerate(rows) if (pair := question_and_reference(row)) is not None]
    if not scored:
        return {"exact_match": None, "stop_rate": None, "answers": []}
    answers = []
    batches = range(0, len(scored), batch_size)
    with progress_bar(f"exact match ({label})", total=len(batches)) as advance:
        for start in batches:
            chunk = scored[start : start + batch_size]
            replies = answer(model, tokenizer, [question for _, (question, _) in chunk], max_new_tokens)
            for reply, (index, (_, reference)) in zip(replies, chunk, strict=True):
                hit = reply.text.strip() == reference.strip()
                answers.append(
                    {
                        "row": index,
                        "answer": reply.text,
                        "reference": reference,
                        "hit": hit,
                        "stopped": reply.stopped,
                    }
                )
            advance()
    return {
        "exact_match": sum(a["hit"] for a in answers) / len(answers),
        "stop_rate": sum(a["stopped"] for a in answers) / len(answers),
        "answers": answers,
    }


def evaluate(
    model, tokenizer, rows: list[dict], max_new_tokens: int, batch_size: int, label: str
) -> dict[str, Any]:
    loss = answer_loss(model, tokenizer, rows, batch_size)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),  # exp overflows a float beyond ~709
        **greedy_answers(model, tokenizer, rows, max_new_tokens, batch_size, label),
    }
