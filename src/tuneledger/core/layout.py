"""Where every stage reads and writes, relative to the repository root (DVC runs stages there)."""

from pathlib import Path

BASE_DIR = Path("models/base")
PREPARED_DIR = Path("data/prepared")
CHECKPOINTS_DIR = Path("models/checkpoints")
ADAPTER_DIR = Path("models/adapter")
EXPORT_DIR = Path("models/export")
RESULTS_DIR = Path("results")
BASE_RECORD = RESULTS_DIR / "base" / "build.json"  # in git: which CPU built the base, and its tensors
TRAIN_RESULTS = RESULTS_DIR / "train"
TRAIN_SUMMARY = TRAIN_RESULTS / "summary.json"  # facts of the training run, in git
EVAL_RESULTS = RESULTS_DIR / "evaluate"
BENCHMARKS_FILE = EVAL_RESULTS / "benchmarks.json"  # in git: lm-eval scores of base and tuned, per task
BENCHMARK_METRICS = RESULTS_DIR / "benchmark" / "metrics.json"  # their numbers, for `dvc metrics`
EVAL_TASKS_DIR = Path("configs/eval_tasks")  # local lm-eval task YAML files
SERVE_CACHE = Path(".tuneledger/serve/versions")  # versions `serve` fetched, verified, kept for reuse


def manifest_path_for(package: Path) -> Path:
    """`models/export` → `models/export.manifest.json`: the manifest sits beside its package."""
    package = Path(package)
    return package.with_name(package.name + ".manifest.json")


MANIFEST_FILE = manifest_path_for(EXPORT_DIR)


def base_path_for(package: Path) -> Path:
    """`deploy/pkg` → `deploy/pkg.base`: where `fetch --with-base` puts the base beside a package."""
    return package.with_name(package.name + ".base")
