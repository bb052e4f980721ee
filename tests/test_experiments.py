"""Variants: `dvc exp run -S lora.r=4` trains a rank-4 adapter that `dvc exp show` and `diff` tell apart."""

from __future__ import annotations

import json

from conftest import read_json, run
from tuneledger.models.checkpoints import SEAL
from tuneledger.package.weights import tensor_shapes


def test_variant_weights_have_rank_4(variant):
    repo, _ = variant
    shapes = tensor_shapes(repo / "models/adapter/adapter_model.safetensors")
    assert {shape[0] for name, (_, shape) in shapes.items() if ".lora_A." in name} == {4}


def test_checkpoints_of_the_default_params_were_ignored(variant):
    repo, log = variant
    assert "resuming from" not in log
    assert "ignoring 2 checkpoint(s) of another configuration" in log
    seals = {json.loads(p.read_text())["config_id"] for p in (repo / "models/checkpoints").glob(f"*/{SEAL}")}
    assert seals == {read_json(repo / "results/train/summary.json")["config_id"]}


def test_exp_show_compares_both_with_metrics(variant):
    repo, _ = variant
    rows = json.loads(run("dvc", "exp", "show", "--json", cwd=repo).stdout)
    baseline = next(row for row in rows if row["rev"] != "workspace")
    runs = [baseline, *(rev for exp in baseline["experiments"] for rev in exp["revs"])]
    ranks = {r["data"]["params"]["params.yaml"]["data"]["lora"]["r"]: r for r in runs}
    assert set(ranks) == {8, 4}
    for entry in ranks.values():
        tuned = entry["data"]["metrics"]["results/evaluate/metrics.json"]["data"]["tuned"]
        assert 0.0 <= tuned["exact_match"] <= 1.0


def test_diff_reads_the_rank_from_the_weights(variant):
    repo, _ = variant
    result = json.loads(run("tuneledger", "diff", "HEAD", "models/export", "--json", cwd=repo).stdout)
    assert (result["a"]["adapter.rank_from_weights"], result["b"]["adapter.rank_from_weights"]) == (8, 4)
    assert result["a"]["adapter.trainable_parameters"] == 2 * result["b"]["adapter.trainable_parameters"]
    assert {"adapter.rank_from_weights", "params.lora.r", "content_id"} <= set(result["differing"])
    table = run("tuneledger", "diff", "HEAD", "models/export", cwd=repo).stdout
    assert "rank_from_weights" in table


def test_diff_of_an_unknown_revision_is_one_line(variant):
    repo, _ = variant
    failed = run("tuneledger", "diff", "no-such-rev", "models/export", cwd=repo, check=False)
    assert failed.returncode == 1 and failed.stderr.startswith(
        "error: no-such-rev: neither a package directory"
    )
