"""Resolving `model.base` into a pinned snapshot directory: built-in, local directory or hub id."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

from tuneledger.core.errors import TuneLedgerError, first_line
from tuneledger.core.hashing import sha256_bytes
from tuneledger.models import chat, tasks
from tuneledger.package.files import PICKLE_SUFFIXES

SOURCE_FILE = "tuneledger-source.json"
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
BUILTINS = ("tiny-gpt2",)
# A built-in base stands for a pretrained model: the fine-tune's `seed` does not change it, so a
# seed experiment reuses the pinned base instead of pre-training it again.
BUILTIN_SEED = 42


def snapshot(base: str, revision: str | None, chat_template: str | None, out: Path) -> dict:
    """Write the base model named by `model.base` (at `model.revision`) into `out`, with the chat
    template `model.chat_template` names; return its record. Only these three keys decide the base."""
    if base.startswith("builtin:"):
        name = base.removeprefix("builtin:")
        if name not in BUILTINS:
            raise TuneLedgerError(f"model.base: unknown built-in {base!r}; known: builtin:tiny-gpt2")
        build_tiny_gpt2(out, BUILTIN_SEED)
        record = {"id": base, "revision": None, "kind": "builtin"}
    elif Path(base).is_dir():
        _copy_weights_dir(Path(base), out, base)
        record = {"id": base, "revision": revision, "kind": "local"}
    else:
        record = {"id": base, "revision": _download_from_hub(base, revision, out), "kind": "hub"}
    record["chat_template"] = chat.install(out, chat_template)
    (out / SOURCE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def write_build_record(source: dict, base_dir: Path, record: Path) -> None:
    """What a fresh clone compares its own build with: for a base built here, the CPU and kernel
    fingerprint it was built with and a short hash of each tensor; for a copied or downloaded one,
    only its source (its bytes came from elsewhere)."""
    built = source["kind"] == "builtin"
    content = {"source": source["id"], "built_on": None, "tensors": None}
    if built:
        from safetensors.numpy import load_file

        from tuneledger.core import kernels

        tensors = load_file(base_dir / "model.safetensors")
        content["built_on"] = kernels.describe()
        content["tensors"] = {name: sha256_bytes(tensors[name].tobytes())[:16] for name in sorted(tensors)}
    record.write_text(json.dumps(content, indent=1) + "\n")


def read_source(base_dir: Path) -> dict:
    """The source record `snapshot` wrote: id, revision, kind."""
    return json.loads((base_dir / SOURCE_FILE).read_text())


def _copy_weights_dir(src: Path, out: Path, label: str, link: bool = False) -> None:
    """Copy (or hard-link) a model directory, keeping safetensors weights and refusing pickle-only ones."""
    files = [p for p in sorted(src.rglob("*")) if p.is_file() and not _is_hidden(p.relative_to(src))]
    if not any(p.suffix == ".safetensors" for p in files):
        pickles = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
        hint = f" (found pickle weights {pickles[:3]}; convert them to safetensors)" if pickles else ""
        raise TuneLedgerError(f"model.base: no *.safetensors weights in {label}{hint}")
    if not (src / "config.json").is_file():
        raise TuneLedgerError(
            f"model.base: {label} has no config.json; is it a Hugging Face model directory?"
        )
    for path in files:
        if path.suffix in PICKLE_SUFFIXES:
            continue  # never carry pickles forward: they can run code when loaded
        target = out / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not (link and _hard_link(path, target)):
            shutil.copyfile(path, target)


def _hard_link(source: Path, target: Path) -> bool:
    """Share the bytes of a file in the Hugging Face cache instead of copying them (False: not possible,
    e.g. across filesystems). Only for the hub cache, never for a user's own directory: DVC may make a
    linked file read-only, and an edit of the source in place would then change the snapshot too."""
    try:
        os.link(source.resolve(), target)
        return True
    except OSError:
        return False


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _download_from_hub(base: str, revision: str | None, out: Path) -> str:
    """Download `model.base` at `model.revision` through the Hugging Face cache; return the commit."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = snapshot_download(repo_id=base, revision=revision, allow_patterns=HUB_PATTERNS)
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        reason = first_line(exc)
        raise TuneLedgerError(
            f"model.base: base model {base!r} not found: not a local directory, and the hub "
            f"could not provide it ({reason}); check the id, model.revision, network or HF_HUB_OFFLINE"
        ) from None
    _copy_weights_dir(Path(folder), out, base, link=True)  # one copy on disk: the hub cache's
    return Path(folder).name  # snapshots/<commit>: the exact revision that was resolved


