"""The scale path: real DDP through the train stage's launcher, parallel sweeps, other architectures."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from conftest import copy_repo, read_json, run, set_params
from tuneledger.core.faults import FAULT_VARIABLE
from tuneledger.package.weights import tensor_shapes


def lora_targets(adapter) -> set[str]:
    return {
        name.split(".lora_A")[0].rsplit(".", 1)[-1] for name in tensor_shapes(adapter) if ".lora_A." in name
    }


def test_ddp_with_two_cpu_processes_through_dvc_exp_run(trained_repo):
    """`-S train.launcher=...` runs the unchanged stage under torchrun: world size 2, gloo. It is
    compared with one process at the same global batch (32), on this machine: the steps, and where
    the two end, must agree."""
    # The reference: its training alone (what follows `train` is read of the two-process run only).
    run("dvc", "exp", "run", "train", "-S", "train.batch_size=32", cwd=trained_repo)
    single = read_json(trained_repo / "results/train/metrics.json")["eval"]["loss"]
    single_steps = read_json(trained_repo / "results/train/summary.json")["steps"]
    launcher = "train.launcher=torchrun --nproc_per_node 2"
    done = run("dvc", "exp", "run", "-S", launcher, "-S", "train.batch_size=16", cwd=trained_repo)
    log = done.stdout + done.stderr
    assert log.count("world size 2") == 1  # rank 0 alone reports and writes
    summary = read_json(trained_repo / "results/train/summary.json")
    assert summary["world_size"] == 2 and summary["steps"] == single_steps == 180  # global batch 32
    ddp = read_json(trained_repo / "results/train/metrics.json")["eval"]["loss"]
    assert abs(ddp - single) < 0.05, (ddp, single)
    assert lora_targets(trained_repo / "models/adapter/adapter_model.safetensors") == {"c_attn"}
    tuned = read_json(trained_repo / "results/evaluate/metrics.json")["tuned"]
    assert tuned["exact_match"] >= 0.9
    assert "ok:" in run("tuneledger", "verify", cwd=trained_repo).stdout
    assert not list((trained_repo / "results").glob("train.partial*"))


def test_a_two_variant_queue_runs_in_parallel(variant, tmp_path):
    repo = copy_repo(variant[0], tmp_path / "repo")
    run("git", "stash", "-q", cwd=repo)  # back to the committed default, outputs from the cache
    run("dvc", "checkout", "--force", cwd=repo)
    short = ["-S", "train.max_steps=30", "-S", "eval.max_examples=32"]
    run("dvc", "exp", "run", "--queue", "-S", "lora.r=2,16", *short, cwd=repo)
    subprocess.run(
        ["dvc", "queue", "start", "-j", "2"],
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    deadline = time.monotonic() + 900
    status = ""
    while time.monotonic() < deadline:
        status = run("dvc", "queue", "status", cwd=repo).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert status.count("Success") == 2, status
    rows = json.loads(run("dvc", "exp", "show", "--json", cwd=repo).stdout)
    baseline = next(row for row in rows if row["rev"] != "workspace")
    runs = [rev for exp in baseline["experiments"] or [] for rev in exp["revs"]]
    ranks = {r["data"]["params"]["params.yaml"]["data"]["lora"]["r"]: r for r in runs}
    assert {2, 16} <= set(ranks)
    for r in (2, 16):
        metrics = ranks[r]["data"]["metrics"]["results/evaluate/metrics.json"]["data"]
        assert metrics["tuned"]["loss"] < metrics["base"]["loss"]


@pytest.fixture
def tiny_llama(default_run, tmp_path):
    """A LLaMA-architecture model with random weights, saved like any Hugging Face model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM, set_seed

    tokenizer_config = read_json(default_run / "models/base/config.json")
    set_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer_config["vocab_size"],
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    target = tmp_path / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(target)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(default_run / "models/base" / name, target / name)
    return target


def test_a_llama_style_base_with_auto_targets(project_copy, tiny_llama):
    set_params(
        project_copy,
        **{
            "model.base": str(tiny_llama),
            "lora.target_modules": "auto",
            "data.builtin_rows": 200,
            "train.epochs": 1,
        },
    )
    run("dvc", "repro", cwd=project_copy)
    assert lora_targets(project_copy / "models/adapter/adapter_model.safetensors") == {"q_proj", "v_proj"}
    meta = read_json(project_copy / "models/export/metadata.json")
    assert meta["adapter"]["target_modules_from_weights"] == ["q_proj", "v_proj"]
    assert meta["base_model"]["kind"] == "local"
    assert read_json(project_copy / "models/export/signature.json")["inputs"]["prompt"]["max_tokens"] == 96
    assert "ok:" in run("tuneledger", "verify", cwd=project_copy).stdout


def test_unknown_targets_name_what_the_model_has(project_copy, tiny_llama):
    set_params(
        project_copy,
        **{"model.base": str(tiny_llama), "lora.target_modules": ["c_attn"], "data.builtin_rows": 50},
    )
    failed = run("dvc", "repro", cwd=project_copy, check=False)
    assert failed.returncode != 0
    assert (
        "lora.target_modules: ['c_attn'] not in the base model (it has down_proj, gate_proj, k_proj"
        in failed.stderr
    )


FSDP = "accelerate launch --config_file configs/accelerate/fsdp_cpu.yaml"


def test_fsdp_with_two_cpu_processes_writes_one_whole_adapter(trained_repo):
    """FSDP v2 through the same stage: sharded while training, one complete adapter from rank 0,
    loadable by plain peft; a kill after a checkpoint resumes; the sharding is in the configuration."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    single = tensor_shapes(trained_repo / "models/adapter/adapter_model.safetensors")
    set_params(trained_repo, **{"train.launcher": FSDP, "train.max_steps": 20, "train.save_steps": 10})
    killed = run(
        "dvc", "repro", "train", cwd=trained_repo, check=False, env={FAULT_VARIABLE: "train:sealed:10"}
    )
    assert killed.returncode != 0
    seal = read_json(trained_repo / "models/checkpoints/checkpoint-10/tuneledger-seal.json")
    done = run("dvc", "repro", "train", cwd=trained_repo)
    log = done.stdout + done.stderr
    assert "resuming from models/checkpoints/checkpoint-10" in log and log.count("world size 2") == 1
    summary = read_json(trained_repo / "results/train/summary.json")
    assert summary["world_size"] == 2 and summary["steps"] == 20 and summary["sharding"].startswith("fsdp2")
    assert summary["config_id"] == seal["config_id"]
    adapter = trained_repo / "models/adapter/adapter_model.safetensors"
    assert tensor_shapes(adapter) == single  # the whole adapter, not one rank's shard
    base = AutoModelForCausalLM.from_pretrained(trained_repo / "models/base", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, trained_repo / "models/adapter")
    assert not any(torch.count_nonzero(p) == 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_sharding_and_world_size_are_part_of_the_training_configuration(default_run, monkeypatch):
    from test_chat import inside
    from tuneledger.core.params import load_params
    from tuneledger.stages import train

    params = load_params(default_run / "params.yaml")
    with inside(default_run):
        plain = train.config_id(params)
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
        monkeypatch.setenv("FSDP_VERSION", "2")
        sharded = train.config_id(params)
    assert plain != sharded and train.sharding() == "fsdp2"
