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


def skip_bitsandbytes_unless(quantization: str) -> None:
    """A stage that does not quantize never loads bitsandbytes. peft imports it whenever it is
    installed, and that import alone takes 0.7 s (it builds torch._inductor). Python's documented
    marker for an absent module (`sys.modules[name] = None`) makes peft and transformers treat it as
    not installed. Call before anything imports peft; an already loaded bitsandbytes is kept."""
    import sys

    if quantization == "none":
        sys.modules.setdefault("bitsandbytes", None)


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


def torch_dtype(setting: str):
    """`model.dtype` as a torch dtype; auto is bfloat16 on a GPU that has it, else float32."""
    import torch

    if setting == "auto":
        on_bf16_gpu = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if on_bf16_gpu else torch.float32
    return getattr(torch, setting)


def quantization_config(quantization: str, dtype):
    """bitsandbytes settings for `model.quantization` (QLoRA's nf4 with double quantization)."""
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def load_base(path: Path, device: str | None = None, dtype: str = "float32", quantization: str = "none"):
    """A causal LM from a directory of safetensors weights, on one device (quantized on request)."""
    from transformers import AutoModelForCausalLM

    if not any(Path(path).glob("*.safetensors")):
        raise TuneLedgerError(f"{path}: no *.safetensors weights; run `dvc repro prepare` or `dvc pull`")
    device = pick_device(device)
    options = {"dtype": torch_dtype(dtype), "use_safetensors": True}
    if quantization != "none":
        # bitsandbytes places the quantized weights itself; a later `.to()` would be refused.
        options |= {"quantization_config": quantization_config(quantization, options["dtype"])}
        options |= {"device_map": {"": device}}
        return AutoModelForCausalLM.from_pretrained(str(path), **options)
    model = AutoModelForCausalLM.from_pretrained(str(path), **options)
    return model.to(device).eval()
