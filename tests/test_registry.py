"""The registry on git tags against a real local S3: register, gate, promote, roll back, fetch, restore."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

from conftest import commit_all, read_json, run, set_params, use_remote
from tuneledger.core import kernels
from tuneledger.core.hashing import sha256_file
from tuneledger.core.s3local import configure_remote, free_port

NAME = "lora-adapter"


def manifest_at(repo, ref):
    return json.loads(run("git", "show", f"{ref}:models/export.manifest.json", cwd=repo).stdout)


def assert_package_is(directory, manifest):
    names = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    assert names == sorted(manifest["files"])
    for name, entry in manifest["files"].items():
        assert sha256_file(directory / name) == entry["sha256"], name


def test_register_tags_versions_with_their_content_id(registry):
    repo, log = registry
    assert "registered lora-adapter@v1.0.0" in log["register_v1"]
    assert "registered lora-adapter@v1.1.0" in log["register_v2"]  # minor bump by default
    message = run("git", "tag", "-l", "--format=%(contents)", f"{NAME}@v1.0.0", cwd=repo).stdout
    assert manifest_at(repo, f"{NAME}@v1.0.0")["content_id"] in message


def test_promotion_ran_the_gate(registry):
    _, log = registry
    for check in ("weights", "metrics", "signature", "lineage"):
        assert re.search(rf"{check}\s+.\s*pass", log["promote_v2"]), check
    assert "drift" in log["promote_v2"] and "prod: v1.0.0 → v1.1.0" in log["promote_v2"]


def test_rollback_moves_prod_back_everywhere(registry, tmp_path):
    repo, log = registry
    seconds = float(re.search(r"in ([0-9.]+)s", log["rollback"]).group(1))
    assert "prod: v1.1.0 → v1.0.0" in log["rollback"] and seconds <= 2.0
    assert run("gto", "show", f"{NAME}#prod", "--version", cwd=repo).stdout.strip() == "v1.0.0"
    rows = json.loads(run("tuneledger", "show", "--json", cwd=repo).stdout)
    assert {r["version"]: r["stages"] for r in rows} == {"v1.0.0": ["prod"], "v1.1.0": []}
    run("dvc", "artifacts", "get", ".", NAME, "--stage", "prod", "-o", tmp_path / "got", cwd=repo)
    assert_package_is(tmp_path / "got", manifest_at(repo, f"{NAME}@v1.0.0"))


def test_history_says_who_moved_what_when_and_why(registry):
    repo, _ = registry
    events = json.loads(run("tuneledger", "history", "--json", cwd=repo).stdout)
    assert [e["event"] for e in events] == ["rollback", "promote", "register", "promote", "register"]
    latest = events[0]
    assert (latest["version"], latest["from"], latest["stage"], latest["reason"]) == (
        "v1.0.0",
        "v1.1.0",
        "prod",
        "wrong answers",
    )
    assert latest["by"] and latest["time"]
    assert "wrong answers" in run("tuneledger", "history", cwd=repo).stdout


def test_fresh_clone_fetches_prod_exactly(registry, s3, tmp_path):
    repo, _ = registry
    clone = tmp_path / "clone"
    run("git", "clone", "-q", repo, clone, cwd=tmp_path)
    configure_remote(s3.endpoint, bucket="registry", cwd=str(clone))
    assert not (clone / ".dvc/cache").exists()
    fetched = run("tuneledger", "fetch", "--stage", "prod", "-o", "deploy", "--with-base", cwd=clone)
    assert "fetched lora-adapter@v1.0.0" in fetched.stdout
    v1 = manifest_at(clone, f"{NAME}@v1.0.0")
    assert_package_is(clone / "deploy", v1)
    assert read_json(clone / "deploy.manifest.json") == v1
    run("dvc", "artifacts", "get", ".", NAME, "--stage", "prod", "-o", tmp_path / "get", cwd=clone)
    assert_package_is(tmp_path / "get", v1)
    answer = run("tuneledger", "generate", "deploy", "reverse: red cat sun =>", cwd=clone).stdout.strip()
    assert answer == "sun cat red"


def test_checkout_of_a_version_tag_and_dvc_pull_restore_its_bytes(registry, s3, tmp_path):
    repo, _ = registry
    clone = tmp_path / "clone"
    run("git", "clone", "-q", repo, clone, cwd=tmp_path)
    configure_remote(s3.endpoint, bucket="registry", cwd=str(clone))
    run("git", "checkout", "-q", f"{NAME}@v1.0.0", cwd=clone)
    run("dvc", "pull", cwd=clone)
    assert_package_is(clone / "models/export", manifest_at(clone, "HEAD"))
    assert "up to date" in run("dvc", "status", cwd=clone).stdout


def test_a_flipped_byte_on_s3_halts_fetch(registry, s3, tmp_path):
    repo, _ = registry
    weights = (repo / "models/export/adapter_model.safetensors").read_bytes()  # workspace holds v1.1.0
    run("git", "checkout", "-q", f"{NAME}@v1.0.0", "--", "models/export.manifest.json", cwd=repo)
    v1 = manifest_at(repo, f"{NAME}@v1.0.0")
    run("git", "checkout", "-q", "HEAD", "--", "models/export.manifest.json", cwd=repo)
    client, flipped = s3.client(), None
    for obj in client.list_objects_v2(Bucket="registry")["Contents"]:
        body = client.get_object(Bucket="registry", Key=obj["Key"])["Body"].read()
        if (
            obj["Key"].endswith(v1["files"]["adapter_model.safetensors"]["sha256"][:0] or "")
            and body != weights
            and sha256_bytes(body) == v1["files"]["adapter_model.safetensors"]["sha256"]
        ):
            flipped = (obj["Key"], body)
            client.put_object(
                Bucket="registry", Key=obj["Key"], Body=body[:-5] + bytes([body[-5] ^ 1]) + body[-4:]
            )
    assert flipped, "v1's adapter object not found on the remote"
    try:
        clone = tmp_path / "clone"
        run("git", "clone", "-q", repo, clone, cwd=tmp_path)
        configure_remote(s3.endpoint, bucket="registry", cwd=str(clone))
        failed = run("tuneledger", "fetch", "--stage", "prod", "-o", "deploy", cwd=clone, check=False)
        assert failed.returncode == 1
        assert "deploy/adapter_model.safetensors: sha256 mismatch" in failed.stderr
        assert not (clone / "deploy").exists() and not (clone / "deploy.manifest.json").exists()
    finally:
        client.put_object(Bucket="registry", Key=flipped[0], Body=flipped[1])


def sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# --- refusals -------------------------------------------------------------------------------


def register_fails(repo, *extra):
    failed = run("tuneledger", "register", *extra, cwd=repo, check=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    return failed.stderr


def test_register_refuses_uncommitted_code(registry_copy):
    (registry_copy / "src/tuneledger/notes.py").write_text("# wip\n")
    assert "register refused: uncommitted changes (src/tuneledger/notes.py)" in register_fails(registry_copy)


def test_register_refuses_a_workspace_that_does_not_match_dvc_lock(registry_copy):
    set_params(registry_copy, **{"eval.max_new_tokens": 9})
    commit_all(registry_copy, "params changed, pipeline not rerun")
    assert "register refused: the workspace does not match dvc.lock (evaluate" in register_fails(
        registry_copy
    )


def test_register_refuses_outputs_missing_on_the_remote(registry_copy, s3):
    use_remote(registry_copy, s3, "empty-remote")
    run("git", "commit", "-q", "--allow-empty", "-m", "another commit", cwd=registry_copy)
    assert "not on the remote; run `dvc push` first, or pass --push" in register_fails(registry_copy)


def test_register_refuses_a_package_that_fails_verify(registry_copy):
    """dvc.lock is made to agree with a tampered file, so only the manifest can tell."""
    weights = registry_copy / "models/export/adapter_model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-3] ^= 1
    weights.write_bytes(bytes(data))
    run("dvc", "commit", "-f", "export", cwd=registry_copy)
    commit_all(registry_copy, "tampered export")
    stderr = register_fails(registry_copy)
    assert "models/export/adapter_model.safetensors: sha256 mismatch: expected" in stderr


def test_register_refuses_nan_weights(registry_copy):
    import torch
    from safetensors.torch import load_file, save_file

    adapter = registry_copy / "models/adapter/adapter_model.safetensors"
    tensors = load_file(str(adapter))
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, str(adapter))
    run("dvc", "commit", "-f", "train", cwd=registry_copy)  # as if training had diverged
    run("dvc", "repro", "export", cwd=registry_copy)
    commit_all(registry_copy, "diverged run")
    assert f"register refused: unhealthy weights: {first}" in register_fails(registry_copy, "--push")


def test_gate_refusal_is_a_table_and_force_needs_a_reason(registry_copy):
    set_params(registry_copy, **{"registry.max_norm_drift": 0.01})
    refused = run("tuneledger", "promote", "v1.1.0", "--stage", "prod", cwd=registry_copy, check=False)
    assert refused.returncode == 1
    assert "gate refused v1.1.0 for prod: 1 check(s) failed" in refused.stderr
    assert re.search(r"drift: largest update-norm change \d+\.\d% .*limit 1%", refused.stderr)
    no_reason = run(
        "tuneledger", "promote", "v1.1.0", "--stage", "prod", "--force", cwd=registry_copy, check=False
    )
    assert "--force needs --reason" in no_reason.stderr
    forced = run(
        "tuneledger",
        "promote",
        "v1.1.0",
        "--stage",
        "prod",
        "--force",
        "--reason",
        "hotfix approved",
        cwd=registry_copy,
    )
    assert "prod: v1.0.0 → v1.1.0 (forced)" in forced.stdout
    latest = json.loads(run("tuneledger", "history", "--json", cwd=registry_copy).stdout)[0]
    assert latest["forced"] and latest["reason"] == "hotfix approved"


def test_unknown_version_and_empty_stage_are_one_line(registry_copy):
    missing = run("tuneledger", "fetch", "--version", "v9.9.9", "-o", "x", cwd=registry_copy, check=False)
    assert missing.stderr.strip() == (
        "error: version v9.9.9 of lora-adapter not found; registered versions: v1.0.0, v1.1.0"
    )
    empty = run("tuneledger", "fetch", "--stage", "staging", "-o", "x", cwd=registry_copy, check=False)
    assert "no version of lora-adapter is in stage 'staging'" in empty.stderr


def test_two_promotions_racing_leave_a_consistent_registry(registry_copy):
    before = set(run("git", "tag", cwd=registry_copy).stdout.split())
    procs = [
        subprocess.Popen(
            ["tuneledger", "promote", version, "--stage", "staging"],
            cwd=registry_copy,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for version in ("v1.0.0", "v1.1.0")
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert loser.startswith("error: ") and "Traceback" not in loser
    added = set(run("git", "tag", cwd=registry_copy).stdout.split()) - before
    assert len(added) == 1 and next(iter(added)).startswith(f"{NAME}#staging#")
    holder = run("gto", "show", f"{NAME}#staging", "--version", cwd=registry_copy).stdout.strip()
    assert holder in ("v1.0.0", "v1.1.0")


def test_an_unreachable_s3_endpoint_is_named(registry_copy, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    run("dvc", "remote", "modify", "--local", "storage", "endpointurl", dead, cwd=registry_copy)
    shutil.rmtree(registry_copy / ".dvc/cache")
    failed = run(
        "tuneledger",
        "fetch",
        "--stage",
        "prod",
        "-o",
        "deploy",
        cwd=registry_copy,
        check=False,
        env={"AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"},
    )
    assert failed.returncode == 1 and len(failed.stderr.strip().splitlines()) == 1
    assert f"remote 'storage' (s3://registry/dvc via {dead}) failed" in failed.stderr
    assert "check that the endpoint is up" in failed.stderr
    assert not (registry_copy / "deploy").exists()


def test_named_artifacts_have_their_own_versions_and_stages(registry_copy):
    import yaml

    spec = yaml.safe_load((registry_copy / "dvc.yaml").read_text())
    spec["artifacts"]["cpu-adapter"] = {"path": "models/export", "type": "model"}
    (registry_copy / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    commit_all(registry_copy, "declare cpu-adapter")
    assert (
        "registered cpu-adapter@v1.0.0"
        in run("tuneledger", "register", "--name", "cpu-adapter", cwd=registry_copy).stdout
    )
    run("tuneledger", "promote", "v1.0.0", "--name", "cpu-adapter", "--stage", "staging", cwd=registry_copy)
    rows = json.loads(run("tuneledger", "show", "--json", cwd=registry_copy).stdout)
    assert {(r["artifact"], r["version"], tuple(r["stages"])) for r in rows} == {
        ("cpu-adapter", "v1.0.0", ("staging",)),
        (NAME, "v1.0.0", ("prod",)),
        (NAME, "v1.1.0", ()),
    }
    unknown = run("tuneledger", "register", "--name", "gpu-adapter", cwd=registry_copy, check=False)
    assert "artifact 'gpu-adapter' is not declared in dvc.yaml" in unknown.stderr


def test_reproduce_rebuilds_a_version_to_the_same_content_id(registry_copy, tiny_base_dir):
    # A version whose whole pipeline is short (a local base, 12 steps), rebuilt from scratch in a
    # worktree. That the default's own pipeline rebuilds its committed bytes is test_pipeline's.
    short = {"model.base": str(tiny_base_dir), "data.builtin_rows": 60, "train.max_steps": 12}
    set_params(registry_copy, **short)
    run("dvc", "repro", cwd=registry_copy)
    commit_all(registry_copy, "a short version")
    run("tuneledger", "register", "--version", "v1.2.0", "--push", cwd=registry_copy)
    done = run("tuneledger", "reproduce", "v1.2.0", "--json", cwd=registry_copy)
    result = json.loads(done.stdout)
    assert result["identical"] and result["differing"] == []
    assert result["rebuilt"] == manifest_at(registry_copy, f"{NAME}@v1.2.0")["content_id"]
    assert run("git", "worktree", "list", cwd=registry_copy).stdout.count("\n") == 1
    # Rebuilt with other kernels (ATen's generic ones), as on a machine that rounds differently: the
    # bytes differ, and the line says why, naming the CPUs, the setting and the first op that parts.
    other = run(
        "tuneledger", "reproduce", "v1.2.0", "--json", cwd=registry_copy, check=False,
        env={"ATEN_CPU_CAPABILITY": "default"},
    )  # fmt: skip
    assert other.returncode == 1
    result = json.loads(other.stdout)
    assert not result["identical"] and result["kernels_compared"]
    assert result["settings_changed"]["ATEN_CPU_CAPABILITY"] == ["avx2", "default"]
    assert result["first_differing_op"] in kernels.fingerprint()
    why = result["explanation"]
    assert "the kernels round differently" in why and "ATEN_CPU_CAPABILITY avx2 → default" in why
    assert f"`{result['first_differing_op']}`" in why and kernels.cpu_name() in why


def test_secrets_never_reach_registry_tags(registry_copy):
    secret = "hf_veryprivatetoken_1234567890"
    env = {"HF_TOKEN": secret, "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"}
    done = run(
        "tuneledger",
        "promote",
        "v1.1.0",
        "--stage",
        "staging",
        "--reason",
        f"pasted {secret} by mistake",
        cwd=registry_copy,
        env=env,
    )
    tags = run("git", "tag", "-l", "--format=%(refname) %(contents)", cwd=registry_copy).stdout
    history = run("tuneledger", "history", "--json", cwd=registry_copy, env=env).stdout
    for text in (tags, history, done.stdout + done.stderr):
        assert secret not in text and "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY" not in text
    assert "pasted *** by mistake" in tags


# --- the registry lock and rollback ---------------------------------------------------------


def registry_tags(repo) -> set[str]:
    return set(run("git", "tag", cwd=repo).stdout.split())


def test_a_held_registry_lock_stops_every_writer_at_once(registry_copy, monkeypatch):
    """Each writer would succeed (shown after the lock is released); while it is held, none does."""
    from tuneledger.registry.lock import registry_lock

    run("git", "commit", "-q", "--allow-empty", "-m", "release candidate", cwd=registry_copy)
    writers = {
        "register": ["tuneledger", "register"],
        "promote": ["tuneledger", "promote", "v1.1.0", "--stage", "staging"],
        "rollback": ["tuneledger", "rollback", "--stage", "prod", "--to", "v1.1.0"],
    }
    before = registry_tags(registry_copy)
    monkeypatch.chdir(registry_copy)
    with registry_lock("release job"):
        for name, cmd in writers.items():
            started = time.monotonic()
            done = run(*cmd, cwd=registry_copy, check=False, timeout=60)
            seconds = time.monotonic() - started
            assert done.returncode == 1, (name, done.stdout, done.stderr)
            assert re.fullmatch(
                rf"error: {name} .*: the registry is busy \(release job, pid {os.getpid()}\); "
                r"nothing was changed, retry when it finishes",
                done.stderr.strip(),
            ), done.stderr
            assert seconds < 15, f"{name} waited {seconds:.1f}s for the lock instead of failing at once"
    assert registry_tags(registry_copy) == before
    for cmd in writers.values():
        run(*cmd, cwd=registry_copy)
    added = registry_tags(registry_copy) - before
    assert len(added) == 3 and f"{NAME}@v1.2.0" in added


def stage_holder(repo, stage) -> str:
    return run("gto", "show", f"{NAME}#{stage}", "--version", cwd=repo).stdout.strip()


def test_rolling_back_twice_walks_back_and_to_picks_any_version(registry_copy):
    run("git", "commit", "-q", "--allow-empty", "-m", "a third version", cwd=registry_copy)
    assert "registered lora-adapter@v1.2.0" in run("tuneledger", "register", cwd=registry_copy).stdout
    for version in ("v1.0.0", "v1.1.0", "v1.2.0"):
        run("tuneledger", "promote", version, "--stage", "staging", cwd=registry_copy)
    assert stage_holder(registry_copy, "staging") == "v1.2.0"
    for current, previous in (("v1.2.0", "v1.1.0"), ("v1.1.0", "v1.0.0")):
        done = run("tuneledger", "rollback", "--stage", "staging", cwd=registry_copy)
        assert f"staging: {current} → {previous}" in done.stdout
        assert stage_holder(registry_copy, "staging") == previous
    exhausted = run("tuneledger", "rollback", "--stage", "staging", cwd=registry_copy, check=False)
    assert exhausted.returncode == 1
    assert exhausted.stderr.strip() == (
        "error: nothing to roll back to: v1.0.0 is the only version staging has had"
    )
    done = run("tuneledger", "rollback", "--stage", "staging", "--to", "v1.2.0", cwd=registry_copy)
    assert "staging: v1.0.0 → v1.2.0" in done.stdout
    assert stage_holder(registry_copy, "staging") == "v1.2.0"
    events = json.loads(run("tuneledger", "history", "--json", cwd=registry_copy).stdout)
    staging = [(e["event"], e["version"]) for e in events if e["stage"] == "staging"]
    assert staging[:3] == [("rollback", "v1.2.0"), ("rollback", "v1.0.0"), ("rollback", "v1.1.0")]
