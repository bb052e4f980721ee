"""What private deploy bytes cost: a fetched file made its own (reflink, else copy) versus the hard
link to DVC's cache object that `fetch` used to publish, on the 538 MB SmolLM2-135M base."""

from __future__ import annotations

import os
import shutil
import statistics
import sys
from pathlib import Path

from common import interleaved, summary

from tuneledger.core.fsutil import own_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from real_model import smollm2_dir  # noqa: E402


def run(ctx: dict, rounds: int = 3) -> dict:
    work = ctx["work"] / "deploy-copy"
    work.mkdir()
    cached = work / "cache-object"  # stands for DVC's cache object: same filesystem as the deploy
    shutil.copyfile(smollm2_dir() / "model.safetensors", cached)
    size_mb = cached.stat().st_size / 1e6
    deployed = work / "deploy-model.safetensors"

    def linked() -> None:
        os.link(cached, deployed)

    def private() -> None:
        os.link(cached, deployed)  # what DVC hands over, then made the deploy's own
        own_bytes(deployed)

    times = interleaved({"private": private, "linked": linked}, rounds, between=deployed.unlink)
    reflinked = _shares_extents(work)
    seconds = statistics.median(times["private"])
    return {
        "title": "Private deploy bytes (SmolLM2-135M base)",
        "rows": [
            (
                f"own bytes for the {size_mb:.0f} MB base file",
                summary(times["private"]),
                f"{size_mb / seconds:.0f} MB/s; {'reflink' if reflinked else 'copy (no reflinks here)'}",
            ),
            ("hard link to the cache object (before)", summary(times["linked"]), "shared the cache's inode"),
        ],
        "ratios": [],
        "notes": (
            "A fetch hashes every byte it publishes anyway (see the verify throughput section); the "
            "private copy adds the row above. On a filesystem with reflinks (btrfs, XFS) it shares "
            "extents copy-on-write and costs about nothing."
        ),
    }


def _shares_extents(work: Path) -> bool:
    """Whether this filesystem makes reflinks (then own_bytes costs no copy)."""
    import fcntl

    from tuneledger.core.fsutil import FICLONE

    source, target = work / "probe-source", work / "probe-target"
    source.write_bytes(b"x" * 4096)
    try:
        with open(source, "rb") as reader, open(target, "wb") as writer:
            fcntl.ioctl(writer.fileno(), FICLONE, reader.fileno())
        return True
    except OSError:
        return False
