"""Rebuilding a registered version from its commit, to prove the registry's bytes can be remade."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tuneledger.core import git, kernels
from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.layout import manifest_path_for
from tuneledger.package import manifest, metadata
from tuneledger.package.files import METADATA
from tuneledger.package.manifest import Manifest
from tuneledger.registry.versions import Resolved, download_verified, scratch_dir


@dataclass
class Reproduction:
    version: str
    expected: str
    rebuilt: str
    differing: list[str] = field(default_factory=list)  # model-defining files whose bytes changed
    built_on: str | None = None  # the CPU each side trained on
    rebuilt_on: str | None = None
    # The first op whose kernel fingerprint differs between the two machines; None when they agree
    # or when the version records no fingerprint (kernels_compared says which).
    first_differing_op: str | None = None
    kernels_compared: bool = False
    settings_changed: dict[str, list] = field(default_factory=dict)  # kernel setting → [built, rebuilt]

    @property
    def identical(self) -> bool:
        return self.expected == self.rebuilt

    def explanation(self) -> str:
        """Why the bytes differ, in one line: another CPU's kernels, or a bug."""
        if not self.kernels_compared:
            return (
                "the version records no kernel fingerprint, so the two machines' kernels cannot be compared"
            )
        if self.first_differing_op:
            settings = "; ".join(f"{k} {a} → {b}" for k, (a, b) in self.settings_changed.items())
            return (
                f"the kernels round differently: built on {self.built_on}, rebuilt on {self.rebuilt_on}"
                f"{f' ({settings})' if settings else ''}, fingerprints part at `{self.first_differing_op}`; "
                "byte identity holds only between machines whose fingerprints agree"
            )
        return (
            f"both machines' kernel fingerprints agree ({self.built_on}; {self.rebuilt_on}), so this is a "
            "reproducibility bug: please report it with both metadata.json files"
        )


def rebuild_in_worktree(resolved: Resolved) -> Reproduction:
    """`dvc repro` of the version's commit in a temporary git worktree sharing this cache."""
    with_dvc = git.run_git("rev-parse", "--show-toplevel")
    cache = subprocess.run(
        [sys.executable, "-m", "dvc", "cache", "dir"], capture_output=True, text=True, cwd=with_dvc
    )
    worktree = scratch_dir() / "worktree"
    git.run_git("worktree", "add", "--detach", str(worktree), resolved.commit)
    try:
        local_config = Path(with_dvc) / ".dvc" / "config.local"
        if local_config.is_file():  # remote credentials live outside git
            shutil.copyfile(local_config, worktree / ".dvc" / "config.local")
        if cache.returncode == 0 and cache.stdout.strip():
            _run(["dvc", "cache", "dir", "--local", cache.stdout.strip()], worktree)
        # The worktree's own code must run, not the installed one.
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(worktree / "src"), os.environ.get("PYTHONPATH")])
            ),
        }
        _run(["dvc", "repro"], worktree, env)
        package = worktree / resolved.path
        rebuilt = manifest.read(manifest_path_for(package))
        result = Reproduction(resolved.version, resolved.manifest.content_id, rebuilt.content_id)
        if not result.identical:
            result.differing = _differing(resolved, package, rebuilt)
            _compare_kernels(result, resolved, package)
    finally:
        git.run_git("worktree", "remove", "--force", str(worktree), check=False)
        shutil.rmtree(worktree.parent, ignore_errors=True)
    return result


def _compare_kernels(result: Reproduction, resolved: Resolved, rebuilt_package: Path) -> None:
    """Fingerprints first: two CPUs that round differently are expected to differ, two that agree not."""
    workdir = scratch_dir()
    try:
        package = download_verified(resolved, workdir, [METADATA])
        original = metadata.read(package / METADATA)["environment"].get("kernels")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rebuilt = metadata.read(rebuilt_package / METADATA)["environment"]["kernels"]
    result.rebuilt_on = rebuilt["cpu"]
    if original:
        result.kernels_compared = True
        result.built_on = original["cpu"]
        result.first_differing_op = kernels.first_difference(original, rebuilt)
        before, after = original.get("settings", {}), rebuilt["settings"]
        result.settings_changed = {
            k: [before.get(k), after.get(k)] for k in after if before.get(k) != after.get(k)
        }


def _differing(resolved: Resolved, rebuilt_package: Path, rebuilt: Manifest) -> list[str]:
    """Model-defining files whose identity changed (a safetensors header stamp alone does not count)."""
    if rebuilt.content_id == resolved.manifest.content_id:
        return []
    original_names = manifest.defining_files(list(resolved.manifest.files))
    workdir = scratch_dir()
    try:
        original = manifest.identities(download_verified(resolved, workdir, original_names), original_names)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    new = manifest.identities(rebuilt_package, list(rebuilt.files))
    return sorted(n for n in {*original, *new} if original.get(n) != new.get(n))


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> None:
    bindir = Path(sys.executable).parent
    env = dict(env or os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise TuneLedgerError(f"{' '.join(cmd)} failed in the rebuild worktree: {' | '.join(tail)}")
