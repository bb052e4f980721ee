"""Stage `base`: pin the base model, with the run's chat template, into models/base.

A stage of its own, depending on `model.base`, `model.revision` and `model.chat_template` only:
a change to the data, the seed or the quantization reuses the pinned base instead of rebuilding or
downloading it again."""

from __future__ import annotations

from tuneledger.core.layout import BASE_DIR, BASE_RECORD
from tuneledger.core.params import Params
from tuneledger.core.progress import say
from tuneledger.core.publication import StageOutputs
from tuneledger.models import base_model
from tuneledger.stages import stage_entry


def run(params: Params) -> None:
    with StageOutputs(BASE_DIR, BASE_RECORD) as outputs:
        base = outputs.staged_dir(BASE_DIR)
        source = base_model.snapshot(
            params.model.base, params.model.revision, params.model.chat_template, base
        )
        base_model.write_build_record(source, base, outputs.staged_file(BASE_RECORD))
    say(f"base {source['id']} → {BASE_DIR}")


main = stage_entry(run)


if __name__ == "__main__":
    main()
