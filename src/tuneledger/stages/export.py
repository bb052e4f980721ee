"""Stage `export`: the immutable, self-describing version package in models/export.

The package is assembled in a staging directory and renamed into place only when complete, so a
reader sees the previous package or the new one, never a mixture.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tuneledger.core import git, kernels
from tuneledger.core.hashing import sha256_file, tree_digest
from tuneledger.core.layout import (
    ADAPTER_DIR,
    BASE_DIR,
    BENCHMARKS_FILE,
    EVAL_RESULTS,
    EXPORT_DIR,
    MANIFEST_FILE,
    PREPARED_DIR,
    TRAIN_SUMMARY,
)
from tuneledger.core.params import Params
from tuneledger.core.progress import say
from tuneledger.core.publication import StageOutputs
from tuneledger.models import base_model, data, modeling
from tuneledger.package import card, environment, manifest, metadata, signature
from tuneledger.package.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS, GENERATION_CONFIG, METADATA, SIGNATURE
from tuneledger.package.safetensors_io import rewrite_metadata
from tuneledger.package.weights import describe_adapter
from tuneledger.stages import stage_entry


def _data_record() -> dict:
    splits = {}
    for name in data.SPLITS:
        path = PREPARED_DIR / f"{name}.jsonl"
        with open(path, encoding="utf-8") as handle:
            rows = sum(1 for line in handle if line.strip())
        splits[name] = {"sha256": sha256_file(path), "rows": rows}
    return {**data.read_origin(PREPARED_DIR), "splits": splits}


def _base_record() -> dict:
    digest, files = tree_digest(BASE_DIR)
    return {**base_model.read_source(BASE_DIR), "sha256": digest, "files": files}


def _copy_adapter(base_id: str, staged: Path) -> None:
    """The trained adapter and its generation config, naming its base as the user gave it (a hub id
    or a local path), so `AutoPeftModelForCausalLM`, vLLM and the Hub find it; the snapshot path
    would mean nothing elsewhere."""
    for name in (ADAPTER_WEIGHTS, GENERATION_CONFIG):
        shutil.copyfile(ADAPTER_DIR / name, staged / name)
    config = json.loads((ADAPTER_DIR / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_id
    (staged / ADAPTER_CONFIG).write_text(
        json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def _signature(params: Params, base_config: dict, conversational: bool) -> dict:
    context = base_config.get("n_positions") or base_config.get("max_position_embeddings") or 2048
    new_tokens = min(params.export.max_new_tokens, context - 1)
    return signature.build(
        max_prompt_chars=params.export.max_prompt_chars,
        max_prompt_tokens=context - new_tokens,  # prompt and answer must fit the model's context
        max_new_tokens=new_tokens,
        default_new_tokens=params.eval.max_new_tokens,
        conversational=conversational,
    )


def _write_merged(staged: Path, params: Params) -> None:
    """`merge_and_unload()` onto the unquantized base in the run's dtype (never onto nf4/int8 weights)."""
    from peft import PeftModel

    kernels.pin_cpu_threads(params.train.cpu_threads)  # merged weights are byte-identical for a fixed count
    base = modeling.load_base(BASE_DIR, "cpu", params.model.dtype)
    model = PeftModel.from_pretrained(base, str(staged))
    merged = model.merge_and_unload()
    merged.save_pretrained(str(staged / "merged"))
    modeling.copy_tokenizer(BASE_DIR, staged / "merged")


def build_package(params: Params, staged: Path) -> manifest.Manifest:
    """Write every file of the package into `staged`; return its manifest."""
    base = base_model.read_source(BASE_DIR)
    _copy_adapter(base["id"], staged)
    modeling.copy_tokenizer(BASE_DIR, staged)  # the chat template among them
    if params.export.merge:
        _write_merged(staged, params)
    content_id = manifest.content_id(staged, manifest.package_files(staged))
    commit = git.head_commit()
    dirty = git.dirty_paths()
    rewrite_metadata(
        staged / ADAPTER_WEIGHTS, {"tuneledger.content_id": content_id, "tuneledger.git_commit": commit or ""}
    )

    training = json.loads(TRAIN_SUMMARY.read_text())
    env = training.pop("environment")  # described by `train`, where the weights were computed
    training.pop("launch_id", None)  # a fact of one launch, not of the model
    record = metadata.build(
        content_id=content_id,
        git={"commit": commit, "dirty": bool(dirty) if dirty is not None else None, "dirty_paths": dirty},
        # The registry's promotion policy is not part of the model: changing it must not rebuild packages.
        params=params.model_dump(mode="json", exclude={"registry"}),
        data=_data_record(),
        base_model=_base_record(),
        adapter=describe_adapter(staged),
        training=training,
        metrics=json.loads((EVAL_RESULTS / "metrics.json").read_text()),
        benchmarks=json.loads(BENCHMARKS_FILE.read_text())["tasks"],
        environment=env,
    )
    base_config = json.loads((BASE_DIR / "config.json").read_text())
    (staged / METADATA).write_text(metadata.to_json(record))
    signature_record = _signature(params, base_config, conversational=bool(base.get("chat_template")))
    (staged / SIGNATURE).write_text(json.dumps(signature_record, indent=2) + "\n")
    (staged / "README.md").write_text(card.render(record))
    (staged / "requirements.txt").write_text(environment.requirements_txt(env["packages"]))
    for path in staged.rglob("*"):  # libraries write some files 0600; a package is world-readable
        path.chmod(0o755 if path.is_dir() else 0o644)
    return manifest.build(staged, known_content_id=content_id)


def run(params: Params) -> manifest.Manifest:
    with StageOutputs(EXPORT_DIR, MANIFEST_FILE) as outputs:
        built = build_package(params, outputs.staged_dir(EXPORT_DIR))
        outputs.staged_file(MANIFEST_FILE).write_text(built.to_json(), encoding="utf-8")
    say(f"exported {EXPORT_DIR} ({len(built.files)} files), content id {built.content_id}")
    return built


main = stage_entry(run)


if __name__ == "__main__":
    main()
