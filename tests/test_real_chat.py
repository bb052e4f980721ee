"""A real pretrained instruct model end to end: SmolLM2-135M-Instruct (LLaMA architecture, its own
ChatML-style template without generation markers) fine-tuned on a messages JSONL."""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import (
    commit_all,
    copy_repo,
    make_repo,
    read_json,
    register_forged_version,
    run,
    serving,
    set_params,
    use_remote,
)
from test_chat import collated_spans
from tuneledger.models import chat, tasks
from tuneledger.serve.log import DEFAULT_DB

pytestmark = pytest.mark.slow

TRAIN = {"max_steps": 15, "batch_size": 8, "lr": 0.005, "max_length": 64, "logging_steps": 5}
BENCHMARK = {"task": "copy_words", "limit": 20, "num_fewshot": 0, "batch_size": 16}


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
        **{"eval.batch_size": 12, "eval.max_new_tokens": 12, "export.max_new_tokens": 64},
        **{"eval.benchmarks": [BENCHMARK]},
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
        **{"eval.max_examples": 4, "eval.benchmarks": [{**BENCHMARK, "limit": 4}]},
    )
    run("dvc", "repro", cwd=repo)
    benchmarked = read_json(repo / "results/evaluate/benchmarks.json")["tasks"]["copy_words"]
    assert benchmarked["samples"] == 4  # scored on the nf4 model, as evaluate
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


def lm_eval_cli_score(repo, model_args: str, output: Path) -> float:
    """What lm-eval's own command line scores for the shipped task, with the stage's setup."""
    run(
        "lm_eval", "--model", "hf", "--model_args", f"{model_args},dtype=float32",
        "--tasks", BENCHMARK["task"], "--include_path", "configs/eval_tasks",
        "--limit", str(BENCHMARK["limit"]), "--num_fewshot", str(BENCHMARK["num_fewshot"]),
        "--batch_size", str(BENCHMARK["batch_size"]), "--device", "cpu", "--apply_chat_template",
        "--output_path", str(output),
        cwd=repo,
    )  # fmt: skip
    (written,) = output.rglob("results_*.json")
    return read_json(written)["results"][BENCHMARK["task"]]["acc,none"]


def test_benchmarks_match_what_lm_eval_itself_scores(smollm2_run, tmp_path):
    record = read_json(smollm2_run / "results/evaluate/benchmarks.json")["tasks"]["copy_words"]
    assert record["samples"] == BENCHMARK["limit"] and record["limit"] == BENCHMARK["limit"]
    base = lm_eval_cli_score(smollm2_run, "pretrained=models/base", tmp_path / "base")
    tuned = lm_eval_cli_score(smollm2_run, "pretrained=models/base,peft=models/adapter", tmp_path / "tuned")
    assert (record["base"], record["tuned"]) == (base, tuned)


def test_a_version_that_forgot_its_base_is_refused_at_promote(smollm2_run, s3, tmp_path):
    """SmolLM2 fine-tuned to reverse words (the run's data set, harmful to what the shipped task
    asks: copying them, which the base does) falls on copy_words; the gate refuses it, and a forced
    promotion is recorded with its reason and the failed check."""
    repo = copy_repo(smollm2_run, tmp_path / "repo", share_cached=True)
    record = read_json(repo / "results/evaluate/benchmarks.json")["tasks"]["copy_words"]
    assert record["base"] - record["tuned"] > 0.1, record
    use_remote(repo, s3, "forgetting")
    commit_all(repo, "SmolLM2 tuned to reverse words")
    run("tuneledger", "register", "--push", cwd=repo)

    refused = run("tuneledger", "promote", "v1.0.0", "--stage", "prod", cwd=repo, check=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    lost = f"copy_words acc {record['base']:.3f} → {record['tuned']:.3f} ({record['change']:+.3f})"
    assert f"forgetting: below its base by more than 0.1: {lost}" in refused.stderr
    assert json.loads(run("gto", "show", "--json", cwd=repo).stdout)["lora-adapter"]["stage"]["prod"] is None

    run("tuneledger", "promote", "v1.0.0", "--stage", "prod", "--force", "--reason", "accepted", cwd=repo)
    (event,) = [e for e in json.loads(run("tuneledger", "history", "--json", cwd=repo).stdout) if e["stage"]]
    assert (event["version"], event["forced"], event["reason"]) == ("v1.0.0", True, "accepted")
    message = run("git", "tag", "-l", "--format=%(contents)", "lora-adapter#prod#*", cwd=repo).stdout
    assert '"failed_checks": ["forgetting"]' in message


KEY = "smollm2-key-0123456789"


@pytest.fixture(scope="module")
def smollm2_served(smollm2_run, s3, tmp_path_factory):
    """The tuned SmolLM2 registered as v1.0.0 and promoted to prod, v1.1.0 beside it (its LoRA B
    negated: another adapter on the same base), both served by one server."""
    repo = copy_repo(smollm2_run, tmp_path_factory.mktemp("smollm2-served") / "repo", share_cached=True)
    scored = read_json(repo / "results/evaluate/answers.json")
    use_remote(repo, s3, "smollm2")
    commit_all(repo, "SmolLM2 tuned on chats")
    run("tuneledger", "register", "--push", cwd=repo)
    # Tuned to reverse words, it no longer copies them (copy_words): the gate's forgetting check
    # refuses it (test_a_version_that_forgot_its_base_is_refused_at_promote); these tests serve it.
    run(
        "tuneledger", "promote", "v1.0.0", "--stage", "prod", "--force", "--reason", "serving tests", cwd=repo
    )
    local = {}
    for question in QUESTIONS:
        (repo / "messages.json").write_text(json.dumps(question))
        local[question[0]["content"]] = run(
            "tuneledger", "generate", "models/export", "--messages", "messages.json", cwd=repo
        ).stdout.strip()
    (repo / "messages.json").unlink()
    other = register_forged_version(repo, -1.0)
    with serving(repo, api_key=KEY) as server:
        yield {"repo": repo, "url": server.url, "local": local, "scored": scored, "other": other}


QUESTIONS = [
    [{"role": "user", "content": "reverse: owl fox bee"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "user", "content": "reverse: red"}],
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Name three colours and say why people like each of them."},
    ],
]


