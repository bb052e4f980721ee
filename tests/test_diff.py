"""`tuneledger diff` on a fresh clone after `dvc repro`: package directories compare, and a revision
whose outputs are neither in the DVC cache nor on the remote is one line saying what to do."""

from __future__ import annotations

import json
import shutil

from conftest import run


def test_the_readme_diff_compares_a_kept_package_with_the_workspace(default_run, tmp_path):
    kept = shutil.copytree(default_run / "models/export", tmp_path / "r8")
    result = json.loads(run("tuneledger", "diff", kept, "models/export", "--json", cwd=default_run).stdout)
    assert result["differing"] == []
    assert result["a"]["adapter.rank_from_weights"] == result["b"]["adapter.rank_from_weights"] == 8


def test_a_revision_whose_export_is_nowhere_is_one_line(default_run):
    failed = run(
        "tuneledger", "diff", "HEAD", "models/export",
        cwd=default_run, check=False, env={"AWS_MAX_ATTEMPTS": "1"},
    )  # fmt: skip
    assert failed.returncode == 1
    [line] = failed.stderr.strip().splitlines()
    assert line.startswith("error: diff HEAD: models/export of commit ")
    assert "is not in the local DVC cache and the remote 'storage' (s3://" in line
    assert "check that the endpoint is up" in line
    assert line.endswith(", or rebuild it with `dvc repro` at that commit")
