"""A real pretrained instruct model end to end: SmolLM2-135M-Instruct (LLaMA architecture, its own
ChatML-style template without generation markers) fine-tuned on a messages JSONL."""

from __future__ import annotations

import json
import math

import pytest

from conftest import commit_all, copy_repo, make_repo, read_json, run, serving, set_params, use_remote
from test_chat import collated_spans
from tuneledger import tasks

pytestmark = pytest.mark.slow

TRAIN = {"max_steps": 15, "batch_size": 8, "lr": 0.005, "max_length": 64, "logging_steps": 5}


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
    stops = {
        row["model"]: row["stop_rate"] for row in read_json(smollm2_run / "results/evaluate/comparison.json")
    }
    assert stops["tuned"] >= 0.95
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


def test_qlora_nf4_trains_and_merges_onto_the_unquantized_base(smollm2_run, tmp_path):
    """nf4 through bitsandbytes on CPU, all linear layers, gradient checkpointing; merged in float32."""
    from safetensors import safe_open

    repo = copy_repo(smollm2_run, tmp_path / "repo", share_cached=True)
    set_params(
        repo,
        **{"model.quantization": "nf4", "lora.target_modules": "all-linear", "export.merge": True},
        **{"train.max_steps": 4, "train.batch_size": 2, "train.gradient_checkpointing": True},
        **{"eval.max_examples": 4},
    )
    run("dvc", "repro", cwd=repo)
    summary = read_json(repo / "results/train/summary.json")
    assert summary["steps"] == 4 and math.isfinite(summary["train_loss"])
    adapter = read_json(repo / "models/export/adapter_config.json")
    assert set(adapter["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    meta = read_json(repo / "models/export/metadata.json")
    assert meta["params"]["model"]["quantization"] == "nf4"
    with safe_open(repo / "models/export/merged/model.safetensors", "pt") as merged:
        weight = merged.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert str(weight.dtype) == "torch.float32" and tuple(weight.shape) == (576, 576)


def test_registered_and_served_to_the_openai_client(smollm2_run, s3, tmp_path):
    """The tuned SmolLM2 registered, promoted and served: the real `openai` client gets the answer the
    package gives locally, whole and streamed, ending at <|im_end|>."""
    from openai import OpenAI

    repo = copy_repo(smollm2_run, tmp_path / "repo", share_cached=True)
    use_remote(repo, s3, "smollm2")
    commit_all(repo, "SmolLM2 tuned on chats")
    run("tuneledger", "register", "--push", cwd=repo)
    run("tuneledger", "promote", "v1.0.0", "--stage", "prod", cwd=repo)
    messages = [{"role": "user", "content": "reverse: owl fox bee"}]
    (tmp_path / "messages.json").write_text(json.dumps(messages))
    local = run("tuneledger", "generate", "models/export", "--messages", tmp_path / "messages.json", cwd=repo)
    with serving(repo, api_key="smollm2-key-0123456789") as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="smollm2-key-0123456789", max_retries=0, timeout=120)
        reply = client.chat.completions.create(model="lora-adapter", messages=messages, max_tokens=12)
        streamed = client.chat.completions.create(
            model="lora-adapter", messages=messages, max_tokens=12, stream=True
        )
        pieces = [chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices]
    assert reply.choices[0].finish_reason == "stop" and reply.model == "lora-adapter@v1.0.0"
    assert reply.choices[0].message.content.strip() == local.stdout.strip() != ""
    assert "".join(pieces).strip() == local.stdout.strip()
