"""lm-eval benchmarks on a loaded model: EleutherAI's harness does the scoring, this module the
bookkeeping (which task setup was scored, on which documents).

The model is passed to lm-eval's own `HFLM` as an object, so it is exactly the model `evaluate`
scores: the same loader, dtype, quantization and adapter. Chat models are prompted through lm-eval's
`apply_chat_template` option, which renders with the tokenizer's template: the package's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneledger.core.errors import TuneLedgerError, first_line
from tuneledger.core.hashing import sha256_bytes
from tuneledger.core.params import BenchmarkParams
from tuneledger.models import chat

# lm-eval reports `metric,filter` keys; a task's headline is the first metric of its metric_list.
_STDERR = "_stderr"


def task_manager(benchmarks: list[BenchmarkParams], include_path: Path):
    """lm-eval's task index for these benchmarks, refusing a task it does not know before any model
    loads. Indexing lm-eval's own registry reads thousands of YAML files (6 s here), so the local
    folder is indexed alone first and the registry only when a task is not found there."""
    from lm_eval.tasks import TaskManager

    local = str(include_path) if include_path.is_dir() else None
    local_tasks = (
        TaskManager(verbosity="ERROR", include_path=local, include_defaults=False) if local else None
    )
    local_names = set(local_tasks.all_tasks) if local_tasks else set()  # their `task:` names
    wanted = {b.task for b in benchmarks}
    tasks = local_tasks if wanted <= local_names else TaskManager(verbosity="ERROR", include_path=local)
    known = local_names if tasks is local_tasks else set(tasks.all_tasks)
    unknown = [b.task for b in benchmarks if b.task not in known]
    if unknown:
        there = sorted(local_names)
        raise TuneLedgerError(
            f"params.yaml: eval.benchmarks: unknown lm-eval task {', '.join(map(repr, unknown))}; "
            f"use a task of lm-eval's registry or a YAML file under {include_path}/ "
            f"(there: {', '.join(there) or 'none'})"
        )
    return tasks


def score(model, tokenizer, benchmark: BenchmarkParams, tasks) -> dict[str, Any]:
    """One task scored on `model`: its headline metric, stderr, setup and the documents' hash."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    harness_model = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=benchmark.batch_size)
    try:
        results = lm_eval.simple_evaluate(
            model=harness_model,
            tasks=[benchmark.task],
            num_fewshot=benchmark.num_fewshot,
            limit=benchmark.limit,
            task_manager=tasks,
            apply_chat_template=chat.base_template(tokenizer) is not None,
            log_samples=True,  # the per-document hashes that pin which data were scored
            verbosity="ERROR",
        )
    except Exception as exc:  # dataset download, a broken YAML: one line naming the task
        raise TuneLedgerError(
            f"eval.benchmarks: task {benchmark.task!r} failed: {first_line(exc)}; a registry task needs "
            "the hub or an HF datasets cache, a local one its data file"
        ) from exc
    return _record(results, benchmark)


def _record(results: dict, benchmark: BenchmarkParams) -> dict[str, Any]:
    task = benchmark.task
    metric = _headline_metric(results, task)
    values = results["results"][task]
    key = next(k for k in values if k.split(",")[0] == metric)
    stderr = values.get(key.replace(",", f"{_STDERR},", 1))
    samples = results.get("samples") or {}
    documents = [doc["doc_hash"] for name in sorted(samples) for doc in samples[name]]
    return {
        "metric": metric,
        "score": values[key],
        "stderr": stderr if isinstance(stderr, float) else None,
        "task_version": str(results["versions"].get(task)),
        "num_fewshot": benchmark.num_fewshot,
        "limit": benchmark.limit,
        "samples": len(documents),
        # Which documents were scored, in order: a changed data file, split or limit shows here.
        "data_sha256": sha256_bytes("\n".join(documents).encode()),
    }


def _headline_metric(results: dict, task: str) -> str:
    config = results.get("configs", {}).get(task) or {}
    entries = config.get("metric_list") or []
    listed = [entry["metric"] for entry in entries if isinstance(entry.get("metric"), str)]
    if listed:
        return listed[0]
    # A group (mmlu) has no metric_list of its own: its first aggregated metric.
    return next(k.split(",")[0] for k in results["results"][task] if "," in k and _STDERR not in k)
