"""The promotion gate: every reason to refuse a version, each through the real CLI and pipeline.

Each candidate is a real version built by the pipeline from the registry fixture's last commit,
with one thing wrong. Versions with unhealthy weights are tagged with plain `gto register`, as a
user can, since `tuneledger register` refuses them itself; the gate is the guard at promotion.
"""

from __future__ import annotations

import json
import re

import pytest

from conftest import commit_all, copy_repo, read_json, run, set_params, use_remote
from tuneledger.core.params import RegistryParams
from tuneledger.registry.promotion_gate import check_metrics

NAME = "lora-adapter"
NARROWED, OTHER_EVAL, ZERO_B, INF = "v1.2.0", "v1.3.0", "v1.4.0", "v1.5.0"


def edit_adapter(repo, change) -> None:
    """Change the trained adapter's tensors, as a broken training run would have written them."""
    import torch
    from safetensors.torch import load_file, save_file

    path = repo / "models/adapter/adapter_model.safetensors"
    tensors = load_file(str(path))
    change(tensors, torch)
    path.chmod(0o644)
    save_file(tensors, str(path))
    run("dvc", "commit", "-f", "train", cwd=repo)
    run("dvc", "repro", "-s", "export", cwd=repo)


def zero_lora_b(tensors, torch) -> None:
    for name in tensors:
        if ".lora_B." in name:
            tensors[name] = torch.zeros_like(tensors[name])


def one_inf(tensors, torch) -> None:
    first = sorted(n for n in tensors if ".lora_A." in n)[0]
    tensors[first][0, 0] = float("inf")


def narrow_the_signature(repo) -> None:
    set_params(repo, **{"export.max_prompt_chars": 128})  # prod accepts prompts of up to 256
    run("dvc", "repro", cwd=repo)


def evaluate_on_a_subset(repo) -> None:
    set_params(repo, **{"eval.max_examples": 60})
    run("dvc", "repro", cwd=repo)


CANDIDATES = {
    NARROWED: narrow_the_signature,
    OTHER_EVAL: evaluate_on_a_subset,
    ZERO_B: lambda repo: edit_adapter(repo, zero_lora_b),
    INF: lambda repo: edit_adapter(repo, one_inf),
}
HEALTHY = {NARROWED, OTHER_EVAL}


@pytest.fixture(scope="module")
def candidates(registry, tmp_path_factory):
    """The registry (prod: v1.0.0) plus one candidate per refusal, each on its own branch."""
    repo = copy_repo(registry[0], tmp_path_factory.mktemp("gate") / "repo")
    start = run("git", "rev-parse", "HEAD", cwd=repo).stdout.strip()
    for version, build in CANDIDATES.items():
        run("git", "switch", "-q", "-c", f"candidate-{version}", start, cwd=repo)
        run("dvc", "checkout", "--force", cwd=repo)
        build(repo)
        commit_all(repo, f"candidate {version}")
        if version in HEALTHY:
            run("tuneledger", "register", "--version", version, "--push", cwd=repo)
        else:  # `tuneledger register` refuses unhealthy weights; plain gto does not look
            run("dvc", "push", cwd=repo)
            run("gto", "register", NAME, "--version", version, cwd=repo)
    run("git", "switch", "-q", "main", cwd=repo)
    run("dvc", "checkout", "--force", cwd=repo)
    return repo


@pytest.fixture
def gate_repo(candidates, tmp_path):
    return copy_repo(candidates, tmp_path / "repo")


def tags(repo) -> set[str]:
    return set(run("git", "tag", cwd=repo).stdout.split())


def refused(repo, version, stage="prod") -> dict[str, str]:
    """Promote without --force; assert the gate refused and tagged nothing; return failed checks."""
    before = tags(repo)
    done = run("tuneledger", "promote", version, "--stage", stage, cwd=repo, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert f"gate refused {version} for {stage}:" in done.stderr
    assert tags(repo) == before
    return dict(re.findall(r"^  (\w+): (.*)$", done.stderr, flags=re.MULTILINE))


def test_a_narrowed_signature_is_refused(gate_repo):
    failed = refused(gate_repo, NARROWED)
    assert set(failed) == {"signature"}
    assert "inputs.prompt" in failed["signature"] and "128" in failed["signature"]


def test_an_all_zero_lora_b_is_refused(gate_repo):
    failed = refused(gate_repo, ZERO_B)
    assert "weights" in failed
    assert re.search(r"lora_B\.weight: all zero \(the adapter was never trained\)", failed["weights"])


def test_an_inf_weight_is_refused(gate_repo):
    failed = refused(gate_repo, INF)
    assert "weights" in failed
    assert re.search(r"lora_A\.weight: 1 NaN/Inf values", failed["weights"])


def test_objects_missing_on_the_remote_are_refused(gate_repo, s3):
    use_remote(gate_repo, s3, "gate-empty-remote")  # the same registry, a remote that lacks its objects
    failed = refused(gate_repo, "v1.1.0")
    assert set(failed) == {"lineage"}
    assert re.match(r"\d+ output object\(s\) of [0-9a-f]{12} not on the remote", failed["lineage"])


def test_worse_metrics_are_refused(gate_repo):
    rows = json.loads(run("tuneledger", "show", "--json", cwd=gate_repo).stdout)
    trained = [row for row in rows if row["version"] in ("v1.0.0", "v1.1.0")]
    by_loss = sorted(trained, key=lambda row: row["metrics"]["loss"])
    better, worse = (row["version"] for row in by_loss)
    set_params(gate_repo, **{"registry.tolerance": 0.0})
    run("tuneledger", "promote", better, "--stage", "staging", cwd=gate_repo)
    failed = refused(gate_repo, worse, stage="staging")
    assert set(failed) == {"metrics"}
    assert failed["metrics"].startswith("worse than the current version beyond 0%: loss ")


def test_metrics_of_another_evaluation_are_not_comparable_unless_forced(gate_repo):
    failed = refused(gate_repo, OTHER_EVAL)
    assert set(failed) == {"metrics"}
    assert failed["metrics"] == "not comparable: other eval params (eval.max_examples 60 vs None)"
    forced = run(
        "tuneledger",
        "promote",
        OTHER_EVAL,
        "--stage",
        "prod",
        "--force",
        "--reason",
        "evaluation on a subset is enough",
        cwd=gate_repo,
    )
    assert f"prod: v1.0.0 → {OTHER_EVAL} (forced)" in forced.stdout
    latest = json.loads(run("tuneledger", "history", "--json", cwd=gate_repo).stdout)[0]
    assert latest["forced"] and latest["reason"] == "evaluation on a subset is enough"


def test_metrics_on_another_test_split_are_not_comparable(registry):
    repo, _ = registry
    holder = read_json(repo / "models/export/metadata.json")
    candidate = json.loads(json.dumps(holder))
    candidate["data"]["splits"]["test"]["sha256"] = "0" * 64
    check = check_metrics(candidate, holder, RegistryParams())
    assert not check.ok
    assert check.detail == (
        "not comparable: another test split "
        f"(sha256 000000000000… vs {holder['data']['splits']['test']['sha256'][:12]}…)"
    )
    assert check_metrics(holder, json.loads(json.dumps(holder)), RegistryParams()).ok
