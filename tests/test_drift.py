"""The gate's drift figure uses each adapter's real update: peft's scaling (alpha/r, alpha/√r under
rsLoRA) and, for DoRA, the magnitude vectors — checked against peft's own merge and against a
promotion of an rsLoRA version over a plain one."""

from __future__ import annotations

import math
import re

import numpy
import pytest
import torch
from safetensors.numpy import load_file

from conftest import commit_all, run, set_params
from tuneledger.package import weights

LLAMA = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
GPT2 = {"vocab_size": 64, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 32}


def tiny_base(kind: str):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**LLAMA)), ["q_proj", "v_proj", "down_proj"], False
    return GPT2LMHeadModel(GPT2Config(**GPT2)), ["c_attn", "c_fc"], True  # Conv1D: W stored in × out


def adapter_as_trained(base, targets, fan_in_fan_out, seed: int, **options):
    """A peft adapter whose B and magnitudes moved away from their initial values, as training does."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=fan_in_fan_out, **options)
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
            elif "lora_magnitude_vector" in name:
                param.mul_(1 + 0.2 * torch.rand(param.shape, generator=generator))
    return model


def merged_updates(model, base_state: dict) -> dict[str, float]:
    """‖W_merged − W‖ per adapted layer, from peft's own merge (the reference for every scaling)."""
    from peft.tuners.lora import LoraLayer

    layers = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    merged = model.merge_and_unload().state_dict()
    norms = {}
    for layer in layers:
        key = layer.removeprefix(weights.PEFT_PREFIX) + ".weight"
        norms[layer] = float(torch.linalg.matrix_norm(merged[key].double() - base_state[key].double()))
    return norms


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize(
    "options", [{}, {"use_rslora": True}, {"use_dora": True}, {"use_dora": True, "use_rslora": True}]
)
def test_update_norms_match_peft_merge(tmp_path, kind, options):
    base, targets, fan_in_fan_out = tiny_base(kind)
    base.save_pretrained(tmp_path / "base")
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    model = adapter_as_trained(base, targets, fan_in_fan_out, seed=1, **options)
    model.save_pretrained(tmp_path / "adapter")
    expected = merged_updates(model, base_state)

    measured = weights.effective_update_norms(tmp_path / "adapter", base=tmp_path / "base")
    assert measured.keys() == expected.keys()
    for layer, norm in expected.items():
        assert measured[layer] == pytest.approx(norm, rel=1e-5), layer
    if not options.get("use_dora"):  # plain and rsLoRA layers need no base
        assert weights.effective_update_norms(tmp_path / "adapter") == pytest.approx(measured, rel=1e-12)


def test_dora_drift_without_the_base_compares_magnitude_vectors(tmp_path):
    from transformers import LlamaForCausalLM

    base, targets, fan_in_fan_out = tiny_base("llama")
    base.save_pretrained(tmp_path / "base")
    for seed, name in [(1, "old"), (2, "new")]:
        fresh = LlamaForCausalLM.from_pretrained(tmp_path / "base")
        adapter_as_trained(fresh, targets, fan_in_fan_out, seed=seed, use_dora=True).save_pretrained(
            tmp_path / name
        )

    old, new = (
        load_file(tmp_path / "old/adapter_model.safetensors"),
        load_file(tmp_path / "new/adapter_model.safetensors"),
    )
    changes = {}
    for name in old:
        if name.endswith(".lora_magnitude_vector"):
            changes[name] = numpy.linalg.norm(new[name] - old[name]) / numpy.linalg.norm(old[name])
        elif ".lora_A." in name:
            layer, b_name = name.split(".lora_A.")[0], name.replace(".lora_A.", ".lora_B.")
            norm_new = 8 / 4 * numpy.linalg.norm(new[b_name].astype(numpy.float64) @ new[name])
            norm_old = 8 / 4 * numpy.linalg.norm(old[b_name].astype(numpy.float64) @ old[name])
            changes[layer] = abs(norm_new - norm_old) / norm_old
    worst = max(changes, key=changes.get)

    drift, layer = weights.norm_drift(tmp_path / "new", tmp_path / "old")
    assert layer == worst and drift == pytest.approx(changes[worst], rel=1e-6)
    assert any(name.endswith("lora_magnitude_vector") for name in changes)

    exact, exact_layer = weights.norm_drift(tmp_path / "new", tmp_path / "old", base=tmp_path / "base")
    assert not exact_layer.endswith("lora_magnitude_vector") and exact != pytest.approx(drift)


def test_dora_with_another_base_is_one_clear_error(tmp_path):
    from tuneledger.core.errors import TuneLedgerError

    base, targets, fan_in_fan_out = tiny_base("llama")
    adapter_as_trained(base, targets, fan_in_fan_out, seed=1, use_dora=True).save_pretrained(
        tmp_path / "adapter"
    )
    tiny_base("gpt2")[0].save_pretrained(tmp_path / "gpt2")
    with pytest.raises(
        TuneLedgerError,
        match=r"gpt2: no tensor 'model\.layers\.0\.mlp\.down_proj\.weight' for the DoRA layer",
    ):
        weights.effective_update_norms(tmp_path / "adapter", base=tmp_path / "gpt2")


# --- the gate, on a real promotion ----------------------------------------------------------------


def lora_update_norms(adapter_file, scaling) -> dict[str, float]:
    """‖scaling · B·A‖ per layer, from the raw tensors (numpy, float64)."""
    tensors = load_file(adapter_file)
    norms = {}
    for name, lora_a in tensors.items():
        if ".lora_A." in name:
            lora_b = tensors[name.replace(".lora_A.", ".lora_B.")]
            norms[name.split(".lora_A.")[0]] = scaling * numpy.linalg.norm(
                lora_b.astype(numpy.float64) @ lora_a.astype(numpy.float64)
            )
    return norms


def largest_change(new: dict[str, float], old: dict[str, float]) -> float:
    return max(abs(new[layer] - old[layer]) / old[layer] for layer in old)


def test_promoting_rslora_over_plain_reports_drift_with_the_real_scaling(registry_copy):
    """prod holds v1.0.0 (r=8, alpha 16, plain: s = 2); the candidate is r=8 under rsLoRA (s = 16/√8)."""
    repo = registry_copy
    set_params(repo, **{"lora.r": 8, "lora.use_rslora": True, "registry.max_norm_drift": 1000.0})
    run("dvc", "repro", cwd=repo)
    commit_all(repo, "rsLoRA")
    registered = run("tuneledger", "register", "--push", cwd=repo).stdout
    version = re.search(r"\bv\d+\.\d+\.\d+\b", registered).group(0)
    promoted = run("tuneledger", "promote", version, "--stage", "prod", cwd=repo).stdout
    assert f"prod: v1.0.0 → {version}" in promoted
    shown = float(re.search(r"largest update-norm change ([\d.]+)%", promoted).group(1))

    run("tuneledger", "fetch", "--version", "v1.0.0", "-o", "holder", cwd=repo)
    holder = lora_update_norms(repo / "holder/adapter_model.safetensors", 16 / 8)
    candidate_file = repo / "models/export/adapter_model.safetensors"
    assert weights.read_config(repo / "models/export")["use_rslora"] is True
    by_hand = 100 * largest_change(lora_update_norms(candidate_file, 16 / math.sqrt(8)), holder)
    as_if_plain = 100 * largest_change(lora_update_norms(candidate_file, 16 / 8), holder)
    assert shown == pytest.approx(by_hand, abs=0.05), f"gate says {shown}%, by hand {by_hand:.2f}%"
    assert abs(by_hand - as_if_plain) > 1.0  # the scaling visibly matters
