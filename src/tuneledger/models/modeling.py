"""Loading base models and tokenizers the same way everywhere: safetensors only, one device."""

from __future__ import annotations

from pathlib import Path

from tuneledger.core.errors import TuneLedgerError

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


def skip_bitsandbytes_unless(quantization: str) -> None:
    """A stage that does not quantize never loads bitsandbytes. peft imports it whenever it is
    installed, and that import alone takes 0.7 s (it builds torch._inductor). Python's documented
    marker for an absent module (`sys.modules[name] = None`) makes peft and transformers treat it as
    not installed. Call before anything imports peft; an already loaded bitsandbytes is kept."""
    import sys

    if quantization == "none":
        sys.modules.setdefault("bitsandbytes", None)


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
