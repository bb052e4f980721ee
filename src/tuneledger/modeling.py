"""Loading base models and tokenizers the same way everywhere: safetensors only, one device."""

from __future__ import annotations

from pathlib import Path

from tuneledger.errors import TuneLedgerError

# Copied byte for byte into packages: re-saving a tokenizer writes runtime state (offline mode,
# padding side), which would make identical exports differ.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
)


def copy_tokenizer(src: Path, dest: Path) -> list[str]:
    """Copy the tokenizer files present in `src` to `dest`; return their names."""
    import shutil

    names = [name for name in TOKENIZER_FILES if (Path(src) / name).is_file()]
    if not names:
        raise TuneLedgerError(f"{src}: no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...)")
    for name in names:
        shutil.copyfile(Path(src) / name, Path(dest) / name)
    return names


def pick_device(device: str | None = None) -> str:
    """The requested device, else the single best one available (never a split across devices)."""
    if device:
        return device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


# CPU kernels that give the same bits on every x86-64 machine with AVX2, Intel or AMD. By default
# MKL and ATen pick code paths by CPU vendor and vector width (AVX-512 on one machine, AVX2 on the
# next), and a fresh clone elsewhere then trains different weights. MKL's COMPATIBLE branch is the
# only one it keeps identical across vendors. They cost CPU speed (GPU kernels are not affected);
# a value already set in the environment wins, and metadata records what was used.
PORTABLE_CPU_KERNELS = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def use_portable_cpu_kernels() -> None:
    """Select PORTABLE_CPU_KERNELS; effective only before torch runs its first kernel."""
    import os
    import platform

    if platform.machine().lower() in ("x86_64", "amd64"):
        for name, value in PORTABLE_CPU_KERNELS.items():
            os.environ.setdefault(name, value)


def cpu_kernels() -> dict:
    """The CPU kernel selection in effect, for metadata."""
    import os

    import torch

    settings = {name: os.environ.get(name) for name in PORTABLE_CPU_KERNELS}
    return {**settings, "aten_capability": torch.backends.cpu.get_cpu_capability()}


def pin_cpu_threads(count: int) -> None:
    """Fix torch's intra-op thread count: CPU results are byte-identical only for the same count."""
    import torch

    torch.set_num_threads(count)


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:  # many causal LMs ship without one; padding with EOS is standard
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(path: Path, device: str | None = None):
    """A causal LM from a directory of safetensors weights, in float32, on one device."""
    import torch
    from transformers import AutoModelForCausalLM

    if not any(Path(path).glob("*.safetensors")):
        raise TuneLedgerError(f"{path}: no *.safetensors weights; run `dvc repro prepare` or `dvc pull`")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, use_safetensors=True)
    return model.to(pick_device(device)).eval()


def linear_module_names(model) -> list[str]:
    """Leaf names of the layers LoRA can adapt (Linear, and GPT-2's Conv1D)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D)
    }
    return sorted(names - {"lm_head"})


def resolve_lora_targets(model, requested: list[str] | str) -> list[str]:
    """The layer names to adapt: as given (each must exist), or for "auto" the attention
    projections peft lists for this architecture."""
    available = linear_module_names(model)
    if requested == "auto":
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as KNOWN

        model_type = model.config.model_type
        targets = [t for t in KNOWN.get(model_type, []) if t in available]
        if not targets:
            raise TuneLedgerError(
                f"params.yaml: lora.target_modules: auto knows no attention layers for model type "
                f"{model_type!r}; list them (the model has {', '.join(available)})"
            )
        return targets
    missing = [t for t in requested if t not in available]
    if missing:
        raise TuneLedgerError(
            f"params.yaml: lora.target_modules: {missing} not in the base model "
            f"(it has {', '.join(available)})"
        )
    return list(requested)


def targets_conv1d(model, targets: list[str]) -> bool:
    """GPT-2 style Conv1D layers store weights transposed; LoRA must know (`fan_in_fan_out`)."""
    from transformers.pytorch_utils import Conv1D

    return any(
        isinstance(module, Conv1D) and name.rsplit(".", 1)[-1] in targets
        for name, module in model.named_modules()
    )
