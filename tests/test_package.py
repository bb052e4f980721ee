"""The version package: complete, self-describing, verified by SHA-256 and loaded without pickle."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors import safe_open

from conftest import read_json, run
from tuneledger import load
from tuneledger.core.errors import TuneLedgerError
from tuneledger.package import manifest, metadata
from tuneledger.package.safetensors_io import open_checked, rewrite_metadata, tensor_digest
from tuneledger.package.verify import VerificationFailed, verify

PACKAGE_FILES = {
    "adapter_model.safetensors",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",  # every token that ends an answer, for plain transformers `generate`
    "README.md",
    "metadata.json",
    "signature.json",
    "requirements.txt",
}


@pytest.fixture
def package(default_run, tmp_path):
    """A copy of the default export and its manifest, safe to tamper with."""
    target = tmp_path / "pkg"
    shutil.copytree(default_run / "models/export", target)
    shutil.copyfile(default_run / "models/export.manifest.json", tmp_path / "pkg.manifest.json")
    return target


def test_package_has_every_file_and_self_describes(default_run):
    export = default_run / "models/export"
    assert {p.name for p in export.iterdir()} == PACKAGE_FILES
    meta = read_json(export / "metadata.json")
    content_id = read_json(default_run / "models/export.manifest.json")["content_id"]
    assert meta["content_id"] == content_id and meta["schema_version"] == 1
    assert meta["git"]["commit"] == run("git", "rev-parse", "HEAD", cwd=default_run).stdout.strip()
    assert meta["params"]["lora"]["r"] == 8
    assert (
        meta["data"]["splits"]["test"]["rows"] == 120 and len(meta["data"]["splits"]["test"]["sha256"]) == 64
    )
    assert meta["base_model"]["id"] == "builtin:tiny-gpt2" and len(meta["base_model"]["sha256"]) == 64
    assert {"epochs", "steps", "final_loss", "runtime_s"} <= meta["training"].keys()
    assert meta["metrics"] == read_json(default_run / "results/evaluate/metrics.json")
    env = meta["environment"]
    assert env["torch"].startswith("2.13.0") and env["packages"]["transformers"] == "5.23.0" and env["cpu"]
    assert meta["created"].endswith("Z")
    with safe_open(str(export / "adapter_model.safetensors"), framework="pt") as weights:
        stamped = weights.metadata()
    assert stamped["tuneledger.content_id"] == content_id
    assert stamped["tuneledger.git_commit"] == meta["git"]["commit"]
    assert "transformers==5.23.0" in (export / "requirements.txt").read_text().splitlines()


def test_model_card_has_the_hugging_face_header(default_run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(default_run / "models/export/README.md")  # the hub's own parser
    assert "base_model" not in card.data.to_dict()  # builtin:tiny-gpt2 is no hub id
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert "lora" in card.data.tags
    tuned = read_json(default_run / "results/evaluate/metrics.json")["tuned"]
    benchmarks = read_json(default_run / "results/evaluate/benchmarks.json")["tasks"]
    split = {r.metric_type: r for r in card.data.eval_results if r.dataset_split == "test"}
    assert {name: result.metric_value for name, result in split.items()} == {
        name: value for name, value in tuned.items() if value is not None
    }
    scored = {
        r.task_name: (r.metric_type, r.metric_value)
        for r in card.data.eval_results
        if r.dataset_split != "test"
    }
    assert scored == {task: (record["metric"], record["tuned"]) for task, record in benchmarks.items()}
    assert "PeftModel.from_pretrained" in card.text and "How it was trained" in card.text
    assert "dtype `auto`, quantization `none`" in card.text


@pytest.mark.parametrize(
    ("base", "kind", "linked"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "hub", True),
        ("/data/models/llama", "local", False),
        ("builtin:tiny-gpt2", "builtin", False),
    ],
)
def test_model_card_links_only_a_hub_base_model(default_run, base, kind, linked):
    from huggingface_hub import ModelCard

    from tuneledger.package import card

    meta = read_json(default_run / "models/export/metadata.json")
    meta["base_model"] |= {"id": base, "kind": kind}
    meta["params"]["model"] |= {"dtype": "bfloat16", "quantization": "nf4"}
    rendered = ModelCard(card.render(meta))
    assert rendered.data.base_model == (base if linked else None)
    assert rendered.data.model_name == f"LoRA adapter for {base}"
    assert "dtype `bfloat16`, quantization `nf4`" in rendered.text


def test_signature_bounds_requests(default_run):
    sig = read_json(default_run / "models/export/signature.json")
    assert sig["inputs"]["prompt"]["type"] == "string" and sig["inputs"]["prompt"]["max_length"] == 256
    assert sig["params"]["max_new_tokens"]["maximum"] == 32
    assert sig["inputs"]["prompt"]["max_tokens"] == 128 - 32  # prompt and answer fit the context
    long_prompt = run("tuneledger", "generate", "models/export", "x" * 300, cwd=default_run, check=False)
    assert (
        long_prompt.returncode == 1
        and "error: prompt: must have at most 256 characters" in long_prompt.stderr
    )
    too_many = run(
        "tuneledger",
        "generate",
        "models/export",
        "reverse: a b c =>",
        "--max-new-tokens",
        "33",
        cwd=default_run,
        check=False,
    )
    assert "error: max_new_tokens: must be between 1 and 32, got 33" in too_many.stderr


def test_content_id_ignores_the_header_stamp(package, tmp_path):
    weights = package / "adapter_model.safetensors"
    before = (tensor_digest(weights), manifest.content_id(package, manifest.package_files(package)))
    rewrite_metadata(weights, {"tuneledger.git_commit": "0" * 40})
    after = (tensor_digest(weights), manifest.content_id(package, manifest.package_files(package)))
    assert before == after


def test_verify_names_a_flipped_byte(package, tmp_path):
    manifest_file = tmp_path / "pkg.manifest.json"
    assert "ok:" in run("tuneledger", "verify", package, "--manifest", manifest_file, cwd=tmp_path).stdout
    weights = package / "adapter_model.safetensors"
    expected = read_json(manifest_file)["files"]["adapter_model.safetensors"]["sha256"]
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x01
    weights.write_bytes(bytes(data))
    failed = run("tuneledger", "verify", package, "--manifest", manifest_file, cwd=tmp_path, check=False)
    assert failed.returncode == 1
    line = failed.stderr.strip().splitlines()[0]
    assert f"{package}/adapter_model.safetensors: sha256 mismatch: expected {expected}, got " in line


def test_verify_reports_missing_and_extra_files_one_line_each(package):
    (package / "tokenizer.json").unlink()
    (package / "notes.txt").write_text("extra")
    with pytest.raises(VerificationFailed) as failed:
        verify(package)
    assert sorted(p.kind for p in failed.value.problems) == ["missing", "unexpected"]
    assert len(str(failed.value).splitlines()) == 2


def test_symlinks_pickles_and_escaping_paths_are_refused(package, tmp_path):
    (package / "link.json").symlink_to(tmp_path / "pkg.manifest.json")
    with pytest.raises(TuneLedgerError, match="link.json: symlink inside a package is refused"):
        verify(package)
    (package / "link.json").unlink()
    torch.save({"w": torch.zeros(1)}, package / "adapter_model.bin")
    with pytest.raises(TuneLedgerError, match="adapter_model.bin: pickle file in a package is refused"):
        load(package)
    (package / "adapter_model.bin").unlink()
    body = read_json(tmp_path / "pkg.manifest.json")
    body["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "size": 1}
    (tmp_path / "pkg.manifest.json").write_text(json.dumps(body))
    with pytest.raises(TuneLedgerError, match=r"refused path '../../etc/passwd'"):
        verify(package)


def test_corrupt_json_reports_file_line_and_column(package, tmp_path):
    (package / "metadata.json").write_text('{\n  "schema_version": 1,\n  "content_id": \n}')
    with pytest.raises(TuneLedgerError, match=r"metadata.json:4:1: corrupt metadata"):
        metadata.read(package / "metadata.json")
    (tmp_path / "pkg.manifest.json").write_text('{"files": [}')
    failed = run(
        "tuneledger",
        "verify",
        package,
        "--manifest",
        tmp_path / "pkg.manifest.json",
        cwd=tmp_path,
        check=False,
    )
    assert failed.returncode == 1 and "pkg.manifest.json:1:12: corrupt manifest" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_corrupt_safetensors_header_is_refused_before_allocation(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(4)}, str(path))
    raw = bytearray(path.read_bytes())
    raw[:8] = (10**12).to_bytes(8, "little")  # header "larger" than the file
    path.write_bytes(bytes(raw))
    with (
        pytest.raises(TuneLedgerError, match="refused safetensors file: .*header too large"),
        open_checked(path),
    ):
        pass


def test_missing_package_names_the_path_and_what_to_run(tmp_path):
    failed = run("tuneledger", "verify", tmp_path / "nope", cwd=tmp_path, check=False)
    assert failed.returncode == 1
    assert (
        f"error: {tmp_path}/nope: no such package directory; run `dvc repro` or `tuneledger fetch`"
        in failed.stderr
    )


def test_load_verifies_then_runs_on_one_device(default_run, monkeypatch):
    monkeypatch.chdir(default_run)
    model, tokenizer = load("models/export")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    from tuneledger.inference.generation import generate

    assert generate(model, tokenizer, ["reverse: red cat sun =>"], 8)[0].strip() == "sun cat red"


def test_plain_transformers_and_peft_load_the_package(default_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(default_run / "models/base")
    model = PeftModel.from_pretrained(base, default_run / "models/export")
    tokenizer = AutoTokenizer.from_pretrained(default_run / "models/export")
    ids = tokenizer("reverse: owl fox bee =>", return_tensors="pt").input_ids
    out = model.generate(
        input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.eos_token_id
    )
    assert tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip() == "bee fox owl"


def test_load_refuses_a_tampered_package(package, tmp_path):
    (package / "adapter_config.json").write_text(
        (package / "adapter_config.json").read_text().replace('"r": 8', '"r": 9')
    )
    with pytest.raises(VerificationFailed, match="adapter_config.json: sha256 mismatch"):
        load(package, manifest=tmp_path / "pkg.manifest.json")


SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz123456",
    "MY_SERVICE_PASSWORD": "correct-horse-battery-staple",
}


def test_secrets_in_the_environment_never_reach_the_package(trained_repo):
    exported = run("python", "-m", "tuneledger.stages.export", cwd=trained_repo, env=SECRETS)
    blobs = [p.read_bytes() for p in (trained_repo / "models/export").rglob("*") if p.is_file()]
    blobs.append((trained_repo / "models/export.manifest.json").read_bytes())
    blobs.append((exported.stdout + exported.stderr).encode())
    for value in SECRETS.values():
        assert not any(value.encode() in blob for blob in blobs), value
    assert "ok:" in run("tuneledger", "verify", cwd=trained_repo).stdout


def test_merged_export_matches_the_adapter(trained_repo, monkeypatch):
    from conftest import set_params

    set_params(trained_repo, **{"export.merge": True})
    run("dvc", "repro", "export", cwd=trained_repo)
    assert (trained_repo / "models/export/merged/model.safetensors").is_file()
    monkeypatch.chdir(trained_repo)
    merged, tokenizer = load("models/export")
    assert type(merged).__name__ == "GPT2LMHeadModel"
    ids = tokenizer("reverse: sea sky oak =>", return_tensors="pt").input_ids
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained("models/base"), "models/adapter"
    )
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, reference(ids).logits, atol=1e-4)
    assert os.path.getsize("models/export/merged/model.safetensors") > 1_000_000


def test_rewriting_metadata_keeps_tensors_numpy_cannot_hold(tmp_path):
    """bfloat16 (a GPU run's adapter) goes through safetensors' torch API; float32 through numpy's."""
    import torch
    from safetensors.torch import load_file, save_file

    from tuneledger.package.safetensors_io import rewrite_metadata

    tensors = {"bf16": torch.randn(3, 4).to(torch.bfloat16), "f32": torch.randn(2)}
    for name, tensor in tensors.items():
        path = tmp_path / f"{name}.safetensors"
        save_file({"w": tensor}, str(path), metadata={"format": "pt"})
        rewrite_metadata(path, {"tuneledger.content_id": "abc"})
        with safe_open(str(path), framework="pt") as handle:
            assert handle.metadata() == {"format": "pt", "tuneledger.content_id": "abc"}
        assert torch.equal(load_file(str(path))["w"], tensor)


def test_a_private_copy_links_read_only_files_and_copies_writable_ones(tmp_path):
    """The loader's base copy: DVC's read-only cache files are linked (no second copy of a base
    on each load); a file someone may write is copied, so a later write cannot reach the copy."""
    from tuneledger.package.verify import copy_private

    source = tmp_path / "base"
    source.mkdir()
    (source / "model.safetensors").write_bytes(b"weights")
    (source / "model.safetensors").chmod(0o444)
    (source / "config.json").write_text("{}")
    copy = tmp_path / "copy"
    assert copy_private(source, copy, follow_symlinks=True, link_read_only=True) == []
    assert (copy / "model.safetensors").stat().st_ino == (source / "model.safetensors").stat().st_ino
    assert (copy / "config.json").stat().st_ino != (source / "config.json").stat().st_ino
    (source / "config.json").write_text('{"changed": true}')
    assert (copy / "config.json").read_text() == "{}"
    plain = tmp_path / "plain"
    copy_private(source, plain, follow_symlinks=True)
    assert (plain / "model.safetensors").stat().st_ino != (source / "model.safetensors").stat().st_ino


def test_a_link_is_kept_only_to_the_very_file_that_was_opened(tmp_path):
    """The path is linked, then checked against the open descriptor: a file swapped in between is
    never kept (the loader then copies from the descriptor it verified)."""
    from tuneledger.package.verify import _link_opened

    verified, swapped = tmp_path / "verified", tmp_path / "swapped"
    verified.write_bytes(b"checked weights")
    swapped.write_bytes(b"other weights")
    with open(verified, "rb") as opened:
        assert not _link_opened(swapped, opened.fileno(), tmp_path / "refused")
        assert not (tmp_path / "refused").exists()
        assert _link_opened(verified, opened.fileno(), tmp_path / "kept")
    assert (tmp_path / "kept").stat().st_ino == verified.stat().st_ino
