"""SHA-256 verify throughput of `tuneledger verify` versus `openssl dgst -sha256` on one 1 GB file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from common import interleaved, ratio, sh, summary

from tuneledger.package import manifest
from tuneledger.package.verify import verify

SIZE = 1024**3


def run(ctx: dict | None = None, rounds: int = 5) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "pkg"
        package.mkdir()
        blob = package / "model.safetensors.part"
        with open(blob, "wb") as handle:
            for _ in range(SIZE // (64 * 1024**2)):
                handle.write(os.urandom(64 * 1024**2))
        manifest_file = Path(tmp) / "pkg.manifest.json"
        files = {
            "model.safetensors.part": {
                "sha256": sh("openssl", "dgst", "-sha256", "-r", str(blob)).split()[0],
                "size": SIZE,
            }
        }
        manifest_file.write_text(manifest.Manifest("n/a", files).to_json())
        times = interleaved(
            {
                "openssl": lambda: sh("openssl", "dgst", "-sha256", str(blob)),
                "tuneledger verify": lambda: verify(package, manifest_file),
            },
            rounds,
        )
    median, low, high = ratio(times["openssl"], times["tuneledger verify"])
    return {
        "title": "SHA-256 verify throughput (1 GiB file, page cache warm)",
        "rows": [
            (
                "`openssl dgst -sha256`",
                summary(times["openssl"]),
                f"{SIZE / 1e6 / min(times['openssl']):.0f} MB/s best",
            ),
            (
                "`tuneledger verify`",
                summary(times["tuneledger verify"]),
                f"{SIZE / 1e6 / min(times['tuneledger verify']):.0f} MB/s best",
            ),
        ],
        "ratios": [("verify throughput / openssl throughput", median, low, high, "≥ 0.90")],
    }


if __name__ == "__main__":
    print(run(rounds=3))
