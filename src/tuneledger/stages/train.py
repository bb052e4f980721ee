"""Stage `train`: LoRA (or QLoRA) fine-tuning with trl's SFTTrainer, resumable, logged through dvclive.

Reads like trl's `sft.py`: model, data, trainer, train, publish. Runs unchanged under `torchrun`
or `accelerate launch` (DDP, FSDP): every rank trains, rank 0 alone writes checkpoint seals, logs
and the adapter.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING

from tuneledger.core import kernels
from tuneledger.core.errors import TuneLedgerError, first_line
from tuneledger.core.hashing import canonical_json, sha256_bytes, tree_digest
from tuneledger.core.layout import (
    ADAPTER_DIR,
    BASE_DIR,
    CHECKPOINTS_DIR,
    PREPARED_DIR,
    TRAIN_RESULTS,
    TRAIN_SUMMARY,
)
from tuneledger.core.params import Params, check_names_transformers_resolves
from tuneledger.core.progress import say
from tuneledger.core.publication import StageOutputs, staged_path
from tuneledger.models import chat, checkpoints, data, modeling
from tuneledger.package import environment
from tuneledger.package.adapter_config import canonical, read_adapter_config
from tuneledger.package.files import ADAPTER_CONFIG, ADAPTER_FILES, GENERATION_CONFIG
from tuneledger.stages import launcher, stage_entry

if TYPE_CHECKING:  # for annotations: the functions below import these libraries where they use them
    from datasets import Dataset
    from dvclive import Live
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer


def train_or_launch(params: Params) -> None:
    """Train in this process, or start `train.launcher` on this module and check that it trained."""
    if launcher.launched_here(params):
        run(params)
    else:
        launcher.launch(params)


def run(params: Params) -> dict:
    """Fine-tune, resuming from a checkpoint of the same configuration; return the training summary."""
    # Everything is checked before stale checkpoints are removed: a refused run changes nothing.
    check_names_transformers_resolves(params.train)
    train_rows, val_rows = data.read_split(PREPARED_DIR, "train"), data.read_split(PREPARED_DIR, "val")
    chat.check_template_for_data(modeling.load_tokenizer(BASE_DIR), data.is_conversational(train_rows))
    primary = is_main_process()
    config = config_id(params)
    resume = _resumable_checkpoint(config, primary)
    if world_size() == 1:
        kernels.pin_cpu_threads(params.train.cpu_threads)

    trainer = build_trainer(params, train_rows, val_rows)
    # Staging starts only once the model has loaded: a bad base or target fails before it.
    outputs = (
        StageOutputs(ADAPTER_DIR, TRAIN_RESULTS, written_in_place=(CHECKPOINTS_DIR,)).begin()
        if primary
        else None
    )
    live = _live(outputs) if outputs else None
    for callback in _callbacks(config, live):  # after the defaults, as the constructor would place them
        trainer.add_callback(callback)
    if primary:
        say(
            f"training LoRA r={params.lora.r} on {len(train_rows)} rows, world size {trainer.args.world_size}"
        )

    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    summary = {
        "epochs": params.train.epochs,
        "steps": trainer.state.global_step,
        "final_loss": _final_loss(trainer.state.log_history),
        "train_loss": result.training_loss,
        "runtime_s": round(time.monotonic() - started, 3),
        "world_size": trainer.args.world_size,
        "sharding": sharding(),
        "resumed_from": str(resume) if resume else None,
        "config_id": config,
        "environment": environment.describe(),  # the training process's: its GPUs, torch, kernels
        "launch_id": launcher.launch_id(),  # proves to the launching process that this run published
    }
    adapter = outputs.staged_dir(ADAPTER_DIR) if primary else staged_path(ADAPTER_DIR)
    trainer.save_model(str(adapter))  # every rank: under FSDP the full adapter is gathered from the shards
    if primary:
        _publish(adapter, trainer.processing_class, live, summary, outputs)
    return summary


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def config_id(params: Params) -> str:
    """Everything that decides the trained weights; a checkpoint is only resumed by the same id."""
    inputs = {
        "seed": params.seed,
        "model": params.group("model"),  # dtype and quantization change the trajectory
        "lora": params.group("lora"),
        "train": params.group("train"),
        "data": tree_digest(PREPARED_DIR)[0],
        "base": tree_digest(BASE_DIR)[0],  # the chat template is a file of the base snapshot
        "world_size": world_size(),  # the global batch, hence the trajectory, depends on it
        "sharding": sharding(),  # a sharded checkpoint holds other files than an unsharded one
        "cpu_kernels": kernels.cpu_kernels(),  # another kernel branch rounds differently
    }
    return sha256_bytes(canonical_json(inputs))


def world_size() -> int:
    """Processes in this run, as torchrun and accelerate announce them."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def sharding() -> str | None:
    """FSDP, as an accelerate config turns it on (`configs/accelerate/fsdp*.yaml`), or None."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    return f"fsdp{os.environ.get('FSDP_VERSION', '1')} {os.environ.get('FSDP_SHARDING_STRATEGY', '')}".strip()


def _resumable_checkpoint(config: str, primary: bool):
    resume, removed = checkpoints.select_resumable(CHECKPOINTS_DIR, config, remove=primary)
    if primary and removed:
        say(f"ignoring {len(removed)} checkpoint(s) of another configuration or incomplete: removed")
    if primary and resume:
        say(f"resuming from {resume}")
    return resume


def build_trainer(params: Params, train_rows: list[dict], val_rows: list[dict]) -> SFTTrainer:
    """trl's trainer over the base with a fresh adapter, the prepared rows and the run's chat template."""
    from transformers import PrinterCallback
    from trl import SFTTrainer

    tokenizer = modeling.load_tokenizer(BASE_DIR)
    trainer = SFTTrainer(
        model=adapted_model(params),
        args=sft_config(params, assistant_only_loss=trl_masks_assistant_turns(params, tokenizer, train_rows)),
        train_dataset=training_dataset(params, tokenizer, train_rows),
        eval_dataset=training_dataset(params, tokenizer, val_rows),
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def adapted_model(params: Params):
    """The base (quantized if asked) with a freshly initialised adapter, seeded."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    model = modeling.load_base(BASE_DIR, "cpu", params.model.dtype, params.model.quantization)
    if params.model.quantization != "none":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=params.train.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    set_seed(params.seed)  # LoRA A is drawn at random
    try:
        return get_peft_model(model, lora_config(params))
    except ValueError as exc:  # peft's own check of the names against the model
        unknown = _unknown_targets(params.lora.target_modules, model)
        raise TuneLedgerError(unknown or f"params.yaml: lora: {first_line(exc)}") from None


