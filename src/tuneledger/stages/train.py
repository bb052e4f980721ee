"""Stage `train`: LoRA fine-tuning with trl's SFTTrainer, resumable, logged through dvclive.

Runs unchanged under `torchrun` or `accelerate launch` (DDP): every rank trains, rank 0 alone
writes checkpoint seals, logs and the adapter.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from datasets import Dataset
from dvclive import Live
from peft import LoraConfig
from transformers import PrinterCallback, TrainerCallback
from trl import SFTConfig, SFTTrainer

from tuneledger import checkpoints, data, modeling
from tuneledger.hashing import canonical_json, sha256_bytes, tree_digest
from tuneledger.layout import ADAPTER_DIR, BASE_DIR, CHECKPOINTS_DIR, PREPARED_DIR, TRAIN_RESULTS
from tuneledger.params import Params
from tuneledger.progress import progress_bar, say
from tuneledger.publication import Publication
from tuneledger.stages import stage_entry

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """Processes in this run, as torchrun and accelerate announce them."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def config_id(params: Params) -> str:
    """Everything that decides the trained weights; a checkpoint is only resumed by the same id."""
    inputs = {
        "seed": params.seed,
        "lora": params.group("lora"),
        "train": params.group("train"),
        "data": tree_digest(PREPARED_DIR)[0],
        "base": tree_digest(BASE_DIR)[0],
        "world_size": world_size(),  # the global batch, hence the trajectory, depends on it
        "cpu_kernels": modeling.cpu_kernels(),  # another kernel branch rounds differently
    }
    return sha256_bytes(canonical_json(inputs))


def _lora_config(params: Params, model) -> LoraConfig:
    targets = modeling.resolve_lora_targets(model, params.lora.target_modules)
    return LoraConfig(
        r=params.lora.r,
        lora_alpha=params.lora.alpha,
        lora_dropout=params.lora.dropout,
        target_modules=targets,
        fan_in_fan_out=modeling.targets_conv1d(model, targets),
        task_type="CAUSAL_LM",
    )


def _sft_config(params: Params) -> SFTConfig:
    on_gpu = torch.cuda.is_available()
    t = params.train
    return SFTConfig(
        output_dir=str(CHECKPOINTS_DIR),
        seed=params.seed,
        data_seed=params.seed,
        num_train_epochs=t.epochs,
        learning_rate=t.lr,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of total steps in transformers 5
        max_length=t.max_length,
        logging_steps=t.logging_steps,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=t.keep_checkpoints,
        use_cpu=not on_gpu,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),  # CPU autocast to bf16 is slower here, and inexact
        gradient_checkpointing=False,  # tiny adapters; recomputation only costs time
        report_to="none",  # dvclive is attached explicitly, writing to a staging directory
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


class SealCheckpoints(TrainerCallback):
    """Seal each checkpoint once the trainer has finished writing it (see tuneledger.checkpoints)."""

    def __init__(self, config: str):
        self.config = config

    def on_save(self, args, state, control, **kwargs):
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank has written its RNG state
        if state.is_world_process_zero:
            checkpoints.seal(Path(args.output_dir) / f"checkpoint-{state.global_step}", self.config)


class ShowProgress(TrainerCallback):
    """One progress display for the run, instead of the trainer printing every log dict."""

    def __init__(self):
        self.stack = contextlib.ExitStack()
        self.advance = None
        self.values: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            bar = progress_bar("training", total=max(1, state.max_steps - state.global_step))
            self.advance = self.stack.enter_context(bar)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.values.update({k: v for k, v in (logs or {}).items() if k in ("loss", "eval_loss")})

    def on_step_end(self, args, state, control, **kwargs):
        if self.advance:
            self.advance(**self.values)

    def on_train_end(self, args, state, control, **kwargs):
        self.stack.close()


