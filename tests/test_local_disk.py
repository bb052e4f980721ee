"""One copy of each output on local disk: the workspace and the DVC cache share bytes (hardlinks,
`cache.type` in .dvc/config), and no stage ever writes through such a link into the cache: every
output is published by renaming a freshly built directory into place."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import copy_repo, run, set_params


def cached_outputs(repo: Path) -> list[Path]:
    """Outputs that DVC stores in its cache (the `cache: false` ones are git's business)."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())
    found = []
    for stage in spec["stages"].values():
        for out in stage.get("outs", []):
            path, options = (out, {}) if isinstance(out, str) else next(iter(out.items()))
            if options.get("cache", True):
                found.append(Path(path))
    return found


def cache_object(repo: Path, md5: str) -> Path:
    return repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]


def workspace_objects(repo: Path, stages: tuple[str, ...] | None = None) -> list[tuple[Path, Path]]:
    """(workspace file, its cache object) for every file of every cached output in dvc.lock."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    wanted = {str(path) for path in cached_outputs(repo)}
    pairs = []
    for name, stage in lock["stages"].items():
        if stages is not None and name not in stages:
            continue
        for out in stage.get("outs", []):
            if out["path"] not in wanted:
                continue
            if out["md5"].endswith(".dir"):
                listing = json.loads(cache_object(repo, out["md5"]).read_text())
                pairs += [(repo / out["path"] / e["relpath"], cache_object(repo, e["md5"])) for e in listing]
            else:
                pairs.append((repo / out["path"], cache_object(repo, out["md5"])))
    return pairs


def unlinked(repo: Path, stages: tuple[str, ...] | None = None) -> list[str]:
    """Workspace files that are a second copy of their cache object rather than the same inode.

    A file whose bytes another output file also holds (the final adapter and the last checkpoint's,
    the trainer's identical READMEs) is one object: DVC links one of them and leaves the others as
    they are, so only an object that no workspace file links counts."""
    pairs = workspace_objects(repo, stages)
    linked = {obj for w, obj in pairs if os.path.samefile(w, obj)}
    return [str(w.relative_to(repo)) for w, obj in pairs if obj not in linked]


def corrupt_objects(repo: Path) -> list[str]:
    """Cache objects whose bytes no longer have the MD5 they are named by (content-addressed store)."""
    bad = []
    for obj in sorted((repo / ".dvc/cache/files/md5").glob("*/*")):
        digest = hashlib.md5(obj.read_bytes()).hexdigest()
        if obj.parent.name + obj.name.removesuffix(".dir") != digest:
            bad.append(f"{obj.parent.name}/{obj.name}")
    return bad


def disk_bytes(root: Path) -> int:
    """Allocated bytes under root, each inode counted once (as `du` does with hardlinks)."""
    seen, total = set(), 0
    for folder, _, files in os.walk(root):
        for name in files:
            info = os.lstat(os.path.join(folder, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def test_every_cached_output_is_one_inode_shared_with_the_cache(default_run):
    pairs = workspace_objects(default_run)
    assert {w.relative_to(default_run).parts[:2] for w, _ in pairs} >= {
        ("models", "base"),
        ("models", "adapter"),
        ("models", "checkpoints"),
        ("models", "export"),
        ("data", "prepared"),
    }
    assert unlinked(default_run) == []
    weights = (default_run / "models/base/model.safetensors").stat()
    assert weights.st_nlink >= 2 and weights.st_mode & 0o222 == 0  # DVC makes linked files read-only


@pytest.mark.slow
def test_runs_over_linked_outputs_never_write_into_the_cache(default_run, tmp_path):
    """Two more runs over outputs that are links into the cache: a change that reruns every stage
    (the base is rebuilt byte for byte, the checkpoints replaced), then a forced train that resumes
    from the final, linked checkpoint. Every cache object still has the MD5 it is named by."""
    repo = copy_repo(default_run, tmp_path / "repo")  # a copy holds plain files: link them again
    run("dvc", "checkout", "--relink", cwd=repo)
    assert unlinked(repo) == []
    objects_before = {p.name for p in (repo / ".dvc/cache/files/md5").glob("*/*")}

    set_params(repo, **{"data.builtin_rows": 600, "train.max_steps": 6, "train.save_steps": 3})
    changed = run("dvc", "repro", cwd=repo)
    assert "Running stage 'prepare'" in changed.stdout and "Running stage 'export'" in changed.stdout
    resumed = run("dvc", "repro", "--force", "--single-item", "train", cwd=repo)
    assert "resuming from models/checkpoints/checkpoint-6" in resumed.stdout + resumed.stderr

    assert corrupt_objects(repo) == []
    assert unlinked(repo) == []
    base_weights = next(obj for w, obj in workspace_objects(repo) if w.name == "model.safetensors")
    assert base_weights.name in objects_before  # rebuilt byte for byte: stored once, not again

    # The check is not vacuous: a write through a link is exactly what it catches.
    victim, victim_object = next(
        (w, obj) for w, obj in workspace_objects(repo) if w.name == "config.json" and "base" in w.parts
    )
    victim.chmod(0o644)  # as a tool that ignores DVC's read-only protection would
    with open(victim, "r+b") as handle:
        handle.write(b" ")
    assert corrupt_objects(repo) == [f"{victim_object.parent.name}/{victim_object.name}"]


@pytest.mark.slow
def test_the_base_stage_keeps_one_local_copy_of_a_real_base(smollm2, project_copy):
    """SmolLM2-135M (538 MB) as a local base: `models/base` plus the cache add ≤ 1.05× its bytes."""
    base_bytes = disk_bytes(smollm2)
    set_params(project_copy, **{"model.base": str(smollm2)})
    before = disk_bytes(project_copy)
    run("dvc", "repro", "base", cwd=project_copy)
    added = disk_bytes(project_copy) - before
    assert unlinked(project_copy, stages=("base",)) == []
    assert base_bytes <= added <= 1.05 * base_bytes, f"base added {added:,} B for a {base_bytes:,} B base"
