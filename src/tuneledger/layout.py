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


def base_path_for(package: Path) -> Path:
    """`deploy/pkg` → `deploy/pkg.base`: where `fetch --with-base` puts the base beside a package."""
    return package.with_name(package.name + ".base")
