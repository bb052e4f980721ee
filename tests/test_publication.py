"""All-or-nothing publication, and never deleting what the tool did not make.

Kills are deterministic: `TUNELEDGER_FAULT=<point>` SIGKILLs the process at a named point
(tuneledger/core/faults.py), so each window between two renames is hit exactly. A rerun is then
killed right after it has begun (`publish:begun`), which shows what every rerun starts from.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from conftest import run, set_params
from tuneledger.core.errors import TuneLedgerError
from tuneledger.package.verify import VerificationFailed, verify

KILLED = -signal.SIGKILL

PUBLISH = """
import sys
from tuneledger.core.publication import Publication

with Publication("out/package", "out/package.json") as outputs:
    staged = outputs.staged_dir("out/package")
    for name in ("weights", "config"):
        (staged / name).write_text("new")
    outputs.staged_file("out/package.json").write_text("new")
"""
BEFORE_JOURNAL = ["publish:staged"]
AFTER_JOURNAL = [
    "publish:journal",
    "publish:aside:0",
    "publish:moved:0",
    "publish:aside:1",
    "publish:moved:1",
    "publish:cleaned",
]


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` with its text: what a reader of the outputs would see."""
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def publish(cwd: Path, fault: str | None = None):
    env = {"TUNELEDGER_FAULT": fault} if fault else {}
    return run(sys.executable, "-c", PUBLISH, cwd=cwd, check=False, env=env)


def old_outputs(cwd: Path) -> dict[str, str]:
    (cwd / "out/package").mkdir(parents=True)
    for name in ("weights", "tokenizer"):
        (cwd / "out/package" / name).write_text("old")
    (cwd / "out/package.json").write_text("old")
    # Look-alikes of the staging names: the user's, never to be touched.
    (cwd / "out/.package.backup-2024").mkdir()
    (cwd / "out/.package.backup-2024/thesis.tex").write_text("mine")
    (cwd / "out/.package.json.old").write_text("mine")
    return tree(cwd / "out")


NEW = {
    ".package.backup-2024/thesis.tex": "mine",
    ".package.json.old": "mine",
    "package.json": "new",
    "package/config": "new",
    "package/weights": "new",
}


@pytest.mark.faults
@pytest.mark.parametrize("point", BEFORE_JOURNAL + AFTER_JOURNAL)
def test_a_kill_at_any_point_leaves_the_complete_old_or_the_complete_new_outputs(tmp_path, point):
    old = old_outputs(tmp_path)
    assert publish(tmp_path, point).returncode == KILLED
    assert publish(tmp_path, "publish:begun").returncode == KILLED  # a rerun, stopped once it began
    assert tree(tmp_path / "out") == (old if point in BEFORE_JOURNAL else NEW)
    assert publish(tmp_path).returncode == 0
    assert tree(tmp_path / "out") == NEW


@pytest.mark.faults
def test_the_windows_are_real(tmp_path):
    """Without the journal's roll-forward, a kill between the renames would leave a mixture."""
    old_outputs(tmp_path)
    assert publish(tmp_path, "publish:moved:0").returncode == KILLED
    assert (tmp_path / "out/package/weights").read_text() == "new"
    assert (tmp_path / "out/package.json").read_text() == "old"


def test_a_failure_while_staging_discards_the_staged_outputs_only(tmp_path, monkeypatch):
    from tuneledger.core.publication import Publication

    old = old_outputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError), Publication("out/package", "out/package.json") as outputs:
        (outputs.staged_dir("out/package") / "weights").write_text("half")
        raise RuntimeError("disk on fire")
    assert tree(tmp_path / "out") == old


# --- Each stage publishes all its outputs in one publication -------------------------------------


def run_stage(repo: Path, stage: str, fault: str):
    return run(
        sys.executable,
        "-m",
        f"tuneledger.stages.{stage}",
        cwd=repo,
        check=False,
        env={"TUNELEDGER_FAULT": fault},
    )


@pytest.mark.slow
@pytest.mark.faults
def test_export_killed_between_package_and_manifest_reruns_into_a_verified_package(trained_repo):
    (trained_repo / "models/.export.backup").mkdir()
    (trained_repo / "models/.export.backup/keep.txt").write_text("mine")
    set_params(trained_repo, **{"export.max_new_tokens": 16})  # the new package differs from the old
    stage = "export"
    assert run_stage(trained_repo, stage, "publish:moved:0").returncode == KILLED
    with pytest.raises(VerificationFailed):  # the window: new package, old manifest
        verify(trained_repo / "models/export")
    assert run_stage(trained_repo, stage, "publish:begun").returncode == KILLED
    verify(trained_repo / "models/export")
    signature = json.loads((trained_repo / "models/export/signature.json").read_text())
    assert signature["params"]["max_new_tokens"]["maximum"] == 16
    assert (trained_repo / "models/.export.backup/keep.txt").read_text() == "mine"


