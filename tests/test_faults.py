"""Fault injection: kills, a dying S3 endpoint, corrupted objects, races and a full disk.

Each test injects its fault for real and checks that nothing is lost, nothing half-written is
visible, and the error is one clear line.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import read_json, run, use_remote
from faultproxy import FlakyProxy
from tuneledger import load
from tuneledger.core.hashing import sha256_file
from tuneledger.core.s3local import configure_remote
from tuneledger.models.checkpoints import SEAL
from tuneledger.package.verify import VerificationFailed, verify

pytestmark = pytest.mark.faults
ADAPTER = "models/adapter/adapter_model.safetensors"


def start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    """A command in its own process group, so a kill -9 reaches DVC and the stage it runs."""
    return subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def kill_9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill_9_during_dvc_repro_train_resumes_byte_identical(trained_repo):
    reference = sha256_file(trained_repo / ADAPTER)
    shutil.rmtree(trained_repo / "models/checkpoints")
    shutil.rmtree(trained_repo / "models/adapter")
    proc = start(["dvc", "repro"], trained_repo)
    deadline = time.monotonic() + 300
    while not list((trained_repo / "models/checkpoints").glob(f"*/{SEAL}")) and time.monotonic() < deadline:
        assert proc.poll() is None, "dvc repro ended before its first checkpoint"
        time.sleep(0.05)
    kill_9(proc)
    rerun = run("dvc", "repro", cwd=trained_repo)
    assert "resuming from models/checkpoints/checkpoint-" in rerun.stdout + rerun.stderr
    assert sha256_file(trained_repo / ADAPTER) == reference
    assert "up to date" in run("dvc", "status", cwd=trained_repo).stdout


def test_kill_9_during_export_never_leaves_a_half_package(trained_repo):
    before = read_json(trained_repo / "models/export.manifest.json")
    for delay in (1.0, 2.0, 3.0, 3.5, 4.5):
        proc = start(["python", "-m", "tuneledger.stages.export"], trained_repo)
        time.sleep(delay)
        if proc.poll() is None:
            kill_9(proc)
        export = trained_repo / "models/export"
        if export.exists():  # either the whole previous (or new) package, or nothing
            verify(export)
    run("python", "-m", "tuneledger.stages.export", cwd=trained_repo)
    after = verify(trained_repo / "models/export")
    assert after.content_id == before["content_id"]
    assert not list((trained_repo / "models").glob(".export.*"))  # leftovers cleaned by the next run


def test_s3_dying_during_push_then_a_rerun_completes(trained_repo, s3):
    use_remote(trained_repo, s3, "flaky-push")
    proxy = FlakyProxy(s3.port, cut_after=300_000)
    run("dvc", "remote", "modify", "--local", "storage", "endpointurl", proxy.endpoint, cwd=trained_repo)
    failed = run("dvc", "push", cwd=trained_repo, check=False, env={"AWS_MAX_ATTEMPTS": "1"}, timeout=300)
    assert failed.returncode != 0 and proxy.dead.is_set()
    run("dvc", "remote", "modify", "--local", "storage", "endpointurl", s3.endpoint, cwd=trained_repo)
    run("dvc", "push", cwd=trained_repo)
    assert "in sync" in run("dvc", "status", "--cloud", cwd=trained_repo).stdout


def test_s3_dying_during_fetch_leaves_nothing_loadable(registry, s3, tmp_path):
    repo, _ = registry
    clone = tmp_path / "clone"
    run("git", "clone", "-q", repo, clone, cwd=tmp_path)
    configure_remote(s3.endpoint, bucket="registry", cwd=str(clone))
    proxy = FlakyProxy(s3.port, cut_after=150_000)
    run("dvc", "remote", "modify", "--local", "storage", "endpointurl", proxy.endpoint, cwd=clone)
    failed = run(
        "tuneledger",
        "fetch",
        "--stage",
        "prod",
        "-o",
        "deploy",
        "--with-base",
        cwd=clone,
        check=False,
        env={"AWS_MAX_ATTEMPTS": "1"},
    )
    assert failed.returncode == 1 and proxy.dead.is_set()
    assert len(failed.stderr.strip().splitlines()) == 1 and "Traceback" not in failed.stderr
    assert f"via {proxy.endpoint}) failed" in failed.stderr
    assert not (clone / "deploy").exists() and not (clone / "deploy.base").exists()
    assert not (clone / "deploy.manifest.json").exists()
    run("dvc", "remote", "modify", "--local", "storage", "endpointurl", s3.endpoint, cwd=clone)
    run("tuneledger", "fetch", "--stage", "prod", "-o", "deploy", "--with-base", cwd=clone)
    verify(clone / "deploy")


def test_a_corrupted_object_in_the_local_cache_is_caught_before_loading(registry_copy):
    lock = yaml.safe_load((registry_copy / "dvc.lock").read_text())
    export_md5 = next(o["md5"] for o in lock["stages"]["export"]["outs"] if o["path"] == "models/export")
    listing = read_json(registry_copy / f".dvc/cache/files/md5/{export_md5[:2]}/{export_md5[2:]}")
    entry = next(e for e in listing if e["relpath"] == "adapter_model.safetensors")
    obj = registry_copy / f".dvc/cache/files/md5/{entry['md5'][:2]}/{entry['md5'][2:]}"
    obj.chmod(0o644)
    data = bytearray(obj.read_bytes())
    data[-7] ^= 0x10
    obj.write_bytes(bytes(data))
    failed = run("tuneledger", "fetch", "--version", "v1.1.0", "-o", "deploy", cwd=registry_copy, check=False)
    assert failed.returncode == 1 and "deploy/adapter_model.safetensors: sha256 mismatch" in failed.stderr
    assert not (registry_copy / "deploy").exists()
    shutil.rmtree(registry_copy / "models/export")
    run("dvc", "checkout", "models/export", cwd=registry_copy, check=False)  # copies the corrupted object
    assert (registry_copy / "models/export/adapter_model.safetensors").read_bytes() == bytes(data)
    with pytest.raises(VerificationFailed, match="adapter_model.safetensors: sha256 mismatch"):
        load(registry_copy / "models/export")
    failed = run("tuneledger", "verify", cwd=registry_copy, check=False)
    assert (
        failed.returncode == 1 and "models/export/adapter_model.safetensors: sha256 mismatch" in failed.stderr
    )


def test_two_registers_at_once_register_one_version(registry_copy):
    run("git", "commit", "-q", "--allow-empty", "-m", "release candidate", cwd=registry_copy)
    before = set(run("git", "tag", cwd=registry_copy).stdout.split())
    procs = [
        subprocess.Popen(
            ["tuneledger", "register"],
            cwd=registry_copy,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 1], results
    assert all("Traceback" not in err for _, err in results)
    added = set(run("git", "tag", cwd=registry_copy).stdout.split()) - before
    assert added == {"lora-adapter@v1.2.0"}


# Run a command with RLIMIT_FSIZE lowered: no file may grow beyond the limit, so a write past it
# fails with EFBIG as on a full disk. Lowering one's own limit needs no privilege, so this runs
# anywhere CI runs (a tmpfs mount needs root, or a user namespace that many kernels refuse).
# Python ignores SIGXFSZ, so the write fails with an error instead of killing the process.
WITH_FILE_SIZE_LIMIT = (
    "import os, resource, sys; limit = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); os.execvp(sys.argv[2], sys.argv[2:])"
)


def test_a_full_disk_during_export_keeps_the_previous_package(trained_repo):
    export = trained_repo / "models/export"
    before = verify(export)
    sizes = sorted(p.stat().st_size for p in export.rglob("*") if p.is_file())
    limit = sizes[-1] // 2  # small files are written, the largest one cannot be
    failed = run(
        "python",
        "-c",
        WITH_FILE_SIZE_LIMIT,
        str(limit),
        "python",
        "-m",
        "tuneledger.stages.export",
        cwd=trained_repo,
        check=False,
    )
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert "models: no space left while writing the new models/export" in failed.stderr
    assert verify(export).content_id == before.content_id  # the previous package is whole
    assert read_json(trained_repo / "models/export.manifest.json")["content_id"] == before.content_id
    assert not list((trained_repo / "models").glob(".export*"))
