"""README.md of a version package: a Hugging Face model card generated from metadata.json."""

from __future__ import annotations

import yaml

from tuneledger.secrets import redact, redact_data


def _header(meta: dict) -> dict:
    tuned = meta["metrics"].get("tuned", {})
    metrics = [
        {"type": key, "name": f"{key} (tuned)", "value": value}
        for key, value in tuned.items()
        if value is not None
    ]
    source = meta["params"]["data"]["source"]
    return {
        "base_model": meta["base_model"]["id"],
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": ["tuneledger", "lora", "peft", "dvc"],
        "model-index": [
            {
                "name": f"LoRA adapter for {meta['base_model']['id']}",
                "results": [
                    {
                        "task": {"type": "text-generation", "name": "Text generation"},
                        "dataset": {"name": source, "type": source, "split": "test"},
                        "metrics": metrics,
                    }
                ],
            }
        ],
    }


def _metric_rows(metrics: dict) -> str:
    rows = ["| model | loss | perplexity | exact match |", "|---|---|---|---|"]
    for label, values in metrics.items():
        cells = [
            "n/a" if values.get(k) is None else f"{values[k]:.4g}"
            for k in ("loss", "perplexity", "exact_match")
        ]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def render(meta: dict) -> str:
    meta = redact_data(meta)  # before YAML or Markdown quote anything, where escaping hides secrets
    p, train, git = meta["params"], meta["training"], meta["git"]
    splits = ", ".join(f"{s} {v['rows']} rows" for s, v in meta["data"]["splits"].items())
    lora = p["lora"]
    targets = ", ".join(meta["adapter"]["target_modules_from_weights"])  # what was adapted, even for "auto"
    body = f"""
# LoRA adapter for `{meta["base_model"]["id"]}`

A LoRA adapter for `{meta["base_model"]["id"]}`, built and versioned by TuneLedger.

- content id: `{meta["content_id"]}`
- git commit: `{git["commit"]}`{" (uncommitted changes at build time)" if git["dirty"] else ""}
- created: {meta["created"]}

## How it was trained

trl `SFTTrainer` with a peft LoRA adapter: r={lora["r"]}, alpha={lora["alpha"]},
dropout={lora["dropout"]}, target modules {targets}. {train["epochs"]} epochs, {train["steps"]} steps,
learning rate {p["train"]["lr"]}, batch size {p["train"]["batch_size"]}, seed {p["seed"]};
final training loss {train["final_loss"]} in {train["runtime_s"]:.1f} s.
Data: `{p["data"]["source"]}` ({splits}). The full parameters, data and base model hashes and
the environment are in `metadata.json`.

## Evaluation (held-out test split)

{_metric_rows(meta["metrics"])}

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
    header = yaml.safe_dump(_header(meta), sort_keys=False, allow_unicode=True)
    return redact(f"---\n{header}---\n{body}")