@pytest.mark.slow
@pytest.mark.faults
def test_train_killed_between_adapter_and_logs_reruns_into_matching_outputs(trained_repo):
    old_summary = (trained_repo / "results/train/summary.json").read_text()
    stage = "train"
    assert run_stage(trained_repo, stage, "publish:moved:0").returncode == KILLED
    assert (trained_repo / "results/train/summary.json").read_text() == old_summary  # the window
    assert run_stage(trained_repo, stage, "publish:begun").returncode == KILLED
    new_summary = (trained_repo / "results/train/summary.json").read_text()
    assert new_summary != old_summary and '"resumed_from": "models/checkpoints/' in new_summary
    assert (trained_repo / "models/adapter/adapter_model.safetensors").is_file()
    assert (trained_repo / "results/train/plots").is_dir()


@pytest.mark.slow
@pytest.mark.faults
def test_base_killed_between_snapshot_and_record_reruns_into_matching_outputs(trained_repo, tmp_path):
    import shutil

    local_base = shutil.copytree(trained_repo / "models/base", tmp_path / "my-base")
    set_params(trained_repo, **{"model.base": str(local_base)})
    old_record = (trained_repo / "results/base/build.json").read_text()
    stage = "base"
    assert run_stage(trained_repo, stage, "publish:moved:0").returncode == KILLED
    source = (trained_repo / "models/base/tuneledger-source.json").read_text()
    assert str(local_base) in source  # the window: the new snapshot, the old build record
    assert (trained_repo / "results/base/build.json").read_text() == old_record
    assert run_stage(trained_repo, stage, "publish:begun").returncode == KILLED
    record = json.loads((trained_repo / "results/base/build.json").read_text())
    assert record["source"] == str(local_base) and record["built_on"] is None  # copied, not built here
    assert (trained_repo / "models/base/tuneledger-source.json").read_text() == source


# --- fetch: all or nothing, and never over the user's files ---------------------------------------


def fetch(repo: Path, *args: str, fault: str | None = None):
    env = {"TUNELEDGER_FAULT": fault} if fault else {}
    return run("tuneledger", "fetch", *args, cwd=repo, check=False, env=env)


@pytest.mark.faults
def test_fetch_killed_between_package_and_manifest_reruns_into_a_verified_package(registry_copy):
    assert fetch(registry_copy, "--version", "v1.1.0", "-o", "deploy", "--with-base").returncode == 0
    v1 = ("--version", "v1.0.0", "-o", "deploy", "--with-base")
    assert fetch(registry_copy, *v1, fault="publish:moved:0").returncode == KILLED
    with pytest.raises(VerificationFailed):
        verify(registry_copy / "deploy", registry_copy / "deploy.manifest.json")
    assert fetch(registry_copy, *v1, fault="publish:begun").returncode == KILLED
    verify(registry_copy / "deploy", registry_copy / "deploy.manifest.json")
    assert "v1.0.0" not in (registry_copy / "deploy.manifest.json").read_text()  # manifests hold no tag
    assert fetch(registry_copy, *v1).returncode == 0
    run("tuneledger", "generate", "deploy", "reverse: red cat sun =>", cwd=registry_copy)


def one_line_refusal(done, path: str) -> None:
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and path in lines[0] and "--force" in lines[0], done.stderr


@pytest.mark.faults
def test_fetch_never_replaces_a_directory_it_did_not_make(registry_copy):
    project = registry_copy / "myproject"
    (project / "src").mkdir(parents=True)
    (project / "src/thesis.tex").write_text("three years of work")
    (project / ".src.backup-2024").mkdir()
    (project / ".src.backup-2024/thesis.tex").write_text("the backup")
    one_line_refusal(fetch(registry_copy, "--stage", "prod", "-o", "myproject/src"), "myproject/src")
    assert (project / "src/thesis.tex").read_text() == "three years of work"
    assert sorted(p.name for p in project.iterdir()) == [".src.backup-2024", "src"]

    (registry_copy / ".deploy.backup-2024").mkdir()
    (registry_copy / ".deploy.backup-2024/notes.txt").write_text("mine")
    (registry_copy / "deploy.base").mkdir()
    (registry_copy / "deploy.base/weights.bin").write_text("my own base")
    one_line_refusal(fetch(registry_copy, "--stage", "prod", "-o", "deploy", "--with-base"), "deploy.base")
    assert (registry_copy / "deploy.base/weights.bin").read_text() == "my own base"
    assert not (registry_copy / "deploy").exists()

    assert fetch(registry_copy, "--stage", "prod", "-o", "deploy").returncode == 0
    assert (registry_copy / ".deploy.backup-2024/notes.txt").read_text() == "mine"
    assert (registry_copy / "myproject/.src.backup-2024/thesis.tex").read_text() == "the backup"


