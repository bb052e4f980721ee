"""The promotion gate alone, through the functions `tuneledger promote` calls: prints the seconds it
took to download, verify and check the candidate against the stage's holder. `registry_scale` takes
it from the promotion's wall time, for the registry's own part (its goal excludes the gate)."""

from __future__ import annotations

import sys
import time

from tuneledger.core.params import load_params
from tuneledger.registry import tags
from tuneledger.registry.promotion_gate import run_gate
from tuneledger.registry.versions import discard, resolve, scratch_dir


def main(name: str, version: str, stage: str) -> None:
    candidate = resolve(name, version=version)
    holder = resolve(name, version=tags.stage_holder(name, stage))
    workdir = scratch_dir()
    started = time.perf_counter()
    try:
        run_gate(candidate, holder, load_params().registry, workdir)
    finally:
        discard(workdir)
    print(time.perf_counter() - started)


if __name__ == "__main__":
    main(*sys.argv[1:])
