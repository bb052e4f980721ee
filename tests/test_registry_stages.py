"""Stages are what `.gto` declares, read through gto's own config: a stage added there is accepted
at once, an undeclared one is refused in one line before anything else is looked at."""

from __future__ import annotations

from conftest import run


def promote(repo, stage: str):
    return run("tuneledger", "promote", "v1.0.0", "--stage", stage, cwd=repo, check=False)


def test_an_undeclared_stage_is_refused_in_one_line(project_copy):
    failed = promote(project_copy, "qa")
    assert failed.returncode == 1
    assert failed.stderr.strip() == "error: unknown stage 'qa'; stages are dev, staging, prod (see .gto)"


def test_a_stage_added_to_gto_is_accepted(project_copy):
    (project_copy / ".gto").write_text("stages: [dev, qa, staging, prod]\n")
    failed = promote(project_copy, "qa")  # past the stage check: nothing is registered yet
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: version v1.0.0 of lora-adapter not found")


def test_a_broken_gto_config_is_one_line(project_copy):
    (project_copy / ".gto").write_text("stages: [dev, [qa]]\n")
    failed = promote(project_copy, "dev")
    assert failed.returncode == 1
    [line] = failed.stderr.strip().splitlines()
    assert line.startswith("error: .gto: not a valid gto config (")
