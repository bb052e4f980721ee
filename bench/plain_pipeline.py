"""The same work as `dvc repro` of the default, as one plain script: no DVC, no checkpoints, no
dvclive, no manifest. The baseline for the pipeline-overhead figure."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from tuneledger.core.params import load_params
from tuneledger.inference import evaluation
from tuneledger.models import base_model, data


def main(params_file: str) -> None:
    params = load_params(params_file)
    torch.set_num_threads(params.train.cpu_threads)
    work = Path(tempfile.mkdtemp())
    splits = data.split(data.load_source(params.data, params.seed)[0], params.data, params.seed)
    base_model.build_tiny_gpt2(work / "base", params.seed)
    torch.set_num_threads(params.train.cpu_threads)
    tokenizer = AutoTokenizer.from_pretrained(work / "base")
    model = AutoModelForCausalLM.from_pretrained(work / "base")
    lora = params.lora
    config = SFTConfig(
        output_dir=str(work / "out"),
        seed=params.seed,
        num_train_epochs=params.train.epochs,
        learning_rate=params.train.lr,
        per_device_train_batch_size=params.train.batch_size,
        max_length=params.train.max_length,
        eval_strategy="epoch",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        disable_tqdm=True,
        logging_steps=params.train.logging_steps,
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
            target_modules=list(lora.target_modules),
            fan_in_fan_out=True,
            task_type="CAUSAL_LM",
        ),
    )
    trainer.train()
    trainer.model.save_pretrained(work / "adapter")
    settings = {"max_new_tokens": params.eval.max_new_tokens, "batch_size": params.eval.batch_size}
    base = AutoModelForCausalLM.from_pretrained(work / "base").eval()
    evaluation.evaluate(base, tokenizer, splits["test"], label="base", **settings)
    tuned = PeftModel.from_pretrained(base, str(work / "adapter")).eval()
    print(evaluation.evaluate(tuned, tokenizer, splits["test"], label="tuned", **settings))


if __name__ == "__main__":
    main(sys.argv[1])
