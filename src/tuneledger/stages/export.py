"""Stage `export`: the immutable, self-describing version package in models/export.

The package is assembled in a staging directory and renamed into place only when complete, so a
reader sees the previous package or the new one, never a mixture.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tuneledger import base_model, git, modeling
from tuneledger.hashing import sha256_file, tree_digest
from tuneledger.layout import (
    ADAPTER_DIR,
    BASE_DIR,
    EVAL_RESULTS,
    EXPORT_DIR,
    MANIFEST_FILE,
    PREPARED_DIR,
    TRAIN_RESULTS,
)
from tuneledger.package import card, environment, manifest, metadata, signature
from tuneledger.package.safetensors_io import rewrite_metadata
from tuneledger.package.weights import describe_adapter
from tuneledger.params import Params
from tuneledger.progress import say
from tuneledger.publication import Publication
from tuneledger.stages import stage_entry

WEIGHTS = "adapter_model.safetensors"


def _data_record(params: Params) -> dict:
    splits = {}
    for name in ("train", "val", "test"):
        path = PREPARED_DIR / f"{name}.jsonl"
        with open(path, encoding="utf-8") as handle:
            rows = sum(1 for line in handle if line.strip())
        splits[name] = {"sha256": sha256_file(path), "rows": rows}
    return {"source": params.data.source, "splits": splits}


def _base_record() -> dict:
    digest, files = tree_digest(BASE_DIR)
    return {**base_model.read_source(BASE_DIR), "sha256": digest, "files": files}


def _signature(params: Params, base_config: dict) -> dict:
    context = base_config.get("n_positions") or base_config.get("max_position_embeddings") or 2048
    new_tokens = min(params.export.max_new_tokens, context - 1)
    return signature.build(
        max_prompt_chars=params.export.max_prompt_chars,
        max_prompt_tokens=context - new_tokens,  # prompt and answer must fit the model's context
        max_new_tokens=new_tokens,
        default_new_tokens=params.eval.max_new_tokens,
    )


def _write_merged(staged: Path, cpu_threads: int) -> None:
    from peft import PeftModel

    modeling.pin_cpu_threads(cpu_threads)  # merged weights are byte-identical for a fixed count
    model = PeftModel.from_pretrained(modeling.load_base(BASE_DIR, device="cpu"), str(staged))
    merged = model.merge_and_unload()
    merged.save_pretrained(str(staged / "merged"))
    modeling.copy_tokenizer(BASE_DIR, staged / "merged")


def build_package(params: Params, staged: Path) -> manifest.Manifest:
    """Write every file of the package into `staged`; return its manifest."""
    for name in (WEIGHTS, "adapter_config.json"):
        shutil.copyfile(ADAPTER_DIR / name, staged / name)
    modeling.copy_tokenizer(BASE_DIR, staged)
    if params.export.merge:
        _write_merged(staged, params.train.cpu_threads)
    content_id = manifest.content_id(staged, manifest.package_files(staged))
    commit = git.head_commit()
    dirty = git.dirty_paths()
    rewrite_metadata(
        staged / WEIGHTS, {"tuneledger.content_id": content_id, "tuneledger.git_commit": commit or ""}
    )

    env = environment.describe()
    record = metadata.build(
        content_id=content_id,
        git={"commit": commit, "dirty": bool(dirty) if dirty is not None else None, "dirty_paths": dirty},
        params=params.model_dump(mode="json"),
        data=_data_record(params),
        base_model=_base_record(),
        adapter=describe_adapter(staged),
        training=json.loads((TRAIN_RESULTS / "summary.json").read_text()),
        metrics=json.loads((EVAL_RESULTS / "metrics.json").read_text()),
        environment=env,
    )
    base_config = json.loads((BASE_DIR / "config.json").read_text())
    (staged / "metadata.json").write_text(metadata.to_json(record))
    (staged / "signature.json").write_text(json.dumps(_signature(params, base_config), indent=2) + "\n")
    (staged / "README.md").write_text(card.render(record))
    (staged / "requirements.txt").write_text(environment.requirements_txt(env["packages"]))
    for path in staged.rglob("*"):  # libraries write some files 0600; a package is world-readable
        path.chmod(0o755 if path.is_dir() else 0o644)
    return manifest.build(staged, known_content_id=content_id)


def run(params: Params) -> manifest.Manifest:
    with Publication(EXPORT_DIR, MANIFEST_FILE) as outputs:
        built = build_package(params, outputs.staged_dir(EXPORT_DIR))
        outputs.staged_file(MANIFEST_FILE).write_text(built.to_json(), encoding="utf-8")
    say(f"exported {EXPORT_DIR} ({len(built.files)} files), content id {built.content_id}")
    return built


main = stage_entry(run)


if __name__ == "__main__":
    main()
