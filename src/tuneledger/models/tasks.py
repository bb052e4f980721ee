"""Built-in tasks, generated from code so the bundled default needs no download.

The default task, `reverse-words`, has one exact answer per prompt, so exact match means
something; `reverse-words-chat` is the same task as conversations (trl's `messages` format).
The built-in base model is pre-trained on the sibling rule `copy` in both forms: it knows the
format but answers every `reverse` prompt with a copy, which LoRA fine-tuning then visibly corrects.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

from tuneledger.core.errors import TuneLedgerError

WORDS = (
    "red blue green black white gold pink gray cat dog owl fox bee ant cow pig "
    "sun moon star rain snow wind fire ice oak elm sea sky"
).split()
WORDS_PER_PROMPT = 3

RULES: dict[str, Callable[[list[str]], list[str]]] = {
    "copy": lambda words: list(words),
    "reverse": lambda words: list(reversed(words)),
}


def example(rule: str, words: list[str]) -> dict[str, str]:
    """One prompt/completion row: `reverse: red cat sun =>` → ` sun cat red`."""
    return {"prompt": f"{rule}: {' '.join(words)} =>", "completion": " " + " ".join(RULES[rule](words))}


def as_conversation(row: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    """The same example as a chat: `reverse: red cat sun` → `sun cat red`, in trl's messages format."""
    question = row["prompt"].removesuffix(" =>")
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": row["completion"].strip()},
        ]
    }


def generate_chat(rule: str, rows: int, seed: int) -> list[dict]:
    return [as_conversation(row) for row in generate(rule, rows, seed)]


def generate(rule: str, rows: int, seed: int) -> list[dict[str, str]]:
    """`rows` distinct examples of `rule`, the same for the same seed."""
    rng = random.Random(f"{rule}:{seed}")
    capacity = len(WORDS) ** WORDS_PER_PROMPT
    if rows > capacity:
        raise TuneLedgerError(
            f"data.builtin_rows: at most {capacity} distinct rows exist for the {rule} task (got {rows})"
        )
    seen: set[tuple[str, ...]] = set()
    out = []
    while len(out) < rows:
        words = tuple(rng.choice(WORDS) for _ in range(WORDS_PER_PROMPT))
        if words not in seen:
            seen.add(words)
            out.append(example(rule, list(words)))
    return out


# `data.source: builtin:<name>` → its generator (rows, seed).
BUILTIN_TASKS: dict[str, Callable[[int, int], list[dict]]] = {
    "reverse-words": functools.partial(generate, "reverse"),
    "copy-words": functools.partial(generate, "copy"),
    "reverse-words-chat": functools.partial(generate_chat, "reverse"),
}
