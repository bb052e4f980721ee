"""Named artifacts, as declared in dvc.yaml `artifacts:`; each is a package path with a manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.layout import manifest_path_for

DEFAULT_NAME = "lora-adapter"


@dataclass(frozen=True)
class Artifact:
    name: str
    path: Path  # the package directory, relative to the repository root

    @property
    def manifest(self) -> Path:
        return manifest_path_for(self.path)


def declared() -> dict[str, Artifact]:
    try:
        spec = yaml.safe_load(Path("dvc.yaml").read_text()) or {}
    except FileNotFoundError:
        raise TuneLedgerError("dvc.yaml not found; run tuneledger from the repository root") from None
    return {
        name: Artifact(name, Path(entry["path"])) for name, entry in (spec.get("artifacts") or {}).items()
    }


def resolve(name: str) -> Artifact:
    known = declared()
    if name not in known:
        names = ", ".join(known) or "none"
        raise TuneLedgerError(
            f"artifact {name!r} is not declared in dvc.yaml `artifacts:` (declared: {names})"
        )
    return known[name]
