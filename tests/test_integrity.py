"""Identities that must depend on meaning only: the content id and the training configuration id.

The content id must not change with Python's hash seed (peft writes set-valued config fields in set
order), and the configuration id must change with everything that decides the trained bytes, the
launcher's world size and the CPU kernels included, so a checkpoint of another setting is never
resumed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import copy_repo, read_json, run, set_params
from tuneledger.models.checkpoints import SEAL, checkpoint_dirs, select_resumable
from tuneledger.package import manifest

TARGETS = ["c_attn", "c_proj"]


def hash_seeds_with_two_orders(names: list[str]) -> dict[str, list[str]]:
    """Two PYTHONHASHSEED values under which Python iterates `set(names)` in different orders."""
    orders: dict[tuple[str, ...], str] = {}
    for seed in range(100):
        shown = subprocess.run(
            [sys.executable, "-c", f"print(*set({names!r}))"],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        orders.setdefault(tuple(shown), str(seed))
        if len(orders) == 2:
            return {seed: list(order) for order, seed in orders.items()}
    raise AssertionError(f"no two hash seeds order {names} differently")


# peft reads the adapter's config back (target_modules becomes a set) and saves it again, as it does
# at the end of every training process; then the export stage runs in that same process.
SAVE_WITH_PEFT_THEN_EXPORT = """
from peft import LoraConfig
LoraConfig.from_pretrained("models/adapter").save_pretrained("models/adapter")
from tuneledger.stages.export import main
main()
"""


@pytest.fixture(scope="module")
def two_target_run(default_run, tmp_path_factory):
    """The default run retrained with LoRA on two layer types, so peft keeps a two-element set."""
    repo = copy_repo(default_run, tmp_path_factory.mktemp("two-targets") / "repo")
    set_params(repo, **{"lora.target_modules": TARGETS})
    run("dvc", "repro", "train", cwd=repo)
    return repo


def test_the_content_id_does_not_depend_on_the_hash_seed(two_target_run):
    repo = two_target_run
    exported = {}
    for seed, order in hash_seeds_with_two_orders(TARGETS).items():
        run("python", "-c", SAVE_WITH_PEFT_THEN_EXPORT, cwd=repo, env={"PYTHONHASHSEED": seed})
        config = read_json(repo / "models/adapter/adapter_config.json")
        assert config["target_modules"] == order  # peft wrote this process's set order
        exported[seed] = read_json(repo / "models/export.manifest.json")["content_id"]
    first, second = exported.values()
    assert first == second
    adapter = read_json(repo / "models/export/metadata.json")["adapter"]
    assert adapter["target_modules_from_weights"] == sorted(TARGETS)


@pytest.fixture
def package(default_run, tmp_path):
    target = tmp_path / "pkg"
    shutil.copytree(default_run / "models/export", target)
    return target


def content_id_of(package) -> str:
    return manifest.content_id(package, manifest.package_files(package))


def rewrite_config(package, **changes) -> None:
    path = package / "adapter_config.json"
    config = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps(config, indent=4))  # another layout than peft's


def test_the_content_id_reads_the_adapter_config_by_meaning(package):
    rewrite_config(package, target_modules=["c_proj", "c_attn"], modules_to_save=["wte", "lm_head"])
    reordered = content_id_of(package)
    rewrite_config(package, target_modules=["c_attn", "c_proj"], modules_to_save=["lm_head", "wte"])
    assert content_id_of(package) == reordered
    rewrite_config(package, layers_to_transform=[1, 0])  # an ordered list: its order is meaning
    transformed = content_id_of(package)
    rewrite_config(package, layers_to_transform=[0, 1])
    assert content_id_of(package) != transformed
    rewrite_config(package, target_modules=["c_attn"])
    assert content_id_of(package) != reordered


# --- the configuration a checkpoint belongs to ------------------------------------------------

# What the train stage does first: compute its configuration id and choose a checkpoint to resume
# (without removing the others, so every setting sees the same checkpoints).
CHOOSE_CHECKPOINT = """
import json
from tuneledger.models.checkpoints import select_resumable
from tuneledger.core.layout import CHECKPOINTS_DIR
from tuneledger.core.params import load_params
from tuneledger.stages.train import config_id
config = config_id(load_params())
resume, unusable = select_resumable(CHECKPOINTS_DIR, config, remove=False)
print(json.dumps({"config_id": config, "resume": str(resume) if resume else None}))
"""

LAUNCH_SETTINGS = {
    "as run": {},
    "world size 2": {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"},  # as torchrun sets them
    "other CPU kernels": {"MKL_CBWR": "AUTO"},  # a user's own kernel choice wins over the portable one
}


@pytest.fixture(scope="module")
def chosen_checkpoints(default_run):
    """The train stage's start under each launch setting, same params, all at once."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MKL_CBWR")}
    procs = {
        name: subprocess.Popen(
            ["python", "-c", CHOOSE_CHECKPOINT],
            cwd=default_run,
            env={**env, **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, extra in LAUNCH_SETTINGS.items()
    }
    chosen = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        chosen[name] = json.loads(out.strip().splitlines()[-1])
    return chosen


def test_the_run_resumes_its_own_final_checkpoint(default_run, chosen_checkpoints):
    as_run = chosen_checkpoints["as run"]
    assert as_run["config_id"] == read_json(default_run / "results/train/summary.json")["config_id"]
    newest = checkpoint_dirs(default_run / "models/checkpoints")[-1]
    assert as_run["resume"] == newest.relative_to(default_run).as_posix()


@pytest.mark.parametrize("setting", ["world size 2", "other CPU kernels"])
def test_another_launch_setting_is_another_configuration(default_run, chosen_checkpoints, setting):
    other = chosen_checkpoints[setting]
    assert other["config_id"] != chosen_checkpoints["as run"]["config_id"]
    assert other["resume"] is None  # every sealed checkpoint of the run is refused
    root = default_run / "models/checkpoints"
    sealed = [(c / SEAL).is_file() for c in checkpoint_dirs(root)]
    assert sealed and all(sealed), "the run left checkpoints, every one of them sealed"
    assert select_resumable(root, other["config_id"], remove=False) == (None, checkpoint_dirs(root))
