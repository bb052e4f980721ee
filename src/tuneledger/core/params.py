"""params.yaml: its schema, its validation, and the one loader every stage and command uses."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator

from tuneledger.core.errors import TuneLedgerError

PARAMS_FILE = Path("params.yaml")

Fraction = Annotated[float, Field(gt=0.0, lt=0.5)]


class _Group(BaseModel):
    # strict: "8" is not 8 and true is not 1; unknown keys are refused by name.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelParams(_Group):
    base: Annotated[str, Field(min_length=1)] = "builtin:tiny-gpt2"
    revision: str | None = None
    # null: the base's own template; a built-in name (tuneledger/models/chat_templates/); or a .jinja file
    # under configs/chat_templates/, which the prepare stage depends on.
    chat_template: Annotated[str, Field(min_length=1)] | None = None
    # auto: bfloat16 on a GPU that supports it, else float32 (CPU kernels in bf16 are slow and inexact).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantization: Literal["none", "nf4", "int8"] = "none"  # bitsandbytes; nf4 + LoRA is QLoRA


class DataParams(_Group):
    source: Annotated[str, Field(min_length=1)] = "builtin:reverse-words"
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.1
    builtin_rows: Annotated[int, Field(ge=20, le=1_000_000)] = 1200
    # For `source: hub:ORG/NAME` (datasets.load_dataset); the resolved commit is recorded.
    revision: str | None = None
    config: str | None = None
    split: Annotated[str, Field(min_length=1)] = "train"

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> DataParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must stay below 0.9 to leave rows for training")
        return self


TARGET_KEYWORDS = ("auto", "all-linear")


def _layer_names_or_keyword(value: Any) -> list[str] | str:
    if value in TARGET_KEYWORDS:
        return value
    if isinstance(value, list) and value and all(isinstance(name, str) and name for name in value):
        return value
    raise ValueError("must be a non-empty list of layer names, 'auto' or 'all-linear'")


def _layer_names(value: Any) -> list[str]:
    if isinstance(value, list) and all(isinstance(name, str) and name for name in value):
        return value
    raise ValueError("must be a list of layer names")


# `train.launcher` becomes the start of a shell command (dvc.yaml `cmd`), so only known launchers
# with plain option words pass: no quoting, substitution or separator can ride along.
LAUNCHERS = (("python",), ("torchrun",), ("accelerate", "launch"))
_LAUNCHER_TEXT = re.compile(r"[A-Za-z0-9_./:=,@+ -]+")


def _known_launcher(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if not _LAUNCHER_TEXT.fullmatch(value):
        raise ValueError("options may hold only letters, digits, spaces and ._/:=,@+-")
    words = tuple(value.split())
    program = next((p for p in LAUNCHERS if words[: len(p)] == p), None)
    if program is None:
        raise ValueError("must start with python, torchrun or accelerate launch")
    if program == ("python",) and len(words) > 1:
        raise ValueError("python takes no options here")
    return value


class LoraParams(_Group):
    r: Annotated[int, Field(ge=1, le=1024)] = 8
    alpha: Annotated[float, Field(gt=0, le=4096)] = 16
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    # Layer names to adapt; "auto": the attention projections peft knows for the architecture;
    # "all-linear": every linear layer but the output head (peft's own keyword).
    target_modules: Annotated[list[str] | str, PlainValidator(_layer_names_or_keyword)] = ["c_attn"]
    use_dora: bool = False
    use_rslora: bool = False  # scale updates by alpha/sqrt(r) instead of alpha/r
    # Layers trained in full and saved with the adapter (e.g. an embedding for new chat tokens).
    modules_to_save: Annotated[list[str], PlainValidator(_layer_names)] = []


class TrainParams(_Group):
    epochs: Annotated[int, Field(ge=1, le=1000)] = 6
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-2
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
    launcher: Annotated[str, PlainValidator(_known_launcher)] = "python"
    # Conversational data: labels only on assistant turns and their end-of-turn token.
    assistant_only_loss: bool = True
    gradient_checkpointing: bool = False  # non-reentrant; trades compute for activation memory
    max_steps: Annotated[int, Field(ge=1)] | None = None  # overrides epochs when set
    save_steps: Annotated[int, Field(ge=1)] | None = None  # null: a checkpoint each epoch
    eval_steps: Annotated[int, Field(ge=1)] | None = None  # null: evaluate each epoch
    lr_scheduler: Annotated[str, Field(min_length=1)] = "linear"  # a transformers SchedulerType
    optim: Annotated[str, Field(min_length=1)] = "adamw_torch_fused"  # a transformers OptimizerNames
    # Trackers beside dvclive (always on); each must be installed by the user.
    report_to: list[Literal["wandb", "mlflow", "tensorboard"]] = []


def check_names_transformers_resolves(train: TrainParams) -> None:
    """The train keys whose valid values only transformers knows (scheduler, optimizer) and the
    trackers that must be installed. Called by the train stage before any work, not by
    `load_params`: the import costs seconds that every other command would pay."""
    import importlib.util

    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    missing = [name for name in train.report_to if importlib.util.find_spec(name) is None]
    if missing:
        raise TuneLedgerError(
            f"params.yaml: train.report_to: {', '.join(missing)} not installed; "
            f"`pip install {' '.join(missing)}` or remove it (dvclive always logs)"
        )
    for key, names in (("lr_scheduler", SchedulerType), ("optim", OptimizerNames)):
        value = getattr(train, key)
        if value not in {member.value for member in names}:
            known = ", ".join(member.value for member in names)
            raise TuneLedgerError(f"params.yaml: train.{key}: unknown {value!r}; transformers knows {known}")


class BenchmarkParams(_Group):
    # An lm-eval task: a name in lm-eval's registry (hellaswag, arc_easy, ...) or the `task:` of a
    # YAML file under configs/eval_tasks/.
    task: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=200)]
    limit: Annotated[int, Field(ge=1)] | None = None  # score at most this many documents (null: all)
    num_fewshot: Annotated[int, Field(ge=0, le=64)] = 0
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 16


class EvalParams(_Group):
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 8
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    max_examples: Annotated[int, Field(ge=1)] | None = None
    # Scored on the base and the tuned model by the `benchmark` stage; an empty list skips its work.
    benchmarks: list[BenchmarkParams] = []

    @model_validator(mode="after")
    def _each_task_once(self) -> EvalParams:
        names = [benchmark.task for benchmark in self.benchmarks]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"benchmarks: task {', '.join(repeated)} listed twice; list each task once")
        return self


class ExportParams(_Group):
    merge: bool = False  # also ship merge_and_unload() full weights in merged/
    max_prompt_chars: Annotated[int, Field(ge=1, le=1_000_000)] = 256
    max_new_tokens: Annotated[int, Field(ge=1, le=32768)] = 32


class RegistryParams(_Group):
    # A candidate may be this much worse than the version it replaces (relative, per metric).
    tolerance: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    # Largest relative change of any layer's LoRA update norm versus the stage's current version.
    max_norm_drift: Annotated[float, Field(gt=0.0, le=1000.0)] = 1.0
    # `promote --require-canary`: the canary arm's requests needed, and how much worse than the
    # stable arm it may be: error rate (absolute) and p95 latency (relative).
    canary_min_requests: Annotated[int, Field(ge=1)] = 50
    canary_max_error_increase: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    canary_max_latency_increase: Annotated[float, Field(ge=0.0, le=100.0)] = 0.25
    # A version may score at most this much below its own base on each benchmark (absolute).
    max_forgetting: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02


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
    # A key with a line break or other control character is shown quoted: one problem, one line.
    parts = (str(part) if str(part).isprintable() else repr(str(part)) for part in error["loc"])
    key = ".".join(parts) or "(top level)"
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