def lora_config(params: Params) -> LoraConfig:
    """peft's own config: it resolves `all-linear`, knows each architecture's attention layers
    (`auto` = its default), and sets `fan_in_fan_out` for GPT-2's Conv1D layers itself."""
    from peft import LoraConfig

    lora = params.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=None if lora.target_modules == "auto" else lora.target_modules,
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
        modules_to_save=lora.modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def _unknown_targets(targets, model) -> str | None:
    """peft says only that no name matched; the user needs the names the model does have."""
    if not isinstance(targets, list):
        return None
    import torch
    from transformers.pytorch_utils import Conv1D

    layers = (torch.nn.Linear, Conv1D)  # what LoRA can adapt here; 4-bit layers subclass Linear
    has = sorted(
        {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, layers)}
    )
    missing = [t for t in targets if t not in has]
    if not missing:
        return None
    return (
        f"params.yaml: lora.target_modules: {missing} not in the base model (it has {', '.join(has)}); "
        "use names from that list, `auto` or `all-linear`"
    )


def trl_masks_assistant_turns(params: Params, tokenizer, rows: list[dict]) -> bool:
    """Whether trl masks non-assistant tokens of `messages` rows through the template's markers."""
    return bool(
        params.train.assistant_only_loss
        and rows
        and "messages" in rows[0]
        and chat.marks_assistant_turns(tokenizer)
    )


