"""One request's generation on its own: stopped at its deadline or when cancelled (checked per
token inside transformers' generate), and cut at stop strings without ever streaming part of one.
A small GPT-2 with random weights is enough: what matters is where generation stops."""

from __future__ import annotations

import threading
import time

import pytest

from tuneledger.package import signature
from tuneledger.predict import Interrupt, Interrupted, Predictor, StopScanner


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
