"""A real pretrained instruct model end to end: SmolLM2-135M-Instruct (LLaMA architecture, its own
ChatML-style template without generation markers) fine-tuned on a messages JSONL."""

from __future__ import annotations

import json

import pytest

from conftest import make_repo, read_json, run, set_params
from test_chat import collated_spans
from tuneledger import tasks

pytestmark = pytest.mark.slow

TRAIN = {"max_steps": 30, "batch_size": 8, "lr": 0.005, "max_length": 64, "logging_steps": 5}


@pytest.fixture(scope="session")
def smollm2_run(smollm2, tmp_path_factory):
    """SmolLM2 as a local `model.base`, trained on 120 conversations (read-only for tests)."""
    repo = make_repo(tmp_path_factory.mktemp("smollm2") / "repo")
    rows = tasks.BUILTIN_TASKS["reverse-words-chat"](120, 5)
    (repo / "data/raw/chat.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    set_params(
        repo,
        **{"model.base": str(smollm2), "data.source": "data/raw/chat.jsonl", "lora.target_modules": "auto"},
        **{f"train.{key}": value for key, value in TRAIN.items()},
        **{"eval.batch_size": 12, "eval.max_new_tokens": 12},
    )
    run("dvc", "repro", cwd=repo)
    return repo


def test_fine_tuning_beats_the_base_and_answers_stop_at_im_end(smollm2_run):
    metrics = read_json(smollm2_run / "results/evaluate/metrics.json")
    assert metrics["tuned"]["exact_match"] > metrics["base"]["exact_match"]
    assert metrics["tuned"]["stop_rate"] >= 0.95
    package = smollm2_run / "models/export"
    assert read_json(package / "generation_config.json")["eos_token_id"] == [2]  # <|im_end|>
    record = read_json(package / "metadata.json")["base_model"]["chat_template"]
    assert record["source"] == "base" and record["end_of_turn"] == "<|im_end|>"
    adapter = read_json(package / "adapter_config.json")
    assert adapter["target_modules"] == ["q_proj", "v_proj"]


def test_the_base_template_without_markers_still_masks_exactly(smollm2_run):
    row = {
        "messages": [
            {"role": "user", "content": "reverse: red cat sun"},
            {"role": "assistant", "content": "sun cat red"},
            {"role": "user", "content": "reverse: owl fox bee"},
            {"role": "assistant", "content": "bee fox owl"},
        ]
    }
    assert collated_spans(smollm2_run, [row]) == [["sun cat red<|im_end|>", "bee fox owl<|im_end|>"]]