def openai_client(served):
    from openai import OpenAI

    return OpenAI(base_url=f"{served['url']}/v1", api_key=KEY, max_retries=0, timeout=300)


def converse(served, messages, model="lora-adapter", max_tokens=12, stream=False):
    client = openai_client(served)
    if not stream:
        reply = client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, temperature=0
        )
        return reply.choices[0].message.content, reply.model, reply.choices[0].finish_reason
    chunks = list(
        client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return (
        text,
        chunks[0].model,
        next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason),
    )


def test_registered_and_served_to_the_openai_client(smollm2_served):
    """The real `openai` client gets the answer the package gives locally (`tuneledger generate`),
    whole and streamed, ending at <|im_end|>."""
    question = QUESTIONS[0]
    local = smollm2_served["local"][question[0]["content"]]
    text, model, finish = converse(smollm2_served, question)
    assert finish == "stop" and model == "lora-adapter@v1.0.0"
    assert text.strip() == local != ""
    assert converse(smollm2_served, question, stream=True)[0].strip() == local


def test_greedy_answers_batched_equal_each_alone_across_versions(smollm2_served):
    """Two versions, four prompts of mixed lengths, 8 to 64 tokens, streamed and not: sent all at
    once they share batches and each answer equals the same request answered alone."""
    versions = ["lora-adapter@v1.0.0", f"lora-adapter@{smollm2_served['other']}"]
    jobs = [
        (version, i, (8, 24, 64, 40)[i], (i + j) % 2 == 0)
        for j, version in enumerate(versions)
        for i in range(len(QUESTIONS))
    ]

    def ask(job):
        version, question, max_tokens, stream = job
        return converse(smollm2_served, QUESTIONS[question], version, max_tokens, stream)[:2]

    alone = [ask(job) for job in jobs]
    start = threading.Barrier(len(jobs))

    def together(job):
        start.wait()
        return ask(job)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        batched = list(pool.map(together, jobs))
    assert batched == alone
    assert {model for _, model in alone} == set(versions)
    assert [a for a, _ in alone[:4]] != [a for a, _ in alone[4:]]  # each version answers as itself


def test_the_server_answers_what_evaluate_scored(smollm2_served):
    """One decoding path: test conversations sent concurrently get the answers evaluate scored."""
    rows = [
        json.loads(line)
        for line in (smollm2_served["repo"] / "data/prepared/test.jsonl").read_text().splitlines()
    ]
    sample = smollm2_served["scored"][:8]

    def ask(scored):
        turns, _ = chat.prompt_and_answer(rows[scored["row"]])
        return converse(smollm2_served, turns, "lora-adapter@v1.0.0", 12)[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        served = list(pool.map(ask, sample))
    assert served == [row["answer"] for row in sample]


def test_a_client_leaving_mid_batch_stops_only_its_own_row(smollm2_served):
    """Two long answers in one batch; one client reads a chunk and leaves. Its row stops (logged
    499), the other runs to its end and equals its answer alone."""
    import httpx

    stay = {"messages": QUESTIONS[3], "max_tokens": 64}
    alone = converse(smollm2_served, **stay)[0]
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "lora-adapter", "messages": QUESTIONS[1], "max_tokens": 64, "stream": True}
    result = {}

    def staying():
        result["text"] = converse(smollm2_served, **stay)[0]

    other = threading.Thread(target=staying)
    with httpx.stream(
        "POST", f"{smollm2_served['url']}/v1/chat/completions", json=body, headers=headers, timeout=300
    ) as leaving:
        other.start()
        lines = leaving.iter_lines()
        next(line for line in lines if line.startswith("data:"))
    other.join(timeout=300)
    assert result["text"] == alone
    db = sqlite3.connect(smollm2_served["repo"] / DEFAULT_DB)
    deadline = time.monotonic() + 30
    while not db.execute("SELECT COUNT(*) FROM requests WHERE status = 499").fetchone()[0]:
        assert time.monotonic() < deadline, "the abandoned stream was not logged as 499"
        time.sleep(0.2)
