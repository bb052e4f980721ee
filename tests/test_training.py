"""Training resumes only from complete checkpoints of its own configuration, byte for byte."""

from __future__ import annotations

from conftest import run
from tuneledger.core.hashing import sha256_file
from tuneledger.models.checkpoints import SEAL

ADAPTER = "models/adapter/adapter_model.safetensors"


def _sealed(repo):
    return sorted((repo / "models/checkpoints").glob(f"checkpoint-*/{SEAL}"))


def test_an_unsealed_checkpoint_is_never_resumed(trained_repo):
    """A kill while the trainer writes checkpoint-360 leaves it without a seal: fall back to 300."""
    reference = sha256_file(trained_repo / ADAPTER)
    newest = _sealed(trained_repo)[-1].parent
    (newest / SEAL).unlink()
    (newest / "optimizer.pt").write_bytes(b"half")
    rerun = run("python", "-m", "tuneledger.stages.train", cwd=trained_repo)
    assert "resuming from models/checkpoints/checkpoint-300" in rerun.stderr
    assert sha256_file(trained_repo / ADAPTER) == reference
