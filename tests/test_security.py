"""Secrets and the trust chain, each as the attack or accident a security review found.

- Redaction: every leaked form (a secret with a quote, a backslash or non-ASCII, a token that is
  not in the environment, hf_/ghp_/github_pat_/AWS/bearer/URL credentials, a value from
  `.dvc/config.local`) through the real paths: a registry tag, metadata and model card from the
  export stage, a `promote --reason`, a CLI error line.
- Verify checks what it loads: a FIFO fails; a file swapped between the check and the load is
  never what gets loaded; a working-tree manifest that differs from the committed one is named.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time

import pytest
import yaml

from conftest import commit_all, run, set_params
from tuneledger.core.layout import manifest_path_for
from tuneledger.package import manifest

NAME = "lora-adapter"
MASK = "***"

# Secrets in the environment, in forms that JSON and YAML escape (quote, backslash, non-ASCII).
ENV_SECRETS = {
    "DEPLOY_API_TOKEN": 'tok"en-with-a-quote-7Q',
    "REGISTRY_PASSWORD": "back\\slash\\pass-88",
    "SERVICE_SECRET": "schlüssel-geheimnis-ß42",
}
CONFIG_LOCAL_SECRET = "cfg-local/Secret+Value-4821"
CONFIG_LOCAL = f"""['remote "backup"']
    url = s3://backup/tuneledger
    secret_access_key = {CONFIG_LOCAL_SECRET}
"""
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq8Lk2Wd3P"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkZXBsb3kifQ.c2lnbmF0dXJlLXNlY3JldA"
# (what the review found, text that carries it, the secret that must not come out)
LEAKS = [
    ("quote", ENV_SECRETS["DEPLOY_API_TOKEN"], ENV_SECRETS["DEPLOY_API_TOKEN"]),
    ("backslash", ENV_SECRETS["REGISTRY_PASSWORD"], ENV_SECRETS["REGISTRY_PASSWORD"]),
    ("non-ascii", ENV_SECRETS["SERVICE_SECRET"], ENV_SECRETS["SERVICE_SECRET"]),
    ("config-local", CONFIG_LOCAL_SECRET, CONFIG_LOCAL_SECRET),
    ("hf-token", "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", "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"),
    ("ghp-token", "ghp_Zx9Cv8Bn7Mq6Wr5Et4Yu3Io2Pa1SdFgHjKlQ", "ghp_Zx9Cv8Bn7Mq6Wr5Et4Yu3Io2Pa1SdFgHjKlQ"),
    (
        "github-pat",
        "github_pat_11AB2CD3E0fGhIjKlMnOpQ_rStUvWxYz0123456789AbCdEfGhIjKlMnOpQrSt",
        "github_pat_11AB2CD3E0fGhIjKlMnOpQ_rStUvWxYz0123456789AbCdEfGhIjKlMnOpQrSt",
    ),
    ("aws-key-id", "ASIAY34FZKBOKMUTVV7A", "ASIAY34FZKBOKMUTVV7A"),
    ("aws-secret", f"aws_secret_access_key={AWS_SECRET}", AWS_SECRET),
    ("bearer", f"Authorization: Bearer {JWT}", JWT),
    ("url-password", "https://deploy:s3cr3t-p%40ss@models.example.com/base", "s3cr3t-p%40ss"),
    # Token formats of common services (round 3 of the review).
    (
        "openai",
        "sk-proj-Qw3rTy8UiOp2AsDf5GhJk7LzXc9VbNm1Qw3rTy8U",
        "sk-proj-Qw3rTy8UiOp2AsDf5GhJk7LzXc9VbNm1Qw3rTy8U",
    ),
    (
        "anthropic",
        "sk-ant-api03-Zx8Cv7Bn6Mq5Wr4Et3Yu2Io1Pa-Sd_FgHjKl",
        "sk-ant-api03-Zx8Cv7Bn6Mq5Wr4Et3Yu2Io1Pa-Sd_FgHjKl",
    ),
    ("slack", "xoxb-2048301937-7788123456-QpWoEiRuTyAlSkDj", "xoxb-2048301937-7788123456-QpWoEiRuTyAlSkDj"),
    ("gitlab", "glpat-Xy7Zq2Wv9Ut4Rs1Po6Nm", "glpat-Xy7Zq2Wv9Ut4Rs1Po6Nm"),
    ("google", "AIzaSyD4e5F6g7H8i9J0k1L2m3N4o5P6q7R8s9T", "AIzaSyD4e5F6g7H8i9J0k1L2m3N4o5P6q7R8s9T"),
    ("stripe", "sk_live_51Hq8Wm2eZvKYlo2C0Xy7Zq2Wv9Ut", "sk_live_51Hq8Wm2eZvKYlo2C0Xy7Zq2Wv9Ut"),
    ("jwt", f"session={JWT}", JWT),
]
ALL_CARRIED = " | ".join(carried for _, carried, _ in LEAKS)


def written_forms(secret: str) -> set[str]:
    """A secret as it can appear in an output: raw, JSON-escaped (ASCII or not), YAML-quoted."""
    return {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        yaml.safe_dump(secret, default_style='"', allow_unicode=True).strip()[1:-1],
        yaml.safe_dump(secret, default_style='"').strip()[1:-1],
    }


def assert_no_secret(text: str, secrets: list[str] | None = None) -> None:
    for secret in secrets or [secret for _, _, secret in LEAKS]:
        for form in written_forms(secret):
            assert form not in text, f"{secret!r} leaked as {form!r}"


def write_config_local(repo) -> None:
    (repo / ".dvc").mkdir(exist_ok=True)
    with open(repo / ".dvc/config.local", "a", encoding="utf-8") as config:
        config.write(CONFIG_LOCAL)


@pytest.fixture
def git_repo_with_secrets(tmp_path, monkeypatch):
    """An empty git repository with a config.local secret, as the working directory, and the
    environment's secrets set."""
    repo = tmp_path / "repo"
    repo.mkdir()
    run("git", "init", "-q", "-b", "main", cwd=repo)
    run("git", "commit", "-q", "--allow-empty", "-m", "start", cwd=repo)
    write_config_local(repo)
    for name, value in ENV_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(repo)
    return repo


