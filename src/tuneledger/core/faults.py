"""Deterministic fault injection for the tests of all-or-nothing promises.

`TUNELEDGER_FAULT=<point>` kills the process with SIGKILL when it reaches that named point, so a
test can hit the exact window between two steps (a sleep-then-kill may miss it). Unset, each
point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

FAULT_VARIABLE = "TUNELEDGER_FAULT"


def fault_point(name: str) -> None:
    if os.environ.get(FAULT_VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)
