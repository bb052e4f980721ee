"""Stage `prepare`: read the data source and split it deterministically into data/prepared."""

from __future__ import annotations

from tuneledger.core.layout import PREPARED_DIR
from tuneledger.core.params import Params
from tuneledger.core.progress import say
from tuneledger.core.publication import StageOutputs
from tuneledger.models import data
from tuneledger.stages import stage_entry


def run(params: Params) -> None:
    rows, origin = data.load_source(params.data, params.seed)
    splits = data.split(rows, params.data, params.seed)
    with StageOutputs(PREPARED_DIR) as outputs:
        prepared = outputs.staged_dir(PREPARED_DIR)
        for name, split_rows in splits.items():
            data.write_split(split_rows, prepared / f"{name}.jsonl")
        data.write_origin(origin, prepared)
    counts = ", ".join(f"{name} {len(rows)}" for name, rows in splits.items())
    say(f"prepared {params.data.source}: {counts} rows")


main = stage_entry(run)


if __name__ == "__main__":
    main()
