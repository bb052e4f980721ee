"""`train.launcher` never reaches a shell, and a launcher that does not train cannot pass for training.

DVC runs one fixed command for the train stage; the stage validates the launcher and starts it from
an argv list, then checks that the run it started published the outputs."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import run, set_params
from tuneledger.stages.launcher import launcher_argv


def _state(repo: Path) -> tuple[str, bytes]:
    return (repo / "dvc.lock").read_text(), (repo / "models/adapter/adapter_model.safetensors").read_bytes()


def test_shell_text_in_the_launcher_runs_nothing_and_records_nothing(trained_repo):
    before = _state(trained_repo)
    set_params(trained_repo, **{"train.launcher": """python -c 'open("INJECTED", "w")' #"""})
    done = run("dvc", "repro", cwd=trained_repo, check=False)
    assert done.returncode != 0
    assert "params.yaml: train.launcher: options may hold only letters" in done.stdout + done.stderr
    assert not (trained_repo / "INJECTED").exists()
    assert _state(trained_repo) == before


def test_a_launcher_that_exits_0_without_training_fails_the_stage(trained_repo):
    """`torchrun --help` exits 0: DVC would record the old adapter under the new params."""
    before = _state(trained_repo)
    set_params(trained_repo, **{"train.launcher": "torchrun --help", "train.lr": 0.004})
    done = run("dvc", "repro", cwd=trained_repo, check=False)
    assert done.returncode != 0
    assert "train.launcher 'torchrun --help' exited 0 without training" in done.stdout + done.stderr
    assert _state(trained_repo) == before


def test_the_launcher_is_an_argv_list_from_this_environment():
    here = Path(sys.executable).parent
    assert launcher_argv("torchrun --nproc_per_node 2") == [
        str(here / "torchrun"),
        "--nproc_per_node",
        "2",
        "-m",
        "tuneledger.stages.train",
    ]
    assert launcher_argv("accelerate launch --config_file a.yaml")[:3] == [
        str(here / "accelerate"),
        "launch",
        "--config_file",
    ]
