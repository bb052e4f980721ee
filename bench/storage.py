"""Bytes a new LoRA version adds to the remote, relative to the base model it adapts."""

from __future__ import annotations

GPT2_PARAMS = 124_439_808  # GPT-2 small
GPT2_LAYERS, GPT2_WIDTH = 12, 768


def lora_bytes_gpt2(rank: int = 8, dtype_bytes: int = 4) -> int:
    """LoRA on GPT-2's c_attn (768 → 2304) in every layer: A is (r, 768), B is (2304, r)."""
    return GPT2_LAYERS * (rank * GPT2_WIDTH + 3 * GPT2_WIDTH * rank) * dtype_bytes


def run(ctx: dict) -> dict:
    sizes = ctx["sizes"]
    gpt2_base, gpt2_lora = GPT2_PARAMS * 4, lora_bytes_gpt2()
    package_overhead = 20_000  # card, metadata, signature, requirements, adapter config
    tiny = sizes["v2_bytes"] / sizes["base_bytes"]
    return {
        "title": "Storage per version",
        "rows": [
            ("base model (tiny default)", f"{sizes['base_bytes']:,} B", "pushed once, deduplicated after"),
            ("first version (everything)", f"{sizes['v1_bytes']:,} B", "base, data, checkpoints, package"),
            (
                "a new LoRA version (r=4), added to the remote",
                f"{sizes['v2_bytes']:,} B",
                f"new objects only: in the workspace its checkpoints take {sizes['checkpoint_bytes']:,} B "
                f"and its package {sizes['export_bytes']:,} B, but tokenizer copies are already there",
            ),
            ("GPT-2-124M base, fp32 (computed)", f"{gpt2_base:,} B", ""),
            (
                "GPT-2-124M LoRA r=8 on c_attn, fp32 (computed)",
                f"{gpt2_lora:,} B",
                f"+ ≈ {package_overhead:,} B of package files; checkpoints add about 3× the adapter",
            ),
        ],
        "ratios": [
            ("new version / base model bytes (tiny default, measured)", tiny, tiny, tiny, "—"),
            (
                "new version / base model bytes (GPT-2-124M, computed, package only)",
                (gpt2_lora + package_overhead) / gpt2_base,
                (gpt2_lora + package_overhead) / gpt2_base,
                (gpt2_lora + package_overhead) / gpt2_base,
                "—",
            ),
        ],
        "notes": "Only new objects are uploaded: the base model, data and tokenizer are shared by "
        "content hash. "
        "The tiny default's base is small, so its adapter, optimizer checkpoints and package weigh "
        "relatively more than they would for a real model.",
    }
