"""TuneLedger: versioned, reproducible and safely deployable LoRA fine-tuning."""

import os

__version__ = "0.1.0"

# Download and load bars from the HF libraries drown the pipeline's own progress lines; these are
# read when those libraries are imported, and an explicit setting in the environment still wins.
for _name, _value in {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)


def load(path, device=None, base=None, manifest=None):
    """Model and tokenizer of a version package, verified by SHA-256 first (see package.loader)."""
    from tuneledger.package import loader

    return loader.load(path, device=device, base=base, manifest=manifest)


__all__ = ["load", "__version__"]