def sft_config(params: Params, assistant_only_loss: bool = False) -> SFTConfig:
    import torch
    from trl import SFTConfig

    on_gpu = torch.cuda.is_available()
    t = params.train
    save, evaluate = _step_or_epoch(t.save_steps), _step_or_epoch(t.eval_steps)
    return SFTConfig(
        output_dir=str(CHECKPOINTS_DIR),
        seed=params.seed,
        data_seed=params.seed,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.lr,
        lr_scheduler_type=t.lr_scheduler,
        optim=t.optim,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of total steps in transformers 5
        max_length=t.max_length,
        assistant_only_loss=assistant_only_loss,
        logging_steps=t.logging_steps,
        eval_strategy=evaluate["strategy"],
        eval_steps=evaluate["steps"],
        save_strategy=save["strategy"],
        save_steps=save["steps"],
        save_total_limit=t.keep_checkpoints,
        use_cpu=not on_gpu,
        bf16=modeling.torch_dtype(params.model.dtype) == torch.bfloat16 and on_gpu,
        fp16=params.model.dtype == "float16" and on_gpu,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        report_to=t.report_to or "none",  # dvclive is attached explicitly, writing to a staging directory
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def _step_or_epoch(steps: int | None) -> dict:
    return {"strategy": "steps", "steps": steps} if steps else {"strategy": "epoch", "steps": None}


def training_dataset(params: Params, tokenizer, rows: list[dict]) -> Dataset:
    """Rows as trl takes them. `messages` rows whose template trl cannot mask come tokenized, with
    an `assistant_masks` column marking each answer and its end-of-turn token."""
    from datasets import Dataset

    masked = params.train.assistant_only_loss and rows and "messages" in rows[0]
    if masked and not chat.marks_assistant_turns(tokenizer):
        return Dataset.from_list([chat.assistant_masked(tokenizer, row) for row in rows])
    return Dataset.from_list(rows)


def _live(outputs: StageOutputs) -> Live:
    # dvclive writes into the staged results/train, published with the adapter or not at all.
    # No dvc.yaml edits and no experiment of its own: dvc.yaml declares the plots, DVC owns experiments.
    from dvclive import Live

    return Live(str(outputs.staged_dir(TRAIN_RESULTS)), dvcyaml=None, save_dvc_exp=False, report=None)


def _callbacks(config: str, live: Live | None) -> list[TrainerCallback]:
    from tuneledger.models.callbacks import LogToDvcLive, SealCheckpoints, ShowProgress

    callbacks: list[TrainerCallback] = [SealCheckpoints(config), ShowProgress()]
    return callbacks + [LogToDvcLive(live)] if live else callbacks


def _final_loss(history: list[dict]) -> float | None:
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return float(losses[-1]) if losses else None


def _publish(staged, tokenizer, live, summary: dict, outputs: StageOutputs) -> None:
    """Put the adapter and the logs into place together, only now that training has succeeded."""
    for extra in set(os.listdir(staged)) - set(ADAPTER_FILES):  # tokenizer, README, a pickled args file
        os.remove(staged / extra)
    _write_canonical_config(staged)
    _write_generation_config(staged, tokenizer)
    live.end()
    summary_file = outputs.staged_file(TRAIN_RESULTS) / TRAIN_SUMMARY.name
    summary_file.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    outputs.commit()
    say(f"adapter → {ADAPTER_DIR} ({summary['steps']} steps, final loss {summary['final_loss']})")


def _write_canonical_config(adapter_dir) -> None:
    """peft writes `target_modules` (a set) in hash order, which changes from process to process."""
    path = adapter_dir / ADAPTER_CONFIG
    config = canonical(read_adapter_config(path))
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_generation_config(staged, tokenizer) -> None:
    """Every token that ends an answer (eos and the chat template's end-of-turn, the ones the adapter
    learnt to stop at), so plain transformers `generate` stops there too. Written here, where the
    tokenizer is loaded anyway, so `export` copies it without importing torch. Plain JSON rather
    than `GenerationConfig.save_pretrained`, which stamps the transformers version into it."""
    config = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": chat.eos_token_ids(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
    }
    (staged / GENERATION_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


main = stage_entry(train_or_launch)


if __name__ == "__main__":
    main()
