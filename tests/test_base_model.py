"""`model.base`: the built-in tiny GPT-2, a local directory, or a hub id through the HF cache (offline)."""

from __future__ import annotations

import shutil

import pytest
import torch

from conftest import read_json, run, set_params
from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.hashing import tree_digest
from tuneledger.models.base_model import snapshot

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(root, repo_id: str, model_dir) -> None:
    """The on-disk layout huggingface_hub keeps for a downloaded repo (refs/main → snapshot)."""
    entry = root / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, entry / "snapshots" / COMMIT, ignore=shutil.ignore_patterns("tuneledger-*"))
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(COMMIT)


def test_builtin_base_learnt_the_format(default_run):
    """The built-in base copies in the task format (so the fine-tuning task is visibly new to it)."""
    source = read_json(default_run / "models/base/tuneledger-source.json")
    assert source == {"id": "builtin:tiny-gpt2", "kind": "builtin", "revision": None, "chat_template": None}
    config = read_json(default_run / "models/base/config.json")
    assert (config["n_layer"], config["n_head"], config["n_embd"]) == (2, 4, 128)


def test_local_directory_is_snapshotted_without_pickles(default_run, tmp_path):
    src = tmp_path / "my-model"
    shutil.copytree(default_run / "models/base", src)
    torch.save({"x": torch.zeros(1)}, src / "pytorch_model.bin")
    out = tmp_path / "out"
    out.mkdir()
    record = snapshot(str(src), None, None, out)
    assert record["kind"] == "local"
    assert not (out / "pytorch_model.bin").exists()
    assert (out / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()


def test_pickle_only_directory_is_refused(tmp_path):
    src = tmp_path / "old-model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    torch.save({"x": torch.zeros(1)}, src / "pytorch_model.bin")
    with pytest.raises(
        TuneLedgerError, match=r"no \*.safetensors weights in .*pickle weights \['pytorch_model.bin'\]"
    ):
        snapshot(str(src), None, None, tmp_path)


def test_hub_id_resolves_through_the_offline_cache(default_run, project_copy, tmp_path):
    cache = tmp_path / "hf-cache"
    fake_hub_cache(cache, "acme/tiny-gpt2", default_run / "models/base")
    set_params(project_copy, **{"model.base": "acme/tiny-gpt2", "model.revision": "main"})
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    run("python", "-m", "tuneledger.stages.base", cwd=project_copy, env=env)
    source = read_json(project_copy / "models/base/tuneledger-source.json")
    assert source == {"id": "acme/tiny-gpt2", "kind": "hub", "revision": COMMIT, "chat_template": None}
    _, files = tree_digest(project_copy / "models/base")
    _, original = tree_digest(default_run / "models/base")
    assert files["model.safetensors"] == original["model.safetensors"]
    # one copy on disk: the snapshot shares the bytes of the hub cache instead of copying them
    cached = cache / "models--acme--tiny-gpt2" / "snapshots" / COMMIT / "model.safetensors"
    assert (project_copy / "models/base/model.safetensors").stat().st_ino == cached.stat().st_ino

    set_params(project_copy, **{"model.base": "acme/missing"})
    failed = run("python", "-m", "tuneledger.stages.base", cwd=project_copy, env=env, check=False)
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: model.base: base model 'acme/missing' not found")
    assert "Traceback" not in failed.stderr
