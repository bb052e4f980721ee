"""Where every stage reads and writes, relative to the repository root (DVC runs stages there)."""

from pathlib import Path

BASE_DIR = Path("models/base")
PREPARED_DIR = Path("data/prepared")
CHECKPOINTS_DIR = Path("models/checkpoints")
ADAPTER_DIR = Path("models/adapter")
EXPORT_DIR = Path("models/export")
MANIFEST_FILE = Path("models/export.manifest.json")
TRAIN_RESULTS = Path("results/train")
EVAL_RESULTS = Path("results/evaluate")
