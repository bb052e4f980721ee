"""Datasets from the Hugging Face Hub (`data.source: hub:ORG/NAME`), pinned to the commit they came from.

`prepare` writes the rows into data/prepared, a DVC output like the base model, so rebuilding an
old version restores them from the DVC cache or remote and never asks the hub again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from tuneledger.core.errors import TuneLedgerError, first_line
from tuneledger.core.params import DataParams

_COMMIT = re.compile(r"[0-9a-f]{40}")


def _builder(data: DataParams, name: str):
    """A prepared datasets builder (its `hash` is the resolved commit), or one clear error line."""
    from datasets import load_dataset_builder
    from datasets.exceptions import DatasetNotFoundError

    try:
        builder = load_dataset_builder(name, data.config, revision=data.revision)
        builder.download_and_prepare()
        return builder
    except (DatasetNotFoundError, ConnectionError, FileNotFoundError, ValueError, OSError) as exc:
        reason = first_line(exc)
        raise TuneLedgerError(
            f"data.source: dataset {name!r} could not be loaded ({reason}); check the id, data.revision, "
            "data.config, the network or HF_DATASETS_OFFLINE"
        ) from None


def load_split(data: DataParams) -> tuple[Iterator[tuple[str, dict]], dict[str, Any]]:
    """The split's rows, each with where it came from (for error lines), and the source record."""
    name = data.source.removeprefix("hub:")
    builder = _builder(data, name)
    if data.split not in builder.info.splits:
        known = ", ".join(builder.info.splits) or "none"
        raise TuneLedgerError(f"data.split: {name} has no split {data.split!r} (it has {known})")
    commit = builder.hash
    if data.revision and _COMMIT.fullmatch(data.revision) and commit != data.revision:
        raise TuneLedgerError(
            f"data.revision: {name} resolved to {commit}, not the pinned {data.revision} "
            "(offline, only the cached revision is available)"
        )
    rows = (
        # Arrow gives every row every column; a column a row lacks comes back as None.
        (f"{data.source}[{data.split}][{index}]", {k: v for k, v in row.items() if v is not None})
        for index, row in enumerate(builder.as_dataset(split=data.split))
    )
    return rows, {"revision": data.revision, "commit": commit, "config": data.config, "split": data.split}