# --- redaction ------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["a-", "a:", "eyJ.", "x://y:", "aws ", "sk-", "Bearer "])
def test_redaction_takes_linear_time_on_64_kib(unit):
    """32,000 characters of `a-a-…` took 9.4 s (the patterns backtracked); 64 KiB of each shape
    that fed a backtracking pattern now takes well under a second (quadratic: about 40 s)."""
    from tuneledger.core.secrets import redact

    text = unit * (64 * 1024 // len(unit))
    started = time.perf_counter()
    redact(text)
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize(("form", "carried", "secret"), LEAKS, ids=[form for form, _, _ in LEAKS])
def test_a_registry_tag_never_carries_a_secret(git_repo_with_secrets, form, carried, secret):
    from tuneledger.registry import tags

    repo = git_repo_with_secrets
    reason = f"pasted {carried} by mistake"
    info = {"action": "promote", "reason": reason, "by": "Ops <ops@example.com>"}
    message = tags.compose_message(f"promote {NAME} v1.0.0 to prod (forced: {reason})", info)
    tags.register(NAME, run("git", "rev-parse", "HEAD", cwd=repo).stdout.strip(), "v1.0.0", "minor", message)

    stored = run("git", "for-each-ref", "--format=%(contents)", "refs/tags", cwd=repo).stdout
    assert_no_secret(stored, [secret])
    [event] = tags.events(NAME)
    assert event.info["action"] == "promote" and MASK in event.info["reason"]  # still valid JSON


def test_metadata_and_model_card_of_a_real_export_carry_no_secret(trained_repo):
    """A data source pasted with every leaked form in it, exported with secrets in the environment
    and in config.local: metadata.json, README.md (YAML header included) and the manifest hold
    none of them, in any escaping."""
    set_params(trained_repo, **{"data.source": ALL_CARRIED})
    write_config_local(trained_repo)
    exported = run("python", "-m", "tuneledger.stages.export", cwd=trained_repo, env=ENV_SECRETS)
    export = trained_repo / "models/export"
    metadata_text = (export / "metadata.json").read_text(encoding="utf-8")
    card = (export / "README.md").read_text(encoding="utf-8")
    for text in (metadata_text, card, exported.stdout + exported.stderr):
        assert_no_secret(text)
    assert_no_secret((trained_repo / "models/export.manifest.json").read_text())
    assert MASK in json.loads(metadata_text)["params"]["data"]["source"]
    header = yaml.safe_load(card.split("---\n")[1])
    assert MASK in header["model-index"][0]["results"][0]["dataset"]["name"]
    assert "ok:" in run("tuneledger", "verify", cwd=trained_repo).stdout


def test_promote_reason_with_every_leaked_form_reaches_no_tag(registry_copy):
    write_config_local(registry_copy)
    done = run(
        "tuneledger", "promote", "v1.1.0", "--stage", "staging", "--reason", f"pasted {ALL_CARRIED}",
        cwd=registry_copy, env=ENV_SECRETS,
    )  # fmt: skip
    stored = run("git", "tag", "-l", "--format=%(contents)", f"{NAME}#staging#*", cwd=registry_copy).stdout
    history = run("tuneledger", "history", "--json", cwd=registry_copy, env=ENV_SECRETS).stdout
    for text in (stored, history, done.stdout + done.stderr):
        assert_no_secret(text)
    promoted = next(e for e in json.loads(history) if e["event"] == "promote" and e["stage"] == "staging")
    assert promoted["reason"].startswith("pasted ***")


def test_a_cli_error_line_carries_no_secret(git_repo_with_secrets):
    """Error text quotes what the user gave (here, a revision to compare) as it is."""
    failed = run("tuneledger", "diff", ALL_CARRIED, "HEAD", cwd=git_repo_with_secrets, check=False)
    assert failed.returncode == 1
    [line] = failed.stderr.strip().splitlines()
    assert line.startswith("error: ") and "neither a package directory nor a git revision" in line
    assert line.count(MASK) >= len(LEAKS)
    assert_no_secret(failed.stdout + failed.stderr)


# --- verify checks what it loads ------------------------------------------------------------


@pytest.fixture
def small_package(tmp_path):
    """A package of two plain files and its manifest: enough for `verify`."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "adapter_config.json").write_text('{"r": 8}\n')
    (package / "metadata.json").write_text('{"schema_version": 1}\n')
    manifest_file = manifest_path_for(package)
    manifest_file.write_text(manifest.build(package).to_json())
    return package


def test_a_fifo_in_a_package_fails_verify_and_load(small_package):
    os.mkfifo(small_package / "tokenizer.json")  # reading it would block forever
    checked = run("tuneledger", "verify", small_package, cwd=small_package.parent, check=False, timeout=60)
    assert checked.returncode == 1
    assert f"{small_package}/tokenizer.json: not a regular file (a FIFO)" in checked.stderr
    loaded = run(
        "tuneledger", "generate", small_package, "hello", cwd=small_package.parent, check=False, timeout=120
    )
    assert loaded.returncode == 1 and "tokenizer.json: not a regular file (a FIFO)" in loaded.stderr


def test_a_fifo_in_place_of_a_listed_file_fails_verify(small_package):
    (small_package / "adapter_config.json").unlink()
    os.mkfifo(small_package / "adapter_config.json")
    checked = run("tuneledger", "verify", small_package, cwd=small_package.parent, check=False, timeout=60)
    assert checked.returncode == 1 and "adapter_config.json: not a regular file (a FIFO)" in checked.stderr


def replace_tensors(path, change) -> dict:
    """Swap `path` for a file of changed tensors (rename over it, as a concurrent writer would);
    return the original tensors."""
    from safetensors.torch import load_file, save_file

    original = load_file(path)
    save_file({k: change(v) for k, v in original.items()}, f"{path}.swap")
    os.replace(f"{path}.swap", path)
    return original


def test_a_file_swapped_between_check_and_load_is_never_loaded(default_run, tmp_path, monkeypatch):
    """Between hashing and loading (hooked at the base digest, after the package was checked and
    before any weights are read), the package's adapter and the base's weights are replaced.
    What is loaded must still be the checked bytes."""
    import torch

    from tuneledger import load
    from tuneledger.package import loader

    package, base = tmp_path / "pkg", tmp_path / "base"
    shutil.copytree(default_run / "models/export", package)
    shutil.copyfile(default_run / "models/export.manifest.json", tmp_path / "pkg.manifest.json")
    shutil.copytree(default_run / "models/base", base)
    originals = {}
    real_digest = loader.tree_digest

    def digest_then_swap(root):
        result = real_digest(root)
        if not originals:
            originals["adapter"] = replace_tensors(package / "adapter_model.safetensors", lambda t: t + 1.0)
            originals["base"] = replace_tensors(base / "model.safetensors", lambda t: t * 0.5)
        return result

    monkeypatch.setattr(loader, "tree_digest", digest_then_swap)
    model, _ = load(package, base=base)
    assert originals, "the swap ran between the check and the load"
    loaded = model.state_dict()
    for name, tensor in originals["adapter"].items():
        loaded_name = name.replace(".weight", ".default.weight")
        assert torch.equal(loaded[loaded_name], tensor), f"{name} was loaded from the swapped file"
    base_loaded = model.get_base_model().state_dict()
    for name, tensor in originals["base"].items():
        module, _, kind = name.rpartition(".")  # layers LoRA wraps keep their weight in base_layer
        loaded_tensor = base_loaded.get(name, base_loaded.get(f"{module}.base_layer.{kind}"))
        assert torch.equal(loaded_tensor, tensor), f"base {name} was loaded from the swapped file"


def test_load_warns_when_the_manifest_differs_from_the_committed_one(trained_repo, monkeypatch, capsys):
    from tuneledger import load

    commit_all(trained_repo, "trained")
    monkeypatch.chdir(trained_repo)
    load("models/export")
    assert "differs from the committed" not in capsys.readouterr().err  # committed, unchanged: silent

    # Package and working-tree manifest edited together: both agree, and `verify` passes,
    # but the manifest is not the one git holds.
    card = trained_repo / "models/export/README.md"
    card.write_text(card.read_text() + "\nEdited after the commit.\n")
    manifest_file = trained_repo / "models/export.manifest.json"
    committed = manifest.read(manifest_file)
    rebuilt = manifest.build(trained_repo / "models/export", known_content_id=committed.content_id)
    manifest_file.write_text(rebuilt.to_json())

    generated = run("tuneledger", "generate", "models/export", "reverse: owl fox bee =>", cwd=trained_repo)
    warnings = [line for line in generated.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "warning: models/export.manifest.json differs from the committed HEAD:models/export.manifest.json; "
        "the package is checked against the working-tree manifest: commit it, or restore it with "
        "`git checkout HEAD -- models/export.manifest.json`"
    ]
    assert generated.stdout.strip()


def test_what_predictor_reads_besides_the_weights_comes_from_the_verified_copy(
    default_run, tmp_path, monkeypatch
):
    """Signature, metadata and generation config swapped in the package once the verified copy is
    gone (the window after loading) never reach the predictor: all are read from the copy."""
    from tuneledger.inference.predict import Predictor
    from tuneledger.package import loader

    package = tmp_path / "pkg"
    shutil.copytree(default_run / "models/export", package)
    shutil.copyfile(default_run / "models/export.manifest.json", tmp_path / "pkg.manifest.json")
    real_copy = loader.verified_copy

    @contextlib.contextmanager
    def copy_then_swap(*args, **kwargs):
        with real_copy(*args, **kwargs) as checked:
            yield checked
        signature = json.loads((package / "signature.json").read_text())
        signature["params"]["max_new_tokens"]["maximum"] = 10**9
        (package / "signature.json").write_text(json.dumps(signature))
        (package / "metadata.json").write_text(json.dumps({"content_id": "f" * 64}))
        (package / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 8, 9]}))

    monkeypatch.setattr(loader, "verified_copy", copy_then_swap)
    predictor = Predictor.open(package, base=default_run / "models/base")
    original = json.loads((default_run / "models/export/signature.json").read_text())
    assert predictor.signature == original
    assert predictor.signature["params"]["max_new_tokens"]["maximum"] < 10**9
    assert predictor.version["content_id"] == read_manifest_id(default_run)
    assert predictor.eos_token_ids != [7, 8, 9]


def read_manifest_id(repo) -> str:
    return json.loads((repo / "models/export.manifest.json").read_text())["content_id"]


def test_verify_checks_the_type_on_the_opened_descriptor(small_package, monkeypatch):
    """A listed file swapped for a FIFO after the directory was listed: hashing opens it without
    blocking, sees a FIFO on the descriptor, and reports it instead of hanging."""
    from tuneledger.package import verify

    listed = manifest.package_files(small_package)
    (small_package / "adapter_config.json").unlink()
    os.mkfifo(small_package / "adapter_config.json")
    # The listing and the scan for special files ran before the swap.
    monkeypatch.setattr(manifest, "package_files", lambda package: listed)
    monkeypatch.setattr(verify, "special_files", lambda package: [])
    problems = verify.find_problems(small_package, manifest.read(manifest_path_for(small_package)))
    fifo = f"{small_package}/adapter_config.json: not a regular file (a FIFO)"
    assert [str(p) for p in problems] == [f"{fifo}; a package holds only regular files"]
