"""The default pipeline end to end: a fresh clone's `dvc repro` learns, exports and reproduces."""

from __future__ import annotations

import yaml

from conftest import PROJECT, copy_repo, read_json, run
from tuneledger.core import kernels
from tuneledger.core.hashing import sha256_file
from tuneledger.core.layout import BASE_RECORD


def _outs(lock_path):
    lock = yaml.safe_load(lock_path.read_text())
    return {out["path"]: out.get("md5") for stage in lock["stages"].values() for out in stage.get("outs", [])}


def test_fine_tuning_clearly_beats_the_base(default_run):
    metrics = read_json(default_run / "results/evaluate/metrics.json")
    assert set(metrics) == {"base", "tuned"}
    for side in metrics.values():
        assert set(side) == {"loss", "perplexity", "exact_match"}
    assert metrics["tuned"]["loss"] < 0.8 * metrics["base"]["loss"]
    assert metrics["tuned"]["exact_match"] > metrics["base"]["exact_match"]


def test_repro_is_clean_and_a_second_run_is_a_no_op(default_run):
    assert "up to date" in run("dvc", "status", cwd=default_run).stdout
    second = run("dvc", "repro", cwd=default_run).stdout
    assert "didn't change, skipping" in second and "Running stage" not in second


def test_fresh_clone_reproduces_the_committed_bytes(default_run, tmp_path):
    """The README's promise, checked on whatever machine runs it: where this CPU's kernel fingerprint
    equals the one that built the committed outputs, every byte equals them; where it does not (the
    promise excludes that pair), this machine rebuilds its own bytes exactly and names where the two
    CPUs part."""
    committed, rebuilt = _outs(PROJECT / "dvc.lock"), _outs(default_run / "dvc.lock")
    assert rebuilt["data/prepared"] == committed["data/prepared"]  # no float op: equal everywhere
    reference = read_json(PROJECT / BASE_RECORD)
    here = read_json(default_run / BASE_RECORD)
    parting = kernels.first_difference(reference["built_on"], here["built_on"])
    if parting is None:
        assert here["tensors"] == reference["tensors"]
        for path in ("models/base", "models/adapter"):
            assert rebuilt[path] == committed[path], path
        assert _content_id(default_run) == _content_id(PROJECT)
        return
    # Another CPU: the base is still the same bytes every time it is built here.
    again = copy_repo(default_run, tmp_path / "again")
    run("dvc", "repro", "--force", "--single-item", "base", cwd=again)
    assert _outs(again / "dvc.lock")["models/base"] == rebuilt["models/base"]
    committed_training = read_json(PROJECT / "results/train/summary.json")["environment"]["kernels"]
    training_here = read_json(default_run / "results/train/summary.json")["environment"]["kernels"]
    assert kernels.first_difference(committed_training, training_here) is not None


def _content_id(repo):
    return read_json(repo / "models/export.manifest.json")["content_id"]


def test_stages_train_with_portable_cpu_kernels_and_record_them(default_run):
    """The kernel branch decides the trained bits across machines, so it is pinned and recorded,
    with the CPU and the fingerprint that say whether another machine rounds alike."""
    recorded = read_json(default_run / "models/export/metadata.json")["environment"]["kernels"]
    settings = recorded["settings"]
    assert {name: settings[name] for name in kernels.PORTABLE_CPU_KERNELS} == kernels.PORTABLE_CPU_KERNELS
    assert settings["aten_capability"] == "AVX2"
    assert recorded["cpu"] == kernels.cpu_name() and recorded["vendor"] == kernels.cpu_vendor()
    assert recorded["threads"] == 2 and recorded["fingerprint_version"] == kernels.FINGERPRINT_VERSION
    assert [op for op, _ in recorded["fingerprint"]] == list(kernels.fingerprint())  # every op, in order
    built = read_json(default_run / BASE_RECORD)["built_on"]
    assert (
        kernels.first_difference(built, recorded) is None
    )  # prepare and train: one machine, one fingerprint


def test_outputs_stay_out_of_git(default_run):
    ignored = run(
        "git",
        "check-ignore",
        "models/base",
        "models/adapter",
        "models/export",
        "data/prepared",
        "models/checkpoints",
        cwd=default_run,
    ).stdout.split()
    assert len(ignored) == 5
    assert "models/export.manifest.json" in run("git", "ls-files", cwd=PROJECT).stdout


def test_training_logs_and_plots_through_dvclive(default_run):
    loss_curve = (default_run / "results/train/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert loss_curve[0] == "step\tloss" and len(loss_curve) > 10
    summary = read_json(default_run / "results/train/summary.json")
    assert summary["steps"] > 0 and summary["world_size"] == 1
    shown = run("dvc", "plots", "show", "--json", cwd=default_run).stdout
    assert "train/loss.tsv" in shown and "comparison.json" in shown


def test_export_holds_no_pickle_and_verifies(default_run):
    names = {p.name for p in (default_run / "models/export").rglob("*")}
    assert "training_args.bin" not in names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    manifest = read_json(default_run / "models/export.manifest.json")
    for name, entry in manifest["files"].items():
        assert sha256_file(default_run / "models/export" / name) == entry["sha256"]
    assert "ok:" in run("tuneledger", "verify", cwd=default_run).stdout


STAGE_LEAVING_A_CYCLE = """
import gc, weakref
from tuneledger.stages import stage_entry

class Node:
    pass

finalized = []

def run(params):
    node = Node()
    node.itself = node  # garbage only the cyclic collector can free
    weakref.finalize(node, finalized.append, "finalized")

gc.disable()  # no automatic pass may free the cycle: only the stage's own exit steps
stage_entry(run)()
print(finalized, gc.get_freeze_count() > 0)
"""


def test_a_stage_finalizes_its_garbage_and_spares_shutdown_the_rest(tmp_path):
    """A stage process exits without the shutdown collector's pass over everything torch and
    transformers created (a bench figure), yet what the run left in reference cycles is still
    finalized before the process ends."""
    (tmp_path / "params.yaml").write_bytes((PROJECT / "params.yaml").read_bytes())
    printed = run("python", "-c", STAGE_LEAVING_A_CYCLE, cwd=tmp_path).stdout
    assert printed.split() == ["['finalized']", "True"]
