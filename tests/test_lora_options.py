"""peft's LoRA options and the training controls, passed through from params.yaml to peft and trl."""

from __future__ import annotations

import math
import shutil
import signal

import pytest
import torch
import yaml

from conftest import read_json, run, set_params
from test_chat import inside
from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.faults import FAULT_VARIABLE
from tuneledger.core.hashing import sha256_file
from tuneledger.core.params import check_names_transformers_resolves, load_params


def adapted(repo, **lora):
    """The train stage's model (base + fresh adapter) for these lora params."""
    params = load_params(repo / "params.yaml")
    params = params.model_copy(update={"lora": params.lora.model_copy(update=lora)})
    from tuneledger.stages import train

    with inside(repo):
        return train.adapted_model(params)


def adapted_layers(model) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}


def test_target_keywords_are_resolved_by_peft(default_run):
    assert adapted_layers(adapted(default_run, target_modules="auto")) == {"c_attn"}
    assert adapted_layers(adapted(default_run, target_modules="all-linear")) == {"c_attn", "c_proj", "c_fc"}
    assert adapted_layers(adapted(default_run, target_modules=["c_fc"])) == {"c_fc"}


def test_an_unknown_target_is_one_line_from_peft(default_run):
    with pytest.raises(TuneLedgerError) as refused:
        adapted(default_run, target_modules=["q_proj"])
    message = str(refused.value)
    expected = "params.yaml: lora.target_modules: ['q_proj'] not in the base model (it has c_attn"
    assert message.startswith(expected)
    assert "\n" not in message


def test_dora_rslora_and_modules_to_save_reach_peft(default_run):
    model = adapted(default_run, use_dora=True, use_rslora=True, r=4, alpha=8, modules_to_save=["ln_f"])
    config = model.peft_config["default"]
    assert config.use_dora and config.use_rslora and config.modules_to_save == ["ln_f"]
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    assert layer.scaling["default"] == pytest.approx(8 / 4**0.5)  # alpha/sqrt(r)
    assert "default" in layer.lora_magnitude_vector
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("ln_f.modules_to_save" in name for name in trainable)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.report_to", ["wandb"], "train.report_to: wandb not installed; `pip install wandb`"),
        ("train.lr_scheduler", "zigzag", "train.lr_scheduler: unknown 'zigzag'; transformers knows linear"),
        ("train.optim", "adamw_fast", "train.optim: unknown 'adamw_fast'"),
    ],
)
def test_names_transformers_resolves_are_checked_before_training(default_run, key, value, message):
    group, name = key.split(".")
    params = load_params(default_run / "params.yaml")
    params = params.model_copy(update={group: params.train.model_copy(update={name: value})})
    with pytest.raises(TuneLedgerError) as refused:
        check_names_transformers_resolves(params.train)
    assert str(refused.value).startswith(f"params.yaml: {message}") and "\n" not in str(refused.value)


def test_a_bad_name_stops_the_stage_with_one_line_and_keeps_the_adapter(trained_repo):
    set_params(trained_repo, **{"train.optim": "adamw_fast"})
    before = (trained_repo / "models/adapter/adapter_model.safetensors").read_bytes()
    failed = run("python", "-m", "tuneledger.stages.train", cwd=trained_repo, check=False)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert "error: params.yaml: train.optim: unknown 'adamw_fast'" in failed.stderr
    assert (trained_repo / "models/adapter/adapter_model.safetensors").read_bytes() == before


def test_step_controls_reach_the_trainer(trained_repo):
    """max_steps, save_steps, eval_steps, scheduler and optimizer as trl runs them."""
    set_params(
        trained_repo,
        **{"train.max_steps": 12, "train.save_steps": 5, "train.eval_steps": 4, "train.logging_steps": 2},
        **{"train.lr_scheduler": "cosine", "train.optim": "adafactor"},
    )
    run("dvc", "repro", "train", cwd=trained_repo)
    summary = read_json(trained_repo / "results/train/summary.json")
    assert summary["steps"] == 12
    saved = sorted(p.name for p in (trained_repo / "models/checkpoints").glob("checkpoint-*"))
    assert saved == ["checkpoint-10", "checkpoint-12"]  # every 5 steps and the last, keep_checkpoints 2
    state = read_json(trained_repo / "models/checkpoints/checkpoint-12/trainer_state.json")
    assert [e["step"] for e in state["log_history"] if "eval_loss" in e] == [4, 8, 12]
    rates = {e["step"]: e["learning_rate"] for e in state["log_history"] if "learning_rate" in e}
    # the rate logged at step s is the one step s used: the schedule after s - 1 steps
    peak = yaml.safe_load((trained_repo / "params.yaml").read_text())["train"]["lr"]
    cosine = {step: peak * 0.5 * (1 + math.cos(math.pi * (step - 1) / 12)) for step in rates}
    assert rates == pytest.approx(cosine, rel=1e-3)
    optimizer = torch.load(trained_repo / "models/checkpoints/checkpoint-12/optimizer.pt", weights_only=True)
    assert any("exp_avg_sq_row" in slot for slot in optimizer["state"][0])  # Adafactor's factored state
    assert not (trained_repo / "results/train/plots/metrics/train/train_runtime.tsv").exists()
    logged = {p.stem for p in (trained_repo / "results/train/plots/metrics/eval").glob("*.tsv")}
    assert "loss" in logged and not logged & {"runtime", "samples_per_second", "steps_per_second"}


def test_a_kill_after_a_mid_epoch_checkpoint_resumes_byte_identical(trained_repo):
    """60 steps an epoch, a checkpoint every 10: killed right after sealing step 10, resumed from it."""
    adapter = trained_repo / "models/adapter/adapter_model.safetensors"
    set_params(trained_repo, **{"train.max_steps": 25, "train.save_steps": 10, "train.eval_steps": 15})
    run("python", "-m", "tuneledger.stages.train", cwd=trained_repo)
    reference = sha256_file(adapter)
    shutil.rmtree(trained_repo / "models/checkpoints")
    killed = run(
        "python",
        "-m",
        "tuneledger.stages.train",
        cwd=trained_repo,
        check=False,
        env={FAULT_VARIABLE: "train:sealed:10"},
    )
    assert killed.returncode == -signal.SIGKILL
    assert sha256_file(adapter) == reference  # the earlier adapter is untouched by the killed run
    resumed = run("python", "-m", "tuneledger.stages.train", cwd=trained_repo)
    assert "resuming from models/checkpoints/checkpoint-10" in resumed.stderr
    assert sha256_file(adapter) == reference
