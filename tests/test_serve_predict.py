"""Decoding, the one path of evaluation, the CLI and the server: a request stopped at its deadline
or when cancelled (checked before every token), cut at stop strings without ever streaming part of
one, and a row of a batch answered as it would be alone, with its own limit, seed and interrupt.
A small GPT-2 with random weights is enough: what matters is where and how generation stops."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from tuneledger.inference.generation import Interrupt, Interrupted, Row, StopScanner, decode
from tuneledger.inference.predict import Predictor
from tuneledger.package import signature


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["reverse: red cat sun => sun cat red"] * 20, vocab_size=300, special_tokens=["<|e|>"]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|e|>", pad_token="<|e|>")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=256, vocab_size=len(tokenizer))
    model = GPT2LMHeadModel(config).eval()
    sig = signature.build(
        max_prompt_chars=256, max_prompt_tokens=96, max_new_tokens=160, default_new_tokens=8
    )
    return Predictor(
        model, tokenizer, sig, {"content_id": "0" * 64}, eos_token_ids=[]
    )  # never ends by itself


def test_generation_runs_to_max_new_tokens_without_an_interrupt(predictor):
    done = predictor.complete(predictor.query("red cat", {"max_new_tokens": 12}))
    assert (done.completion_tokens, done.finish_reason) == (12, "length")


def test_a_passed_deadline_stops_generation_after_one_token(predictor):
    interrupt = Interrupt(deadline=time.monotonic())
    with pytest.raises(Interrupted) as stopped:
        predictor.complete(predictor.query("red cat", {"max_new_tokens": 160}), interrupt)
    assert stopped.value.reason == "deadline"


def test_cancelling_stops_a_running_generation(predictor):
    interrupt, result = Interrupt(), {}

    def generate() -> None:
        try:
            query = predictor.query("red cat", {"max_new_tokens": 160})
            result["done"] = predictor.complete(query, interrupt)
        except Interrupted as exc:
            result["reason"] = exc.reason

    worker = threading.Thread(target=generate)
    worker.start()
    interrupt.cancel()  # the client went away, from another thread, while it generates
    worker.join(timeout=120)
    assert result == {"reason": "cancelled"}  # not 160 tokens for nobody


def test_stop_strings_are_cut_and_never_streamed_in_part():
    scanner = StopScanner(("</s>", "END"))
    streamed = [scanner.feed(chunk) for chunk in ["sun c", "at <", "/", "s> red"]]
    assert streamed == ["sun c", "at ", "", ""] and scanner.stopped and scanner.flush() == ""
    held = StopScanner(("END",))
    assert held.feed("red E") == "red " and held.feed("N") == "" and held.flush() == "EN"


def rows_for(predictor, prompts_and_limits, **options) -> list[Row]:
    return [
        Row(predictor.tokenizer(prompt)["input_ids"], limit, [], predictor.tokenizer, **options)
        for prompt, limit in prompts_and_limits
    ]


MIXED = [("red cat", 12), ("reverse: red cat sun => sun", 5), ("sun", 20), ("cat red red cat sun", 1)]


def test_greedy_rows_of_a_batch_answer_as_each_alone(predictor):
    batched = decode(predictor.model, rows_for(predictor, MIXED))
    alone = [decode(predictor.model, [row])[0] for row in rows_for(predictor, MIXED)]
    assert [d.token_ids for d in batched] == [d.token_ids for d in alone]
    assert [len(d.token_ids) for d in batched] == [limit for _, limit in MIXED]
    assert len({tuple(d.token_ids) for d in batched}) > 1  # the rows really differ


def test_a_seed_seeds_its_rows_own_generator_and_never_the_process_wide_one(predictor):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    sampled = rows_for(predictor, MIXED[:2], temperature=1.0, seed=7)
    batched = decode(predictor.model, [*sampled, *rows_for(predictor, MIXED[2:], temperature=1.0)])
    alone = decode(predictor.model, rows_for(predictor, MIXED[:1], temperature=1.0, seed=7))
    assert batched[0].token_ids == alone[0].token_ids
    assert torch.equal(torch.random.get_rng_state(), before)
    unseeded = [decode(predictor.model, rows_for(predictor, MIXED[:1], temperature=1.0))[0] for _ in range(3)]
    assert len({tuple(d.token_ids) for d in unseeded}) > 1


def test_a_row_cancelled_inside_a_batch_leaves_it_and_the_rest_go_on(predictor):
    rows = rows_for(predictor, [("red cat", 40), ("sun", 160), ("cat", 30)])
    seen = []

    def cancel_the_second_after_three_tokens(text: str) -> None:
        seen.append(text)
        if len(seen) == 3:
            rows[1].interrupt.cancel()

    rows[0].on_text = cancel_the_second_after_three_tokens
    ended = []
    for row in rows:
        row.on_end = ended.append
    batched = decode(predictor.model, rows)
    assert batched[1].interrupted == "cancelled" and len(batched[1].token_ids) <= 4
    assert [len(batched[0].token_ids), len(batched[2].token_ids)] == [40, 30]
    alone = decode(predictor.model, rows_for(predictor, [("cat", 30)]))[0]
    assert batched[2].token_ids == alone.token_ids
    assert ended[0] is batched[1]  # handed over the moment it left, before the others ended


def test_a_row_past_its_deadline_inside_a_batch_leaves_it_and_the_rest_go_on(predictor):
    rows = rows_for(predictor, [("red cat", 160), ("sun", 30)])
    seen = []

    def the_deadline_falls_after_three_pieces(text: str) -> None:
        seen.append(text)
        if len(seen) == 3:
            rows[0].interrupt.deadline = time.monotonic()  # due now, in the middle of the batch

    rows[1].on_text = the_deadline_falls_after_three_pieces
    late, on_time = decode(predictor.model, rows)
    assert late.interrupted == "deadline" and 0 < len(late.token_ids) < 160
    assert on_time.interrupted is None and len(on_time.token_ids) == 30
    assert on_time.token_ids == decode(predictor.model, rows_for(predictor, [("sun", 30)]))[0].token_ids


def test_rows_that_join_a_running_batch_answer_as_each_alone(predictor):
    """Continuous batching: rows admitted between steps (prefilled, their cache merged in with
    left padding) answer exactly as alone, and so do the rows they joined. Seeded samples: they
    follow the exact probabilities, where a greedy argmax would hide a masking slip."""
    sampled = {"temperature": 0.05, "seed": 11}  # sharp enough that a masking slip changes samples
    starting = rows_for(predictor, MIXED[:2], **sampled)
    waiting = rows_for(predictor, MIXED[2:] + MIXED[:1], **sampled)
    outcomes, joined = {}, []
    for i, row in enumerate(starting + waiting):
        row.on_end = lambda decoded, i=i: outcomes.__setitem__(i, decoded)

    def admit(running: int) -> list[Row]:
        if waiting and running < 3:
            joined.append(running)
            return [waiting.pop(0)]
        return []

    decode(predictor.model, starting, admit=admit)
    alone = [decode(predictor.model, [row])[0] for row in rows_for(predictor, MIXED + MIXED[:1], **sampled)]
    assert [outcomes[i].token_ids for i in range(len(alone))] == [d.token_ids for d in alone]
    assert len(joined) == 3 and not waiting
