"""What the portable CPU kernels cost: the tiny base's pre-training with them versus without."""

from __future__ import annotations

import os
import sys

from common import interleaved, ratio, sh, summary

from tuneledger.core.kernels import PORTABLE_CPU_KERNELS

BUILD = (
    "import sys; from pathlib import Path; from tuneledger import base_model; "
    "base_model.build_tiny_gpt2(Path(sys.argv[1]), 42)"
)


def run(ctx: dict, rounds: int = 3) -> dict:
    work = ctx["work"]
    native_env = {k: v for k, v in os.environ.items() if k not in PORTABLE_CPU_KERNELS}
    portable_env = {**native_env, **PORTABLE_CPU_KERNELS}
    times = interleaved(
        {
            "portable": lambda: sh(
                sys.executable, "-c", BUILD, str(work / "base-portable"), env=portable_env
            ),
            "native": lambda: sh(sys.executable, "-c", BUILD, str(work / "base-native"), env=native_env),
        },
        rounds,
    )
    median, low, high = ratio(times["portable"], times["native"])
    return {
        "title": "Portable CPU kernels",
        "rows": [
            (
                "tiny base build, portable kernels",
                summary(times["portable"]),
                ", ".join(f"{k}={v}" for k, v in PORTABLE_CPU_KERNELS.items()),
            ),
            ("tiny base build, the machine's own kernels", summary(times["native"]), "bytes differ by CPU"),
        ],
        "ratios": [
            (
                "portable / native kernels (CPU pre-training)",
                median,
                low,
                high,
                "—, the price of identical bytes across x86-64 machines",
            )
        ],
    }
