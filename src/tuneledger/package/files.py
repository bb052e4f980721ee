"""The names of the files a version package holds, in one place."""

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
GENERATION_CONFIG = "generation_config.json"  # transformers' own: lists every token that ends an answer
ADAPTER_FILES = (ADAPTER_WEIGHTS, ADAPTER_CONFIG, GENERATION_CONFIG)  # what `train` publishes
# Weights in these formats are pickles: loading one can run code. Never loaded, never packaged.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
METADATA = "metadata.json"
SIGNATURE = "signature.json"
