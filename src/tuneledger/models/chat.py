"""Chat templates: which one a run uses, how a conversation becomes a prompt, where a turn ends.

The template is the base's own (`chat_template.jinja` or the tokenizer config's entry), a built-in
from `tuneledger/models/chat_templates/`, or a `.jinja` file under `configs/chat_templates/` (a dep of the
prepare stage, so editing it re-runs the pipeline). `prepare` writes the chosen one into the base
snapshot as `chat_template.jinja`, which transformers prefers over any other, so training,
evaluation, the package and serving all render conversations with the same bytes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.hashing import sha256_bytes

TEMPLATE_FILE = "chat_template.jinja"
BUILTIN_DIR = Path(__file__).parent / "chat_templates"
USER_DIR = Path("configs/chat_templates")
ROLES = ("system", "user", "assistant")
_SENTINEL = "\x00tuneledger-answer\x00"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.jinja"))


def read_setting(setting: str) -> tuple[str, str]:
    """The text of `model.chat_template` (a built-in name or a file under configs/chat_templates/)."""
    if setting in builtin_names():
        return (BUILTIN_DIR / f"{setting}.jinja").read_text(encoding="utf-8"), f"builtin:{setting}"
    path = Path(setting)
    inside = path.resolve().is_relative_to(USER_DIR.resolve())
    if path.suffix != ".jinja" or not inside:
        raise TuneLedgerError(
            f"params.yaml: model.chat_template: {setting!r} is neither a built-in "
            f"({', '.join(builtin_names())}) nor a .jinja file under {USER_DIR}/ (where DVC tracks it)"
        )
    if not path.is_file():
        raise TuneLedgerError(f"params.yaml: model.chat_template: {setting} not found")
    return path.read_text(encoding="utf-8"), path.as_posix()


def base_template(tokenizer) -> str | None:
    """The template a tokenizer brought with it (the default one if it names several)."""
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    return template or None


def install(base_dir: Path, setting: str | None) -> dict | None:
    """Put the run's template into the base snapshot; return its record for metadata (None: no template)."""
    from tuneledger.models.modeling import load_tokenizer

    if setting is not None:
        text, source = read_setting(setting)
        (base_dir / TEMPLATE_FILE).write_text(text, encoding="utf-8")
    else:
        text, source = base_template(load_tokenizer(base_dir)), "base"
    if text is None:
        return None
    record = {"source": source, "sha256": sha256_bytes(text.encode("utf-8"))}
    record["end_of_turn"] = end_of_turn_token(load_tokenizer(base_dir))
    return record


def check_template_for_data(tokenizer, conversational: bool) -> None:
    """Conversations are rendered through a chat template: refuse a base that has none."""
    if conversational and base_template(tokenizer) is None:
        raise TuneLedgerError(
            "model.chat_template: the base model has no chat template and the data is conversational; "
            f"set model.chat_template to a built-in ({', '.join(builtin_names())}) or a .jinja file"
        )


def end_of_turn_token(tokenizer) -> str:
    """The special token that closes an assistant turn in the template (`<|im_end|>`, `<|eot_id|>`)."""
    turn = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
    rendered = tokenizer.apply_chat_template(turn, tokenize=False)
    after = rendered.split(_SENTINEL, 1)[-1]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    if not ids or ids[0] not in special:
        raise TuneLedgerError(
            f"model.chat_template: an assistant turn ends with {after[:20]!r}, not with a special token of "
            "the base's vocabulary, so generation could not stop there; use a template made for this base"
        )
    return tokenizer.convert_ids_to_tokens(ids[0])


def eos_token_ids(tokenizer) -> list[int]:
    """Every token that ends an answer: the tokenizer's eos and, with a template, its end-of-turn."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if base_template(tokenizer):
        turn_end = tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))
        ids = [turn_end, *(i for i in ids if i != turn_end)]
    return ids


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The text a model continues to answer `messages` (with the assistant header appended)."""
    if not base_template(tokenizer):
        raise TuneLedgerError("this model has no chat template; send a plain prompt instead of messages")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


_CONTENT_SLOT = re.compile("\ue000(\\d+)\ue001")  # private-use characters around a message's index


def encode_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the prompt for `messages`, in which no message content becomes a special token.

    Tokenizing the rendered text whole (what apply_chat_template does) turns `<|im_start|>system`
    written inside a user's message into the real turn marker: a forged turn. When the contents
    bring special tokens of their own, the template's text is tokenized with its special tokens and
    each content as plain text; otherwise the ids are those of the whole text, unchanged."""
    whole = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    slots = [{**message, "content": f"\ue000{index}\ue001"} for index, message in enumerate(messages)]
    template_only = render_prompt(tokenizer, slots)
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    template_ids = tokenizer(_CONTENT_SLOT.sub("", template_only), add_special_tokens=False)["input_ids"]
    if sum(i in special for i in whole) == sum(i in special for i in template_ids):
        return whole
    ids: list[int] = []
    for position, piece in enumerate(_CONTENT_SLOT.split(template_only)):
        if position % 2 == 0:  # the template's own text, special tokens included
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
        else:  # a message's content: its text, whatever it spells
            content = messages[int(piece)]["content"]
            ids += tokenizer(content, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return ids


def is_conversational(row: dict[str, Any]) -> bool:
    return "messages" in row or isinstance(row.get("prompt"), list)


def prompt_and_answer(row: dict[str, Any]) -> tuple[list[dict], str]:
    """A conversational row as (turns before the last assistant turn, that turn's content)."""
    if "messages" in row:
        turns = row["messages"]
        last = max(i for i, turn in enumerate(turns) if turn["role"] == "assistant")
        return turns[:last], turns[last]["content"]
    return row["prompt"], row["completion"][0]["content"]


def _ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    return list(
        tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
        )
    )


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of a conversation, and for each assistant turn the span from its first content
    token through its end-of-turn token: exactly what an answer teaches.

    Each span starts where the rendering of the turns before it, with the generation prompt, ends;
    that requires a template that renders earlier turns the same way whatever follows them.
    """
    ids = _ids(tokenizer, messages)
    end = tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))
    spans = []
    for index, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        start = len(prefix := _ids(tokenizer, messages[:index], add_generation_prompt=True))
        if ids[:start] != prefix or end not in ids[start:]:
            raise TuneLedgerError(
                "model.chat_template: the template renders earlier turns differently once later turns "
                "follow, so answers cannot be masked; add {% generation %} markers (configs/chat_templates/)"
            )
        spans.append((start, ids.index(end, start) + 1))
    return ids, spans


def assistant_masked(tokenizer, row: dict[str, Any]) -> dict[str, list[int]]:
    """A `messages` row in trl's tokenized form: input ids and `assistant_masks` (1 on answers)."""
    ids, spans = assistant_spans(tokenizer, row["messages"])
    mask = [0] * len(ids)
    for start, stop in spans:
        mask[start:stop] = [1] * (stop - start)
    return {"input_ids": ids, "assistant_masks": mask}


def marks_assistant_turns(tokenizer) -> bool:
    """Whether trl can mask non-assistant tokens of `messages` rows with this template.

    trl needs `{% generation %}` markers, and adds them itself only to templates it knows. Other
    templates (SmolLM2's, for one) train through `assistant_masked` instead: trl's tokenized format
    with an `assistant_masks` column, which trl turns into labels as it does its own masks.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = base_template(tokenizer)
    if has_generation_markers(template):
        return True
    try:
        return get_training_chat_template(tokenizer) is not None
    except ValueError:
        return False
