"""The GitHub workflows shipped for users of the template are valid (actionlint)."""

from __future__ import annotations

import shutil

import yaml

from conftest import PROJECT, run


def test_workflows_pass_actionlint():
    assert shutil.which("actionlint"), "actionlint is installed from requirements.lock"
    workflows = sorted((PROJECT / ".github/workflows").glob("*.yml"))
    assert {w.name for w in workflows} == {"ci.yml", "deploy.yml"}
    run("actionlint", *workflows, cwd=PROJECT)


def test_deploy_acts_only_on_prod_assignments():
    deploy = yaml.safe_load((PROJECT / ".github/workflows/deploy.yml").read_text())
    steps = deploy["jobs"]["deploy"]["steps"]
    fetch = next(s for s in steps if "tuneledger fetch" in s.get("run", ""))
    assert "steps.event.outputs.stage == 'prod'" in fetch["if"]
    assert any("gto check-ref" in s.get("run", "") for s in steps)