@pytest.mark.faults
def test_fetch_replaces_its_own_previous_fetch_but_not_once_the_user_added_a_file(registry_copy):
    assert fetch(registry_copy, "--version", "v1.1.0", "-o", "deploy", "--with-base").returncode == 0
    assert fetch(registry_copy, "--version", "v1.0.0", "-o", "deploy", "--with-base").returncode == 0
    verify(registry_copy / "deploy", registry_copy / "deploy.manifest.json")
    (registry_copy / "deploy/notes.md").write_text("my notes")
    one_line_refusal(fetch(registry_copy, "--version", "v1.1.0", "-o", "deploy"), "deploy")
    assert (registry_copy / "deploy/notes.md").read_text() == "my notes"
    assert fetch(registry_copy, "--version", "v1.1.0", "-o", "deploy", "--force").returncode == 0
    verify(registry_copy / "deploy", registry_copy / "deploy.manifest.json")
    assert not (registry_copy / "deploy/notes.md").exists()


@pytest.mark.faults
def test_the_deploy_cache_follows_the_same_rule(registry_copy, monkeypatch):
    from tuneledger.registry.tags import stage_holder
    from tuneledger.serve.deployment import deploy

    monkeypatch.chdir(registry_copy)
    cache = registry_copy / ".tuneledger/serve/versions"
    foreign = cache / f"lora-adapter@{stage_holder('lora-adapter', 'prod')}"
    foreign.mkdir(parents=True)
    (foreign / "mine.txt").write_text("not a fetch")
    with pytest.raises(TuneLedgerError, match="not a previous fetch"):
        deploy("lora-adapter", "prod", cache=cache)
    assert (foreign / "mine.txt").read_text() == "not a fetch"


@pytest.mark.faults
def test_a_refused_fetch_leaves_the_users_look_alike_staging_names_and_manifest(registry_copy):
    """The message says nothing was changed: the exact staging names and a `DIR.manifest.json` of
    the user's stay as they were, whether DIR is foreign or absent."""
    (registry_copy / "deploy").mkdir()
    (registry_copy / "deploy/mine.txt").write_text("mine")
    for name in (".deploy.tuneledger-old", ".deploy.tuneledger-new"):
        (registry_copy / name).write_text(f"the user's {name}")
    one_line_refusal(fetch(registry_copy, "--stage", "prod", "-o", "deploy"), "deploy")
    for name in (".deploy.tuneledger-old", ".deploy.tuneledger-new"):
        assert (registry_copy / name).read_text() == f"the user's {name}"

    (registry_copy / "absent.manifest.json").write_text("my own notes, not a manifest")
    one_line_refusal(fetch(registry_copy, "--stage", "prod", "-o", "absent"), "absent.manifest.json")
    assert (registry_copy / "absent.manifest.json").read_text() == "my own notes, not a manifest"
    assert not (registry_copy / "absent").exists()


def test_a_deploy_directory_shares_no_inode_with_the_cache_or_the_workspace(registry_copy):
    """Appending to a fetched file as root must not reach DVC's cache or the workspace package
    (the workspace holds v1.1.0, fetched here)."""
    assert fetch(registry_copy, "--version", "v1.1.0", "-o", "deploy", "--with-base").returncode == 0
    for path in [*(registry_copy / "deploy").rglob("*"), *(registry_copy / "deploy.base").rglob("*")]:
        if path.is_file():
            assert path.stat().st_nlink == 1, path
    with open(registry_copy / "deploy/README.md", "a") as card:
        card.write("appended by an operator")
    assert run("dvc", "status", cwd=registry_copy).stdout.strip().endswith("up to date.")
    verify(registry_copy / "models/export")
    assert fetch(registry_copy, "--version", "v1.1.0", "-o", "deploy2").returncode == 0
