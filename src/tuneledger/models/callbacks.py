"""Trainer callbacks of the train stage: checkpoint seals, one progress display, dvclive logging."""

from __future__ import annotations

import contextlib
from pathlib import Path

from dvclive import Live
from torch import distributed
from transformers import TrainerCallback

from tuneledger.core.faults import fault_point
from tuneledger.core.progress import progress_bar
from tuneledger.models import checkpoints

# Wall-clock measures differ on every run: logging them would make each reproduction change the
# tracked plots and lead `dvc metrics diff` / `dvc exp show` with noise. summary.json keeps runtime.
TIMING_KEYS = ("runtime", "samples_per_second", "steps_per_second")


class SealCheckpoints(TrainerCallback):
    """Seal each checkpoint once the trainer has finished writing it (see tuneledger.models.checkpoints)."""

    def __init__(self, config: str):
        self.config = config

    def on_save(self, args, state, control, **kwargs):
        if distributed.is_available() and distributed.is_initialized():
            distributed.barrier()  # every rank has written its RNG state
        if state.is_world_process_zero:
            checkpoints.seal(Path(args.output_dir) / f"checkpoint-{state.global_step}", self.config)
            fault_point(f"train:sealed:{state.global_step}")


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
            if key.endswith(TIMING_KEYS):
                continue
            name = f"eval/{key.removeprefix('eval_')}" if key.startswith("eval_") else f"train/{key}"
            self.live.log_metric(name, value)
        self.live.make_summary()
