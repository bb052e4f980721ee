"""The GitHub workflows shipped for users of the template: valid (actionlint), and safe with secrets.

deploy.yml runs with the cloud secrets, so it must run only for protected prod assignment tags,
with the default branch's code, and deploy the version its tag names. ci.yml runs pull-request
code, so those jobs must hold no write-capable secret or token.
"""

from __future__ import annotations

import json
import re
import shutil

import yaml

from conftest import PROJECT, run

NAME = "lora-adapter"


def workflow(name: str) -> dict:
    spec = yaml.safe_load((PROJECT / f".github/workflows/{name}.yml").read_text())
    spec["on"] = spec.pop(True, spec.get("on"))  # YAML 1.1 reads the key `on` as true
    return spec


def uses(step: dict, action: str) -> bool:
    return step.get("uses", "").startswith(f"{action}@")


def secrets_in(node) -> set[str]:
    """Secret names (and `github.token`) referenced anywhere in a piece of workflow."""
    text = json.dumps(node)
    names = set(re.findall(r"secrets\.([A-Za-z0-9_]+)", text))
    return names | ({"github.token"} if "github.token" in text else set())


def test_workflows_pass_actionlint():
    assert shutil.which("actionlint"), "actionlint is installed from requirements.lock"
    workflows = sorted((PROJECT / ".github/workflows").glob("*.yml"))
    assert {w.name for w in workflows} == {"ci.yml", "deploy.yml"}
    run("actionlint", *workflows, cwd=PROJECT)


def test_deploy_runs_only_for_protected_prod_assignment_tags():
    deploy = workflow("deploy")
    assert set(deploy["on"]) == {"push"} and set(deploy["on"]["push"]) == {"tags"}
    assert all("#prod#" in pattern for pattern in deploy["on"]["push"]["tags"])
    job = deploy["jobs"]["deploy"]
    assert "github.ref_protected" in job["if"] and "github.ref_type == 'tag'" in job["if"]
    refusal = deploy["jobs"]["refuse-unprotected"]
    assert "!github.ref_protected" in refusal["if"] and not secrets_in(refusal)
    assert deploy["permissions"] == {"contents": "read"}


def test_deploy_uses_the_default_branch_code_and_scopes_secrets_to_the_fetch():
    job = workflow("deploy")["jobs"]["deploy"]
    checkout = next(s for s in job["steps"] if uses(s, "actions/checkout"))
    assert checkout["with"]["ref"] == "${{ github.event.repository.default_branch }}"
    assert checkout["with"]["persist-credentials"] is False
    assert job["environment"] == "production"
    assert not secrets_in({k: v for k, v in job.items() if k != "steps"})
    holders = [s for s in job["steps"] if secrets_in(s)]
    assert [s.get("id") for s in holders] == ["fetch"]
    assert secrets_in(holders[0]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def fetch_script() -> str:
    return next(s for s in workflow("deploy")["jobs"]["deploy"]["steps"] if s.get("id") == "fetch")["run"]


def test_deploy_fetches_the_version_the_tag_names():
    script = fetch_script()
    assert 'version=$(gto check-ref "$GITHUB_REF_NAME" --version)' in script
    assert 'tuneledger fetch --name "$name" --version "$version"' in script
    assert not any("tuneledger fetch" in line and "--stage" in line for line in script.splitlines())


def test_deploy_script_fetches_the_tags_version_after_prod_moved_on(registry_copy, tmp_path):
    """Run the workflow's own fetch step in a real registry: v1.1.0 was promoted to prod, then
    prod was rolled back to v1.0.0. The job of v1.1.0's tag must still deploy v1.1.0."""
    prod_tags = run("git", "tag", "-l", f"{NAME}#prod#*", cwd=registry_copy).stdout.split()
    version_of = {t: run("gto", "check-ref", t, "--version", cwd=registry_copy).stdout for t in prod_tags}
    promoted = next(t for t, v in version_of.items() if v.strip() == "v1.1.0")
    holder = run("gto", "show", f"{NAME}#prod", "--version", cwd=registry_copy).stdout.strip()
    assert holder == "v1.0.0", "the registry fixture rolls prod back to v1.0.0"

    outputs = tmp_path / "github_output"
    env = {"GITHUB_REF_NAME": promoted, "GITHUB_OUTPUT": str(outputs)}
    run("bash", "-e", "-o", "pipefail", "-c", fetch_script(), cwd=registry_copy, env=env)
    assert dict(line.split("=", 1) for line in outputs.read_text().splitlines()) == {
        "name": NAME,
        "version": "v1.1.0",
    }
    fetched = json.loads((registry_copy / "deploy.manifest.json").read_text())
    tagged = run("git", "show", f"{NAME}@v1.1.0:models/export.manifest.json", cwd=registry_copy).stdout
    assert fetched["content_id"] == json.loads(tagged)["content_id"]

    not_prod = run(
        "bash", "-e", "-c", fetch_script(), cwd=registry_copy, check=False,
        env={"GITHUB_REF_NAME": f"{NAME}@v1.1.0", "GITHUB_OUTPUT": str(outputs)},
    )  # fmt: skip
    assert not_prod.returncode == 1 and "does not assign a version to prod" in not_prod.stdout


def pull_request_jobs(spec: dict) -> dict[str, dict]:
    """Jobs that run on pull_request events and check out (so run) the pull request's code."""
    return {
        name: job
        for name, job in spec["jobs"].items()
        if "pull_request" in spec["on"]
        and "github.event_name != 'pull_request'" not in job.get("if", "")
        and any(uses(s, "actions/checkout") for s in job["steps"])
    }


def test_pull_request_code_never_holds_write_capable_secrets():
    ci = workflow("ci")
    assert "pull_request_target" not in ci["on"], "it would run pull-request code with the base's secrets"
    assert ci["permissions"] == {"contents": "read"}
    code_jobs = pull_request_jobs(ci)
    assert {"test", "metrics"} <= code_jobs.keys()
    for name, job in code_jobs.items():
        assert all("READONLY" in s for s in secrets_in(job)), f"{name}: {secrets_in(job)}"
        assert "write" not in json.dumps(job.get("permissions", {})), name
        checkout = next(s for s in job["steps"] if uses(s, "actions/checkout"))
        assert checkout["with"]["persist-credentials"] is False, name


def test_the_pull_request_comment_runs_no_pull_request_code():
    comment = workflow("ci")["jobs"]["comment"]
    assert comment["permissions"] == {"pull-requests": "write"}
    assert secrets_in(comment) == {"github.token"}
    assert not any(uses(s, "actions/checkout") for s in comment["steps"])
    assert all("make" not in s.get("run", "") and "python" not in s.get("run", "") for s in comment["steps"])
