"""The benchmark stage: lm-eval tasks scored on the base and the tuned model, recorded where a
version's facts live, compared only on identical setups, and gated for forgetting.

The real model's tests (the CLI's own numbers, a version that forgot) are in test_real_chat.py,
beside the SmolLM2 run they share."""

from __future__ import annotations

import copy
import json

from huggingface_hub import ModelCard

from conftest import read_json, run, set_params
from tuneledger.core.params import RegistryParams
from tuneledger.registry.promotion_gate import check_benchmarks, check_forgetting, comparability_problems

TASK = "copy_words"
DOCUMENTS = 60  # lines of configs/eval_tasks/copy_words.jsonl


def test_base_and_tuned_are_scored_and_recorded_everywhere(default_run):
    tasks = read_json(default_run / "results/evaluate/benchmarks.json")["tasks"]
    record = tasks[TASK]
    assert record["metric"] == "acc" and record["samples"] == DOCUMENTS and record["limit"] is None
    assert 0.0 <= record["base"] <= 1.0 and 0.0 <= record["tuned"] <= 1.0
    assert record["change"] == record["tuned"] - record["base"]
    assert record["task_version"] == "1.0" and record["num_fewshot"] == 0 and len(record["data_sha256"]) == 64

    summary = {TASK: {key: record[key] for key in ("base", "tuned", "change")}}
    assert read_json(default_run / "results/benchmark/metrics.json") == summary
    shown = json.loads(run("dvc", "metrics", "show", "--json", cwd=default_run).stdout)
    assert json.dumps(summary)[1:-1] in json.dumps(shown)  # `dvc metrics show` (and so `diff`, `exp show`)

    package = default_run / "models/export"
    assert read_json(package / "metadata.json")["benchmarks"] == tasks
    results = ModelCard.load(package / "README.md").data.eval_results
    scored = [r for r in results if r.task_name == TASK]
    assert [(r.metric_type, r.metric_value) for r in scored] == [("acc", record["tuned"])]


def test_a_changed_task_list_reruns_the_benchmark_and_not_training(trained_repo, default_run):
    adapter = (trained_repo / "models/adapter/adapter_model.safetensors").read_bytes()
    set_params(trained_repo, **{"eval.benchmarks": [{"task": TASK, "limit": 20}]})
    status = json.loads(run("dvc", "status", "--json", cwd=trained_repo).stdout)
    assert {name.split(":")[-1] for name in status} == {"benchmark", "export"}

    done = run("dvc", "repro", cwd=trained_repo)
    for unchanged in ("base", "prepare", "train", "evaluate"):
        assert f"Stage '{unchanged}' didn't change" in done.stdout
    assert (trained_repo / "models/adapter/adapter_model.safetensors").read_bytes() == adapter
    record = read_json(trained_repo / "results/evaluate/benchmarks.json")["tasks"][TASK]
    assert record["limit"] == 20 and record["samples"] == 20

    shown = run(
        "tuneledger", "diff", str(default_run / "models/export"), "models/export", "--json", cwd=trained_repo
    )
    differing = json.loads(shown.stdout)["differing"]
    for key in ("limit", "samples", "data_sha256"):
        assert f"benchmarks.{TASK}.{key}" in differing
    table = run("tuneledger", "diff", str(default_run / "models/export"), "models/export", cwd=trained_repo)
    assert f"benchmarks.{TASK}.tuned" in table.stdout


def test_an_empty_list_skips_the_work_and_the_gate_says_so(trained_repo):
    set_params(trained_repo, **{"eval.benchmarks": []})
    done = run("python", "-m", "tuneledger.stages.benchmark", cwd=trained_repo)
    assert "eval.benchmarks is empty; nothing scored" in done.stderr + done.stdout
    assert read_json(trained_repo / "results/evaluate/benchmarks.json") == {"tasks": {}}
    assert read_json(trained_repo / "results/benchmark/metrics.json") == {}
    check = check_forgetting({"benchmarks": {}}, RegistryParams())
    assert check.ok and "no benchmarks recorded" in check.detail


def test_an_unknown_task_is_one_line_and_keeps_the_results(trained_repo):
    before = (trained_repo / "results/evaluate/benchmarks.json").read_bytes()
    set_params(trained_repo, **{"eval.benchmarks": [{"task": "no_such_task"}]})
    failed = run("python", "-m", "tuneledger.stages.benchmark", cwd=trained_repo, check=False)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert (
        "error: params.yaml: eval.benchmarks: unknown lm-eval task 'no_such_task'; use a task of lm-eval's "
        "registry or a YAML file under configs/eval_tasks/ (there: copy_words)"
    ) in failed.stderr
    assert (trained_repo / "results/evaluate/benchmarks.json").read_bytes() == before


def test_versions_are_compared_only_on_the_same_task_setup(default_run):
    holder = read_json(default_run / "models/export/metadata.json")
    limits = RegistryParams()
    assert check_benchmarks(copy.deepcopy(holder), holder, limits).ok
    for key, value, shown in (
        ("limit", 20, "limit 20 vs None"),
        ("task_version", "2.0", "task_version '2.0' vs '1.0'"),
        ("num_fewshot", 5, "num_fewshot 5 vs 0"),
    ):
        candidate = copy.deepcopy(holder)
        candidate["benchmarks"][TASK][key] = value
        check = check_benchmarks(candidate, holder, limits)
        assert not check.ok and check.detail == f"not comparable: {TASK}: {shown}"

    worse = copy.deepcopy(holder)
    worse["benchmarks"][TASK]["tuned"] = holder["benchmarks"][TASK]["tuned"] * (1 - limits.tolerance) - 0.01
    assert not check_benchmarks(worse, holder, limits).ok


def test_a_changed_task_list_keeps_the_test_split_metrics_comparable(default_run):
    """Benchmarks are compared task by task; the task list does not decide the test-split metrics."""
    holder = read_json(default_run / "models/export/metadata.json")
    candidate = copy.deepcopy(holder)
    candidate["params"]["eval"]["benchmarks"] = [{"task": TASK, "limit": 20, "num_fewshot": 5}]
    assert comparability_problems(candidate, holder) == []
    candidate["params"]["eval"]["max_examples"] = 60
    assert comparability_problems(candidate, holder) == ["other eval params (eval.max_examples 60 vs None)"]


def test_forgetting_is_measured_against_the_versions_own_base(default_run):
    meta = read_json(default_run / "models/export/metadata.json")
    record = meta["benchmarks"][TASK]
    limits = RegistryParams(max_forgetting=0.02)
    for lost, refused in ((0.02, False), (0.03, True)):
        candidate = copy.deepcopy(meta)
        candidate["benchmarks"][TASK].update(base=0.9, tuned=0.9 - lost, change=-lost)
        check = check_forgetting(candidate, limits)
        assert check.ok is not refused, (lost, check.detail)
    assert "copy_words acc 0.900 → 0.870 (-0.030)" in check.detail and "more than 0.02" in check.detail
    assert record["base"] - record["tuned"] == -record["change"]
