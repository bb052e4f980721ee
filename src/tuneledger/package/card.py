"""README.md of a version package: a Hugging Face model card generated from metadata.json."""

from __future__ import annotations

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from tuneledger.core.secrets import redact, redact_data

TAGS = ["tuneledger", "lora", "peft", "dvc"]


def card_data(meta: dict) -> ModelCardData:
    """The card's YAML header: library, task, tags, the tuned model's test metrics, and the base
    model when it is a Hugging Face Hub id (a local directory or built-in is no hub link)."""
    base = meta["base_model"]
    source = meta["params"]["data"]["source"]
    results = [
        EvalResult(
            task_type="text-generation",
            task_name="Text generation",
            dataset_type=source,
            dataset_name=source,
            dataset_split="test",
            metric_type=key,
            metric_name=f"{key} (tuned)",
            metric_value=value,
        )
        for key, value in meta["metrics"].get("tuned", {}).items()
        if value is not None
    ]
    results += [
        EvalResult(
            task_type="text-generation",
            task_name=task,
            dataset_type=task,
            dataset_name=f"{task} (lm-eval, {record['num_fewshot']}-shot)",
            metric_type=record["metric"],
            metric_name=f"{record['metric']} (tuned)",
            metric_value=record["tuned"],
        )
        for task, record in (meta.get("benchmarks") or {}).items()
    ]
    return ModelCardData(
        base_model=base["id"] if base.get("kind") == "hub" else None,
        library_name="peft",
        pipeline_tag="text-generation",
        tags=TAGS,
        model_name=f"LoRA adapter for {base['id']}",
        eval_results=results or None,
    )


def _metric_rows(metrics: dict) -> str:
    rows = ["| model | loss | perplexity | exact match |", "|---|---|---|---|"]
    for label, values in metrics.items():
        cells = [
            "n/a" if values.get(k) is None else f"{values[k]:.4g}"
            for k in ("loss", "perplexity", "exact_match")
        ]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _benchmark_section(benchmarks: dict) -> str:
    if not benchmarks:
        return ""
    rows = ["| task | metric | base | tuned | change | few-shot | documents |", "|---" * 7 + "|"]
    rows += [
        f"| {task} | {r['metric']} | {r['base']:.4g} | {r['tuned']:.4g} | {r['change']:+.4g} | "
        f"{r['num_fewshot']} | {r['samples']} |"
        for task, r in benchmarks.items()
    ]
    return "\n## Benchmarks (lm-eval, base and tuned)\n\n" + "\n".join(rows) + "\n"


def render(meta: dict) -> str:
    meta = redact_data(meta)  # before YAML or Markdown quote anything, where escaping hides secrets
    p, train, git = meta["params"], meta["training"], meta["git"]
    splits = ", ".join(f"{s} {v['rows']} rows" for s, v in meta["data"]["splits"].items())
    lora, model = p["lora"], p["model"]
    targets = ", ".join(meta["adapter"]["target_modules_from_weights"])  # what was adapted, even for "auto"
    body = f"""
# LoRA adapter for `{meta["base_model"]["id"]}`

A LoRA adapter for `{meta["base_model"]["id"]}`, built and versioned by TuneLedger.

- content id: `{meta["content_id"]}`
- git commit: `{git["commit"]}`{" (uncommitted changes at build time)" if git["dirty"] else ""}
- created: {meta["created"]}
- base model loaded with dtype `{model["dtype"]}`, quantization `{model["quantization"]}`

## How it was trained

trl `SFTTrainer` with a peft LoRA adapter: r={lora["r"]}, alpha={lora["alpha"]},
dropout={lora["dropout"]}, target modules {targets}. {train["epochs"]} epochs, {train["steps"]} steps,
learning rate {p["train"]["lr"]}, batch size {p["train"]["batch_size"]}, seed {p["seed"]};
final training loss {train["final_loss"]} in {train["runtime_s"]:.1f} s.
Data: `{p["data"]["source"]}` ({splits}). The full parameters, data and base model hashes and
the environment are in `metadata.json`.

## Evaluation (held-out test split)

{_metric_rows(meta["metrics"])}
{_benchmark_section(meta.get("benchmarks"))}
## How to load

Check the bytes first (`tuneledger verify <dir> --manifest <manifest>`), then:

```python
from tuneledger import load

model, tokenizer = load("path/to/this/package")  # verifies SHA-256, safetensors only
```

or with plain transformers and peft:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel

base = AutoModelForCausalLM.from_pretrained("path/to/base")  # {meta["base_model"]["id"]}
model = PeftModel.from_pretrained(base, "path/to/this/package")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/package")
```

Requests must fit `signature.json` (prompt length, generation parameters and their bounds).
"""
    header = card_data(meta).to_yaml()
    card = ModelCard(f"---\n{header}\n---\n{body}")  # parsed and checked by the hub's own code
    return redact(str(card))