# --- the built-in tiny GPT-2 -------------------------------------------------------------
# Small enough to pre-train in seconds on a laptop CPU, big enough to learn the built-in task.
# With 2 heads the copy rule was learnt for only some seeds in 800 steps; with 4, for all 8 tried.
TINY = {"n_layer": 2, "n_head": 4, "n_embd": 128, "n_positions": 128, "vocab_size": 2048}
BUILD_THREADS = 2  # fixed, so the build is byte-identical whatever the machine's core count
PRETRAIN = {
    "steps": 800,
    "batch_size": 16,
    "lr": 2e-3,
    "max_length": 64,
    "task_share": 0.9,
    "chat_share": 0.3,
}
EOS = "<|endoftext|>"
# ChatML's markers are in the vocabulary (and seen in pre-training) so that `model.chat_template:
# chatml` works on the built-in base as it does on real instruct bases; the base itself ships no
# template, like a pre-trained (not instruct) model.
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]


def _pretraining_text(seed: int) -> tuple[list[str], list[str], list[list[dict]]]:
    """Task-format lines and chats (the `copy` rule), and English prose (CPython's pydoc topics, offline)."""
    import pydoc_data.topics

    prose = [
        line.strip()
        for _, text in sorted(pydoc_data.topics.topics.items())
        for line in text.splitlines()
        if line.strip()
    ]
    rows = tasks.generate("copy", 5000, seed)
    task = [row["prompt"] + row["completion"] for row in rows]
    chats = [tasks.as_conversation(row)["messages"] for row in rows]
    return task, prose, chats


def _pretraining_line(rng: random.Random, task: list[str], chats: list[str], prose: list[str]) -> str:
    if rng.random() >= PRETRAIN["task_share"]:
        return rng.choice(prose)
    return rng.choice(chats) if rng.random() < PRETRAIN["chat_share"] else rng.choice(task)


def build_tiny_gpt2(out: Path, seed: int) -> None:
    """Train a byte-level BPE tokenizer and briefly pre-train a tiny GPT-2; byte-identical per seed."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        PreTrainedTokenizerFast,
        get_cosine_schedule_with_warmup,
        set_seed,
    )

    from tuneledger.core.kernels import pin_cpu_threads
    from tuneledger.core.progress import progress_bar

    pin_cpu_threads(BUILD_THREADS)
    task, prose, chats = _pretraining_text(seed)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        task + prose, vocab_size=TINY["vocab_size"], special_tokens=[EOS, *CHAT_TOKENS], show_progress=False
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        additional_special_tokens=CHAT_TOKENS,
    )
    chatml = (chat.BUILTIN_DIR / "chatml.jinja").read_text(encoding="utf-8")
    chats = [tokenizer.apply_chat_template(c, chat_template=chatml, tokenize=False) for c in chats]

    set_seed(seed)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config = GPT2Config(**TINY, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN["lr"], fused=True)
    schedule = get_cosine_schedule_with_warmup(optimizer, PRETRAIN["steps"] // 10, PRETRAIN["steps"])
    rng = random.Random(seed)
    model.train()
    with progress_bar("pre-training builtin:tiny-gpt2", total=PRETRAIN["steps"]) as advance:
        for _ in range(PRETRAIN["steps"]):
            batch = [_pretraining_line(rng, task, chats, prose) + EOS for _ in range(PRETRAIN["batch_size"])]
            enc = tokenizer(
                batch, return_tensors="pt", padding=True, truncation=True, max_length=PRETRAIN["max_length"]
            )
            labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
            loss = model(**enc, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            advance(loss=loss.item())
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
