"""Training resumes only from complete checkpoints of its own configuration, byte for byte."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from conftest import read_json, run
from tuneledger.checkpoints import SEAL
from tuneledger.hashing import sha256_file

ADAPTER = "models/adapter/adapter_model.safetensors"


def _sealed(repo):
    return sorted((repo / "models/checkpoints").glob(f"checkpoint-*/{SEAL}"))


def test_kill_9_mid_training_then_rerun_resumes_to_the_same_bytes(trained_repo):
    reference = sha256_file(trained_repo / ADAPTER)
    shutil.rmtree(trained_repo / "models/checkpoints")
    shutil.rmtree(trained_repo / "models/adapter")
    proc = subprocess.Popen(
        ["python", "-m", "tuneledger.stages.train"],
        cwd=trained_repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not _sealed(trained_repo) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before the first checkpoint could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (trained_repo / ADAPTER).exists()

    rerun = run("python", "-m", "tuneledger.stages.train", cwd=trained_repo)
    assert "resuming from models/checkpoints/checkpoint-" in rerun.stderr
    assert sha256_file(trained_repo / ADAPTER) == reference
    assert read_json(trained_repo / "results/train/summary.json")["resumed_from"].startswith(
        "models/checkpoints/"
    )


def test_an_unsealed_checkpoint_is_never_resumed(trained_repo):
    """A kill while the trainer writes checkpoint-360 leaves it without a seal: fall back to 300."""
    reference = sha256_file(trained_repo / ADAPTER)
    newest = _sealed(trained_repo)[-1].parent
    (newest / SEAL).unlink()
    (newest / "optimizer.pt").write_bytes(b"half")
    rerun = run("python", "-m", "tuneledger.stages.train", cwd=trained_repo)
    assert "resuming from models/checkpoints/checkpoint-300" in rerun.stderr
    assert sha256_file(trained_repo / ADAPTER) == reference
