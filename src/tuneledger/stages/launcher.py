"""Running the train stage under `train.launcher` (torchrun, accelerate launch) without a shell.

DVC runs one fixed command, `python -m tuneledger.stages.train`. That process validates params (the
launcher against its allowlist, among them) and, for a launcher other than plain python, starts it
with an argv list: nothing in params.yaml ever reaches a shell. A launcher that exits 0 without
training (`torchrun --help`) must not let DVC record the previous adapter under the new params, so
each launch carries an id that the training process writes into its summary, and the launch fails
unless the published summary holds it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.layout import TRAIN_SUMMARY
from tuneledger.core.params import Params

LAUNCH_ID = "TUNELEDGER_LAUNCH_ID"  # set for the launched processes; absent when DVC starts the stage
STAGE_MODULE = "tuneledger.stages.train"


def launched_here(params: Params) -> bool:
    """Whether this process trains itself: plain python, or already started by a launcher (ours,
    or torchrun/accelerate run by hand, which announce a world size)."""
    started_by_a_launcher = LAUNCH_ID in os.environ or "WORLD_SIZE" in os.environ
    return params.train.launcher == "python" or started_by_a_launcher


def launch_id() -> str | None:
    """The id of the launch this process belongs to, recorded in the summary it publishes."""
    return os.environ.get(LAUNCH_ID)


def launch(params: Params) -> None:
    """Start the stage under the launcher (argv list, no shell) and check that it trained."""
    argv = launcher_argv(params.train.launcher)
    launch = secrets.token_hex(16)
    done = subprocess.run(argv, env={**os.environ, LAUNCH_ID: launch}, check=False)
    if done.returncode != 0:
        raise SystemExit(done.returncode)  # the stage itself printed its one-line error
    if _published_launch() != launch:
        raise TuneLedgerError(
            f"train.launcher {params.train.launcher!r} exited 0 without training ({TRAIN_SUMMARY} is not "
            "from this run); the previous outputs are unchanged: fix train.launcher in params.yaml"
        )


def launcher_argv(launcher: str) -> list[str]:
    """`torchrun --nproc_per_node 2` → [/path/to/torchrun, --nproc_per_node, 2, -m, tuneledger.stages.train].

    The program is looked up beside this interpreter first, so the launcher of the project's own
    environment runs, whatever PATH says."""
    program, *options = launcher.split()
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(program, path=search)
    if found is None:
        raise TuneLedgerError(f"train.launcher: {program!r} is not installed in this environment")
    return [found, *options, "-m", STAGE_MODULE]


def _published_launch() -> str | None:
    try:
        return json.loads(TRAIN_SUMMARY.read_text(encoding="utf-8")).get("launch_id")
    except (OSError, ValueError):
        return None
