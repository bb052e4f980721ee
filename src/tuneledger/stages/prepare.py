"""Stage `prepare`: pin the base model into models/base and split the data into data/prepared."""

from __future__ import annotations

from tuneledger import base_model, data
from tuneledger.layout import BASE_DIR, BASE_RECORD, PREPARED_DIR
from tuneledger.params import Params
from tuneledger.progress import say
from tuneledger.publication import StageOutputs
from tuneledger.stages import stage_entry


def run(params: Params) -> None:
    # Data first: a broken dataset line should fail in a second, not after a model download.
    rows, origin = data.load_source(params.data, params.seed)
    splits = data.split(rows, params.data, params.seed)
    with StageOutputs(PREPARED_DIR, BASE_DIR, BASE_RECORD) as outputs:
        prepared = outputs.staged_dir(PREPARED_DIR)
        for name, split_rows in splits.items():
            data.write_split(split_rows, prepared / f"{name}.jsonl")
        data.write_origin(origin, prepared)
        conversational = data.is_conversational(rows)
        base = outputs.staged_dir(BASE_DIR)
        source = base_model.snapshot(params.model, base, params.seed, conversational)
        base_model.write_build_record(source, base, outputs.staged_file(BASE_RECORD))
    counts = ", ".join(f"{name} {len(rows)}" for name, rows in splits.items())
    say(f"prepared {params.data.source}: {counts} rows; base {source['id']} → {BASE_DIR}")


main = stage_entry(run)


if __name__ == "__main__":
    main()
