"""The same work as `dvc repro` on a real base, as one plain trl script: read the data, fine-tune a
LoRA adapter on the base where it lies, evaluate base and tuned. No DVC, no copy of the base, no
checkpoints, no dvclive, no manifest. The baseline for the real-model overhead figure.

Usage: plain_real_model.py params.yaml   (prints the training seconds and metrics as JSON)
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from trl import SFTConfig, SFTTrainer

from tuneledger.core.params import load_params
from tuneledger.inference import evaluation
from tuneledger.models import data, modeling


def main(params_file: str) -> None:
    params = load_params(params_file)
    torch.set_num_threads(params.train.cpu_threads)
    rows, _ = data.load_source(params.data, params.seed)
    splits = data.split(rows, params.data, params.seed)
    base = Path(params.model.base)
    tokenizer = modeling.load_tokenizer(base)
    model = modeling.load_base(base, "cpu", params.model.dtype)
    work = Path(tempfile.mkdtemp(prefix="plain-real-model-"))
    try:
        t, lora = params.train, params.lora
        config = SFTConfig(
            output_dir=str(work / "out"),
            seed=params.seed,
            data_seed=params.seed,
            max_steps=t.max_steps,
            learning_rate=t.lr,
            lr_scheduler_type=t.lr_scheduler,
            optim=t.optim,
            per_device_train_batch_size=t.batch_size,
            per_device_eval_batch_size=t.batch_size,
            max_length=t.max_length,
            logging_steps=t.logging_steps,
            eval_strategy="epoch",
            save_strategy="no",
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            report_to="none",
            disable_tqdm=True,
        )
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(splits["train"]),
            eval_dataset=Dataset.from_list(splits["val"]),
            processing_class=tokenizer,
            peft_config=LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=None if lora.target_modules == "auto" else lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
        started = time.monotonic()
        trainer.train()
        train_seconds = time.monotonic() - started
        trainer.model.save_pretrained(work / "adapter")

        test_rows = splits["test"][: params.eval.max_examples]
        settings = {"max_new_tokens": params.eval.max_new_tokens, "batch_size": params.eval.batch_size}
        fresh = modeling.load_base(base, "cpu", params.model.dtype)
        metrics = {"base": evaluation.evaluate(fresh, tokenizer, test_rows, label="base", **settings)}
        tuned = PeftModel.from_pretrained(fresh, str(work / "adapter")).eval()
        metrics["tuned"] = evaluation.evaluate(tuned, tokenizer, test_rows, label="tuned", **settings)
        print(json.dumps({"train_seconds": train_seconds, "metrics": metrics}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1])
