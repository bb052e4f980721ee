"""Stage `evaluate`: the base model and base+adapter on the held-out test split."""

from __future__ import annotations

import json

from tuneledger.core.layout import ADAPTER_DIR, BASE_DIR, EVAL_RESULTS, PREPARED_DIR
from tuneledger.core.params import Params
from tuneledger.core.progress import say
from tuneledger.core.publication import Publication
from tuneledger.inference import evaluation
from tuneledger.models import data, modeling
from tuneledger.stages import stage_entry

METRICS = ("loss", "perplexity", "exact_match")
METRICS_FILE, COMPARISON_FILE = EVAL_RESULTS / "metrics.json", EVAL_RESULTS / "comparison.json"
ANSWERS_FILE = EVAL_RESULTS / "answers.json"  # the tuned model's answers that exact match scored


def run(params: Params) -> dict:
    from peft import PeftModel

    rows = data.read_split(PREPARED_DIR, "test")[: params.eval.max_examples]
    tokenizer = modeling.load_tokenizer(BASE_DIR)
    model = modeling.load_base(BASE_DIR, None, params.model.dtype, params.model.quantization)  # as trained
    settings = {"max_new_tokens": params.eval.max_new_tokens, "batch_size": params.eval.batch_size}
    metrics = {"base": evaluation.evaluate(model, tokenizer, rows, label="base", **settings)}
    tuned = PeftModel.from_pretrained(model, str(ADAPTER_DIR)).eval()  # wraps the base in place
    metrics["tuned"] = evaluation.evaluate(tuned, tokenizer, rows, label="tuned", **settings)

    # metrics.json keeps its contract (loss, perplexity, exact match per model); the share of answers
    # that ended by themselves is a property of generation, shown beside them in comparison.json.
    answers = metrics["tuned"].pop("answers")
    metrics["base"].pop("answers")
    contract = {name: {k: v for k, v in values.items() if k in METRICS} for name, values in metrics.items()}
    comparison = [{"model": name, **values} for name, values in metrics.items()]
    with Publication(METRICS_FILE, COMPARISON_FILE, ANSWERS_FILE) as outputs:  # all together, or none
        outputs.staged_file(METRICS_FILE).write_text(json.dumps(contract, indent=2) + "\n")
        outputs.staged_file(COMPARISON_FILE).write_text(json.dumps(comparison, indent=2) + "\n")
        outputs.staged_file(ANSWERS_FILE).write_text(json.dumps(answers, indent=1, ensure_ascii=False) + "\n")
    for name, values in metrics.items():
        say(
            f"{name:>5}: loss {values['loss']:.4f}  perplexity {values['perplexity']:.3f}  "
            f"exact match {values['exact_match']}  stopped {values['stop_rate']}"
        )
    return metrics


main = stage_entry(run)


if __name__ == "__main__":
    main()
