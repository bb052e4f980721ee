"""A long registry history written in one `git fast-import` pass, for scale tests and the bench.

Each version gets a commit of its own (an empty commit on top of HEAD, so it holds HEAD's dvc.yaml
and manifest), a `NAME@vX.Y.Z` tag, and stage tags cycle through dev, staging and prod, each in a
second of its own, with messages in TuneLedger's format. Creating the same tags through gto would
take hours at 1,000 versions.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tuneledger.registry.tags import compose_message

NAME = "lora-adapter"
WHO = "Registry Bench <bench@tuneledger.invalid>"
STAGES = ("dev", "staging", "prod")


def _data(text: str) -> str:
    raw = text.encode()
    return f"data {len(raw)}\n{text}\n"


def _tag(tag: str, mark: int, when: int, summary: str, info: dict) -> str:
    return f"tag {tag}\nfrom :{mark}\ntagger {WHO} {when} +0000\n" + _data(compose_message(summary, info))


def write_history(repo: Path, versions: int, stage_tags: int, start: int = 1_600_000_000) -> dict:
    """Append `versions` versions and `stage_tags` stage moves; return what the last moves left."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
    stream, when, holders = [], start, {}
    for index in range(versions):
        mark = index + 1
        parent = f"from {head.stdout.strip()}\n" if index == 0 else ""
        stream.append(
            f"commit refs/heads/registry-history\nmark :{mark}\n"
            f"committer {WHO} {when} +0000\n" + _data(f"version {index}") + parent
        )
        version = f"v1.{index}.0"
        info = {"action": "register", "content_id": f"{index:064x}", "by": WHO, "metrics": {}}
        stream.append(_tag(f"{NAME}@{version}", mark, when, f"register {NAME}", info))
        when += 1
    for move in range(stage_tags):
        stage = STAGES[move % len(STAGES)]
        index = min(versions - 1, move * versions // max(stage_tags, 1))
        version = f"v1.{index}.0"
        info = {"action": "promote", "from": holders.get(stage), "by": WHO, "content_id": f"{index:064x}"}
        stream.append(_tag(f"{NAME}#{stage}#{move + 1}", index + 1, when, f"promote to {stage}", info))
        holders[stage] = version
        when += 1
    subprocess.run(["git", "fast-import", "--quiet"], cwd=repo, input="".join(stream), text=True, check=True)
    return holders
