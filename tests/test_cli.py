"""Every command follows one rule: a bad input is one line `error: ...` and a non-zero exit, and the
traceback shows only with --debug (each command is registered with its error reporting at once)."""

from __future__ import annotations

import sys

import pytest
import typer.main

from conftest import run
from tuneledger.cli import app

# A failing invocation of each command in a fresh template repository (no outputs, no versions);
# `show` and `history` list what there is, so they fail where dvc.yaml is missing.
BAD_INPUTS = {
    "verify": ["verify", "no-such-package"],
    "generate": ["generate", "no-such-package", "prompt", "--messages", "-"],
    "diff": ["diff", "no-such-rev", "HEAD"],
    "register": ["register", "--bump", "sideways"],
    "promote": ["promote", "v1.0.0", "--stage", "qa"],
    "rollback": ["rollback", "--stage", "prod"],
    "show": ["show"],
    "history": ["history"],
    "fetch": ["fetch", "-o", "deploy", "--stage", "prod"],
    "reproduce": ["reproduce", "v9.9.9"],
    "serve": ["serve", "--host", "0.0.0.0"],
    "ui": ["ui", "--host", "0.0.0.0"],
    "shadow-report": ["shadow-report", "--db", "no-such.sqlite"],
    "canary-report": ["canary-report", "--db", "no-such.sqlite"],
}


def test_every_command_has_a_bad_input_here():
    assert set(typer.main.get_command(app).commands) == set(BAD_INPUTS)


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_a_bad_input_is_one_line(project_copy, name):
    if name in ("show", "history"):
        (project_copy / "dvc.yaml").unlink()
    failed = run("tuneledger", *BAD_INPUTS[name], cwd=project_copy, check=False)
    assert failed.returncode != 0
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), failed.stderr


def test_debug_shows_the_traceback(project_copy):
    failed = run("tuneledger", "--debug", "verify", "no-such-package", cwd=project_copy, check=False)
    assert failed.returncode != 0
    assert "Traceback (most recent call last)" in failed.stderr
    assert "no-such-package: no such package directory" in failed.stderr


def test_a_local_s3_without_moto_says_what_to_install(tmp_path):
    """`make s3-local` runs tuneledger.core.s3local, which needs moto (a test extra): without it, one line."""
    hide_moto = (
        "import sys; sys.modules['moto'] = sys.modules['moto.server'] = None; "
        "sys.argv = ['s3local']; from tuneledger.core.s3local import main; main()"
    )
    done = run(sys.executable, "-c", hide_moto, cwd=tmp_path, check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: a local S3 endpoint needs moto, a test extra: run `make test-setup` or "
        "`pip install 'moto[server]'`"
    ]