class LogToDvcLive(TrainerCallback):
    """Log trainer metrics to dvclive by global step, so plots line up with checkpoints.

    Unlike the stock dvclive callback, a resumed run first replays the history stored in the
    checkpoint, so its logs equal those of an uninterrupted run instead of repeating steps.
    """

    def __init__(self, live: Live):
        self.live = live

    def on_train_begin(self, args, state, control, **kwargs):
        for entry in state.log_history:
            self._log(entry)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._log({**(logs or {}), "step": state.global_step})

    def _log(self, entry: dict) -> None:
        if "train_runtime" in entry:  # the end-of-run summary goes to summary.json instead
            return
        self.live.step = int(entry.get("step", 0))
        for key, value in entry.items():
            if key in ("step", "epoch") or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            name = f"eval/{key.removeprefix('eval_')}" if key.startswith("eval_") else f"train/{key}"
            self.live.log_metric(name, value)
        self.live.make_summary()


def _live(outputs: Publication) -> Live:
    # dvclive writes into the staged results/train, published with the adapter or not at all.
    # No dvc.yaml edits and no experiment of its own: dvc.yaml declares the plots, DVC owns experiments.
    return Live(str(outputs.staged_dir(TRAIN_RESULTS)), dvcyaml=None, save_dvc_exp=False, report=None)


def run(params: Params) -> dict:
    """Fine-tune, resuming from a checkpoint of the same configuration; return the training summary."""
    main = is_main_process()
    config = config_id(params)
    resume, removed = checkpoints.select_resumable(CHECKPOINTS_DIR, config, remove=main)
    if main and removed:
        say(f"ignoring {len(removed)} checkpoint(s) of another configuration or incomplete: removed")
    if main and resume:
        say(f"resuming from {resume}")

    if world_size() == 1:
        modeling.pin_cpu_threads(params.train.cpu_threads)
    tokenizer = modeling.load_tokenizer(BASE_DIR)
    model = modeling.load_base(BASE_DIR, device="cpu")
    train_rows = data.read_split(PREPARED_DIR, "train")
    val_rows = data.read_split(PREPARED_DIR, "val")
    callbacks: list[TrainerCallback] = [SealCheckpoints(config), ShowProgress()]
    live = outputs = None
    if main:
        outputs = Publication(ADAPTER_DIR, TRAIN_RESULTS).begin()
        live = _live(outputs)
        callbacks.append(LogToDvcLive(live))
    trainer = SFTTrainer(
        model=model,
        args=_sft_config(params),
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(val_rows),
        processing_class=tokenizer,
        peft_config=_lora_config(params, model),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    world = trainer.args.world_size
    if main:
        say(f"training LoRA r={params.lora.r} on {len(train_rows)} rows, world size {world}")
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    summary = {
        "epochs": params.train.epochs,
        "steps": trainer.state.global_step,
        "final_loss": _final_loss(trainer.state.log_history),
        "train_loss": result.training_loss,
        "runtime_s": round(time.monotonic() - started, 3),
        "world_size": world,
        "resumed_from": str(resume) if resume else None,
        "config_id": config,
    }
    if main:
        _publish(trainer, live, summary, outputs)
    return summary


def _final_loss(history: list[dict]) -> float | None:
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return float(losses[-1]) if losses else None


def _publish(trainer, live, summary: dict, outputs: Publication) -> None:
    """Put the adapter and the logs into place together, only now that training has succeeded."""
    staged = outputs.staged_dir(ADAPTER_DIR)
    trainer.model.save_pretrained(str(staged))
    for extra in set(os.listdir(staged)) - set(ADAPTER_FILES):  # PEFT adds a README we do not ship
        os.remove(staged / extra)
    live.end()
    summary_file = outputs.staged_file(TRAIN_RESULTS) / "summary.json"
    summary_file.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    outputs.commit()
    say(f"adapter → {ADAPTER_DIR} ({summary['steps']} steps, final loss {summary['final_loss']})")


main = stage_entry(run)


if __name__ == "__main__":
    main()
