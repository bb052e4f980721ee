"""The one way TuneLedger decodes: evaluation, `tuneledger generate` and the server all call `decode`.

A batch is a list of rows, and each row keeps its own prompt, token limit, sampling, random
generator, stop strings, end-of-answer ids, adapter (peft's mixed-adapter batches), deadline and
cancellation. A row that ends leaves the batch at once (its cache rows are dropped) and the others
go on.

Hand-written rather than `model.generate`, because generate decides for the whole batch: one eos
list, one stop-string list, the process-wide random generator, finished rows keep computing until
the last one ends, and no row can join a batch that runs. The model calls are the ones generate
makes: a left-padded prefill with position ids from the attention mask, then one token per step on
the KV cache. Rows may join a running batch (continuous batching: see `_Batch`). Sampling uses
transformers' own logits warpers.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tuneledger.models import chat

Prompt = str | list[dict[str, str]]  # plain text, or a conversation rendered with the chat template

# Below this temperature sampling is greedy, as vLLM does (`_SAMPLING_EPS`): dividing logits by a
# tinier one overflows to inf, and softmax of inf is nan.
GREEDY_BELOW = 1e-5
BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


class Interrupted(Exception):
    """Generation stopped early: `reason` is "deadline" or "cancelled" (the client went away)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class Interrupt:
    """A row's deadline and cancellation, checked before every token."""

    def __init__(self, deadline: float = float("inf")):
        self.deadline = deadline  # time.monotonic()
        self.cancelled = threading.Event()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def cancel(self) -> None:
        self.cancelled.set()

    def reason(self) -> str | None:
        if self.cancelled.is_set():
            return "cancelled"
        return "deadline" if time.monotonic() >= self.deadline else None


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
class Row:
    """One prompt of a batch and everything that decides its answer."""

    input_ids: list[int]
    max_new_tokens: int
    eos_token_ids: Sequence[int]
    tokenizer: Any  # decodes this row's text (rows of one batch share the base's vocabulary)
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None  # None: fresh from the OS
    stop: tuple[str, ...] = ()
    adapter: str | None = None  # a loaded adapter's name; None: the model as it is
    interrupt: Interrupt = field(default_factory=Interrupt)
    on_text: Callable[[str], None] | None = None  # each piece of text as it becomes safe to show
    on_end: Callable[[Decoded], None] | None = None  # called the moment the row leaves the batch


@dataclass(frozen=True)
class Decoded:
    text: str  # the answer without prompt, special tokens or stop string
    token_ids: list[int]
    finish_reason: str  # "stop" (end of answer or a stop string) or "length" (max_new_tokens)
    interrupted: str | None = None  # "deadline" or "cancelled": the row was stopped early

    @property
    def stopped(self) -> bool:
        return self.finish_reason == "stop"


def sampling_options(temperature: float | None, top_p: float | None) -> dict[str, Any]:
    """A request's sampling as a Row's fields: greedy when the temperature is (nearly) 0."""
    if temperature is None or temperature < GREEDY_BELOW:
        return {"temperature": 0.0, "top_p": None}
    return {"temperature": temperature, "top_p": top_p}


class _Progress:
    """A row in the batch: its tokens so far, its text so far, and its own random generator."""

    def __init__(self, row: Row, device):
        self.row, self.tokens = row, []
        self.outcome: Decoded | None = None
        self.fed = self.shown = ""  # text decoded so far; text passed the stop scanner
        self.scanner = StopScanner(row.stop)
        self.generator = None
        if row.temperature >= GREEDY_BELOW:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(row.seed if row.seed is not None else secrets.randbits(63))

    def choose(self, logits: torch.Tensor, greedy: int) -> int:
        if self.generator is None:
            return greedy
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        scores = TemperatureLogitsWarper(self.row.temperature)(None, logits[None].clone())
        if self.row.top_p is not None and self.row.top_p < 1.0:
            scores = TopPLogitsWarper(self.row.top_p)(None, scores)
        probabilities = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probabilities, 1, generator=self.generator))

    def add(self, token: int) -> Decoded | None:
        """Take the next token; the outcome if the row has ended."""
        row = self.row
        self.tokens.append(token)
        ended = token in row.eos_token_ids
        text = row.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd") or ended:  # a character still missing bytes waits for them
            self._show(self.scanner.feed(text[len(self.fed) :]))
            self.fed = text
        if ended or self.scanner.stopped:
            return self.end("stop")
        if len(self.tokens) >= row.max_new_tokens:
            return self.end("length")
        return None

    def _show(self, text: str) -> None:
        if text:
            self.shown += text
            if self.row.on_text is not None:
                self.row.on_text(text)

    def end(self, finish_reason: str, interrupted: str | None = None) -> Decoded:
        if interrupted is None:
            self._show(self.scanner.flush())
        self.outcome = Decoded(self.shown, list(self.tokens), finish_reason, interrupted)
        if self.row.on_end is not None:
            self.row.on_end(self.outcome)
        return self.outcome


