"""Stage `benchmark`: lm-eval tasks (`eval.benchmarks`) on the base and on base+adapter.

A stage of its own beside `evaluate`: changing the task list reruns neither training nor `evaluate`.
Its results feed the package (`metadata.json`, the card's model-index) and the promotion gate's
forgetting check."""

from __future__ import annotations

import json

from tuneledger.core.layout import (
    ADAPTER_DIR,
    BASE_DIR,
    BENCHMARK_METRICS,
    BENCHMARKS_FILE,
    EVAL_TASKS_DIR,
)
from tuneledger.core.params import Params
from tuneledger.core.progress import say
from tuneledger.core.publication import Publication
from tuneledger.inference import harness
from tuneledger.models import modeling
from tuneledger.package import benchmarks
from tuneledger.stages import stage_entry


def run(params: Params) -> dict[str, dict]:
    listed = params.eval.benchmarks
    records = _score_all(params) if listed else {}
    with Publication(BENCHMARKS_FILE, BENCHMARK_METRICS) as outputs:  # both together, or neither
        outputs.staged_file(BENCHMARKS_FILE).write_text(json.dumps({"tasks": records}, indent=2) + "\n")
        summary = benchmarks.summary(records)
        outputs.staged_file(BENCHMARK_METRICS).write_text(json.dumps(summary, indent=2) + "\n")
    say(benchmarks.table(records) if records else "benchmark: eval.benchmarks is empty; nothing scored")
    return records


def _score_all(params: Params) -> dict[str, dict]:
    from peft import PeftModel

    tasks = harness.task_manager(params.eval.benchmarks, EVAL_TASKS_DIR)
    tokenizer = modeling.load_tokenizer(BASE_DIR)
    model = modeling.load_base(BASE_DIR, None, params.model.dtype, params.model.quantization)  # as evaluate
    base = {b.task: harness.score(model, tokenizer, b, tasks) for b in params.eval.benchmarks}
    tuned_model = PeftModel.from_pretrained(model, str(ADAPTER_DIR)).eval()  # wraps the base in place
    tuned = {b.task: harness.score(tuned_model, tokenizer, b, tasks) for b in params.eval.benchmarks}
    return {task: benchmarks.combine(task, base[task], tuned[task]) for task in base}


main = stage_entry(run)


if __name__ == "__main__":
    main()
