"""params.yaml: its schema, its validation, and the one loader every stage and command uses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator

from tuneledger.errors import TuneLedgerError

PARAMS_FILE = Path("params.yaml")

Fraction = Annotated[float, Field(gt=0.0, lt=0.5)]


class _Group(BaseModel):
    # strict: "8" is not 8 and true is not 1; unknown keys are refused by name.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelParams(_Group):
    base: Annotated[str, Field(min_length=1)] = "builtin:tiny-gpt2"
    revision: str | None = None


class DataParams(_Group):
    source: Annotated[str, Field(min_length=1)] = "builtin:reverse-words"
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.1
    builtin_rows: Annotated[int, Field(ge=20, le=1_000_000)] = 1200

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> DataParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must stay below 0.9 to leave rows for training")
        return self


def _layer_names_or_auto(value: Any) -> list[str] | str:
    if value == "auto":
        return value
    if isinstance(value, list) and value and all(isinstance(name, str) and name for name in value):
        return value
    raise ValueError("must be a non-empty list of layer names, or 'auto'")


class LoraParams(_Group):
    r: Annotated[int, Field(ge=1, le=1024)] = 8
    alpha: Annotated[float, Field(gt=0, le=4096)] = 16
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    # Layer names to adapt, or "auto": the attention projections peft knows for the architecture.
    target_modules: Annotated[list[str] | str, PlainValidator(_layer_names_or_auto)] = ["c_attn"]


class TrainParams(_Group):
    epochs: Annotated[int, Field(ge=1, le=1000)] = 6
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 5e-3
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 16
    grad_accum: Annotated[int, Field(ge=1, le=1024)] = 1
    max_length: Annotated[int, Field(ge=8, le=131072)] = 64
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    logging_steps: Annotated[int, Field(ge=1)] = 10
    keep_checkpoints: Annotated[int, Field(ge=1, le=100)] = 2
    # CPU float results depend on how many threads split each reduction: pinning the count makes
    # a CPU run byte-identical on any machine (single-process runs; DDP keeps its launcher's).
    cpu_threads: Annotated[int, Field(ge=1, le=512)] = 2
    # The command that runs the stage module: "python", "torchrun --nproc_per_node 2",
    # "accelerate launch --config_file configs/accelerate/multi_gpu_bf16.yaml", ...
    launcher: Annotated[str, Field(min_length=1)] = "python"


class EvalParams(_Group):
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 8
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    max_examples: Annotated[int, Field(ge=1)] | None = None


class ExportParams(_Group):
    merge: bool = False  # also ship merge_and_unload() full weights in merged/
    max_prompt_chars: Annotated[int, Field(ge=1, le=1_000_000)] = 256
    max_new_tokens: Annotated[int, Field(ge=1, le=32768)] = 32


class RegistryParams(_Group):
    # A candidate may be this much worse than the version it replaces (relative, per metric).
    tolerance: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    # Largest relative change of any layer's LoRA update norm versus the stage's current version.
    max_norm_drift: Annotated[float, Field(gt=0.0, le=1000.0)] = 1.0


class Params(_Group):
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 42
    model: ModelParams = ModelParams()
    data: DataParams = DataParams()
    lora: LoraParams = LoraParams()
    train: TrainParams = TrainParams()
    eval: EvalParams = EvalParams()
    export: ExportParams = ExportParams()
    registry: RegistryParams = RegistryParams()

    def group(self, name: str) -> dict[str, Any]:
        """One param group as plain data (what a stage records about itself)."""
        value = getattr(self, name)
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind, given = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return f"{key}: unknown key (check the spelling; see params.yaml in the template for valid keys)"
    if kind == "missing":
        return f"{key}: required"
    rule = error["msg"].removeprefix("Value error, ")
    return f"{key}: {rule} (got {given!r})"


def validate_params(raw: Any, source: str = str(PARAMS_FILE)) -> Params:
    """Validate already-parsed params; every problem becomes one `file: key: rule (got value)` line."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise TuneLedgerError(f"{source}: expected a mapping of param groups, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{source}: {_describe(err)}" for err in exc.errors(include_url=False)]
        raise TuneLedgerError("\n".join(lines)) from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml before any work starts."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TuneLedgerError(f"{path}: not found; run from the repository root") from None
    except UnicodeDecodeError as exc:
        raise TuneLedgerError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise TuneLedgerError(f"{where}: invalid YAML: {problem}") from None
    return validate_params(raw, str(path))