def _left_padded(rows: list[Row], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row.input_ids) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row.input_ids) :] = torch.tensor(row.input_ids)
        mask[i, width - len(row.input_ids) :] = 1
    return ids.to(device), mask.to(device)


def _adapters(model, rows: list[_Progress]) -> dict[str, Any]:
    """The forward's adapter argument: none for a plain model; one adapter made active when every
    row uses it (the plain path, which DoRA needs too); else peft's per-row `adapter_names`."""
    names = {p.row.adapter for p in rows}
    if names == {None}:
        return {}
    if len(names) == 1:
        name = names.pop()
        if model.active_adapter != name:  # set_adapter walks every layer: not on every step
            model.set_adapter(name)
        return {}
    return {"adapter_names": [p.row.adapter or BASE_ADAPTER for p in rows]}


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class _Batch:
    """The rows decoding together: their KV cache, their attention mask (0 where a row has no
    token: left padding), the position of each row's last token, and the tokens to feed next.

    Rows join with a prefill of their own whose cache is merged in (padded on the left to a common
    length: the mask hides the padding, positions are per row), and leave by having their cache
    rows dropped; padding no row needs any more is cropped, so the cache stays as long as its
    longest row. Joining needs plain growing caches (transformers' DynamicLayer): a model with
    another cache (sliding windows) only decodes the rows it started with."""

    def __init__(self, model, device):
        self.model, self.device = model, device
        self.rows: list[_Progress] = []
        self.cache = self.mask = self.last = None
        self.tokens: list[int] = []

    def _forward(self, rows, ids, mask, positions, cache):
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,  # the next token's logits only (a prefill's others are never read)
            **_adapters(self.model, rows),
        )
        return out.past_key_values, out.logits[:, -1, :].float()

    @staticmethod
    def _choose(rows: list[_Progress], logits: torch.Tensor) -> list[int | None]:
        """Each row's next token, or None for a row that has ended (its outcome handed on)."""
        greedy = logits.argmax(dim=-1).tolist()
        chosen = []
        for i, progress in enumerate(rows):
            if (reason := progress.row.interrupt.reason()) is not None:
                progress.end("length", reason)
                chosen.append(None)
                continue
            token = progress.choose(logits[i], greedy[i])
            chosen.append(None if progress.add(token) is not None else token)
        return chosen

    def can_join(self) -> bool:
        from transformers.cache_utils import DynamicLayer

        return self.cache is None or all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def join(self, joining: list[_Progress]) -> None:
        """Prefill new rows and add those still going after their first token."""
        if not joining:
            return
        ids, mask = _left_padded([p.row for p in joining], 0, self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache, logits = self._forward(joining, ids, mask, positions, None)
        chosen = self._choose(joining, logits)
        keep = [i for i, token in enumerate(chosen) if token is not None]
        if not keep:
            return
        index = torch.tensor(keep, device=self.device)
        cache.batch_select_indices(index)
        mask, last = mask[index], positions[index, -1:]
        rows, tokens = [joining[i] for i in keep], [chosen[i] for i in keep]
        if self.cache is None:
            self.cache, self.mask, self.last, self.rows, self.tokens = cache, mask, last, rows, tokens
            return
        length = max(self.mask.shape[1], mask.shape[1])
        for ours, theirs in zip(self.cache.layers, cache.layers, strict=True):
            ours.keys = torch.cat([_pad_left(ours.keys, length, -2), _pad_left(theirs.keys, length, -2)])
            ours.values = torch.cat(
                [_pad_left(ours.values, length, -2), _pad_left(theirs.values, length, -2)]
            )
        self.mask = torch.cat([_pad_left(self.mask, length, 1), _pad_left(mask, length, 1)])
        self.last = torch.cat([self.last, last])
        self.rows, self.tokens = self.rows + rows, self.tokens + tokens

    def step(self) -> None:
        """One token for every row; rows that end leave."""
        ids = torch.tensor(self.tokens, device=self.device)[:, None]
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=-1)
        self.last = self.last + 1
        self.cache, logits = self._forward(self.rows, ids, self.mask, self.last, self.cache)
        chosen = self._choose(self.rows, logits)
        keep = [i for i, token in enumerate(chosen) if token is not None]
        if len(keep) < len(self.rows):
            self._keep(keep)
        self.tokens = [chosen[i] for i in keep]

    def _keep(self, keep: list[int]) -> None:
        if not keep:
            self.rows, self.cache, self.mask, self.last = [], None, None, None
            return
        index = torch.tensor(keep, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask, self.last = self.mask[index], self.last[index]
        self.rows = [self.rows[i] for i in keep]
        first = int((self.mask.sum(dim=0) > 0).nonzero()[0])  # columns before it pad every row
        if first > 0 and self.can_join():
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
            self.mask = self.mask[:, first:]


def _starting(rows: list[Row], device) -> tuple[list[_Progress], list[_Progress]]:
    """Every row's progress, and those that start decoding (not already past their deadline,
    cancelled, or asked for no token at all: those end here)."""
    progresses, starting = [], []
    for row in rows:
        progress = _Progress(row, device)
        progresses.append(progress)
        if (reason := row.interrupt.reason()) is not None or row.max_new_tokens < 1:
            progress.end("length", reason)
        else:
            starting.append(progress)
    return progresses, starting


@torch.inference_mode()
def decode(model, rows: list[Row], admit: Callable[[int], list[Row]] | None = None) -> list[Decoded]:
    """Decode `rows` together; each outcome is also handed to its row's `on_end` when it leaves.

    With `admit`, more rows join the running batch between steps: `admit(n)` is called with the
    number of rows decoding and returns rows to add (whose outcomes go to their `on_end` only)."""
    device = next(model.parameters()).device
    progresses, starting = _starting(rows, device)
    batch = _Batch(model, device)
    batch.join(starting)
    while batch.rows:
        batch.step()
        if admit is not None and batch.rows and batch.can_join():
            batch.join(_starting(admit(len(batch.rows)), device)[1])
    return [progress.outcome for progress in progresses]


# --- evaluation's and the CLI's use: prompts in, answers out -----------------------------------


def encode(tokenizer, prompt: Prompt) -> list[int]:
    """A prompt's ids. A conversation is encoded with its template's special tokens (BOS among
    them) and none spelled by its contents (chat.encode_prompt)."""
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    return chat.encode_prompt(tokenizer, prompt)


def answer(
    model,
    tokenizer,
    prompts: list[Prompt],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float | None = None,
    eos_token_ids: list[int] | None = None,
) -> list[Decoded]:
    """Answers to `prompts`, decoded together; each stops at an end-of-turn or eos token, or after
    `max_new_tokens`."""
    stops = eos_token_ids or chat.eos_token_ids(tokenizer)
    sampling = sampling_options(temperature, top_p)
    rows = [Row(encode(tokenizer, p), max_new_tokens, stops, tokenizer, **sampling) for p in prompts]
    return decode(model, rows)


def generate(model, tokenizer, prompts: list[Prompt], max_new_tokens: int, **options) -> list[str]:
    """The answers' texts (options as for `answer`: temperature, top_p, eos_token_ids)."""
    return [reply.text for reply in answer(model, tokenizer, prompts, max_new_tokens, **options)]
