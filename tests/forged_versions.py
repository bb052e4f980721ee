"""Registered versions made without training, for tests and `make bench`: the workspace's package
with its LoRA B weights scaled (another adapter on the same base, so other answers), optionally
recording another base (a version a shared base must refuse)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def _run(*cmd: str, cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def register_forged_version(repo: Path, lora_b_scale: float, base_sha256: str | None = None) -> str:
    """Register such a version from `repo`'s workspace; returns it. The package's own code rebuilds
    its content id and manifest, DVC commits it, and `tuneledger register --push` registers it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from tuneledger.package import manifest, metadata
    from tuneledger.package.files import METADATA

    package = repo / "models/export"
    _run("dvc", "unprotect", "models/export", cwd=repo)
    weights = package / "adapter_model.safetensors"
    with safe_open(weights, "pt") as handle:
        header = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    scaled = {name: t * lora_b_scale if "lora_B" in name else t for name, t in tensors.items()}
    save_file(scaled, weights, metadata=header)
    meta = metadata.read(package / METADATA)
    meta["content_id"] = manifest.content_id(package, manifest.package_files(package))
    if base_sha256 is not None:
        meta["base_model"]["sha256"] = base_sha256
    (package / METADATA).write_text(metadata.to_json(meta))
    (repo / "models/export.manifest.json").write_text(manifest.build(package).to_json())
    _run("dvc", "commit", "--force", "export", cwd=repo)
    _run("git", "add", "-A", cwd=repo)
    _run("git", "commit", "-q", "-m", f"a version with LoRA B x{lora_b_scale}", cwd=repo)
    registered = _run("tuneledger", "register", "--push", cwd=repo)
    return re.search(r"registered \S+@(v[\d.]+)", registered).group(1)
