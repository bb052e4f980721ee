"""One module per DVC stage. Each has `run(params)` for tests and a thin `main` for `dvc repro`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tuneledger.errors import friendly_errors
from tuneledger.modeling import use_portable_cpu_kernels
from tuneledger.params import Params, load_params
from tuneledger.progress import quiet_libraries

# Before any stage imports torch: the same commit trains the same bytes on any x86-64 machine.
use_portable_cpu_kernels()
quiet_libraries()  # before the stage module imports them: some libraries speak on import


def stage_entry(run: Callable[[Params], Any]) -> Callable[[], None]:
    """The `python -m tuneledger.stages.<name>` entry point: validate params, run, report failures."""

    @friendly_errors
    def main() -> None:
        params = load_params()  # refuse bad params before any output is touched
        run(params)

    return main
