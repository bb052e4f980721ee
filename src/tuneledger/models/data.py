"""Datasets: reading a built-in task or a user's JSONL file, and the deterministic splits."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tuneledger.core import hub
from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.params import DataParams
from tuneledger.models import chat, tasks

SPLITS = ("train", "val", "test")
Row = dict[str, Any]  # one of trl's dataset formats (see FIELDS)


def load_source(data: DataParams, seed: int) -> tuple[list[Row], dict[str, Any]]:
    """Rows of `data.source` (`builtin:<task>`, `hub:ORG/NAME` or a JSONL file), and where they came from."""
    record: dict[str, Any] = {"source": data.source}
    if data.source.startswith("builtin:"):
        name = data.source.removeprefix("builtin:")
        if name not in tasks.BUILTIN_TASKS:
            known = ", ".join(f"builtin:{n}" for n in tasks.BUILTIN_TASKS)
            raise TuneLedgerError(f"data.source: unknown built-in task {data.source!r}; known: {known}")
        return tasks.BUILTIN_TASKS[name](data.builtin_rows, seed), record
    if data.source.startswith("hub:"):
        rows, hub_record = hub.load_split(data)
        return check_rows(rows), {**record, **hub_record}
    return read_jsonl(Path(data.source)), record


# trl's dataset formats, by the fields a row has; a file holds one of them.
FIELDS = {
    "text": ("text",),
    "prompt/completion": ("prompt", "completion"),
    "messages": ("messages",),
    "conversational prompt/completion": ("prompt", "completion"),
}
CONVERSATIONAL = ("messages", "conversational prompt/completion")


def row_format(row: dict[str, Any]) -> str:
    if "messages" in row:
        return "messages"
    if "prompt" in row or "completion" in row:
        turns = isinstance(row.get("prompt"), list) or isinstance(row.get("completion"), list)
        return "conversational prompt/completion" if turns else "prompt/completion"
    return "text"


def _check_turns(turns: Any, where: str, field: str) -> list[dict[str, str]]:
    if not isinstance(turns, list) or not turns:
        raise TuneLedgerError(f"{where}: {field} must be a non-empty list of turns")
    checked = []
    for index, turn in enumerate(turns):
        at = f"{where}: {field}[{index}]"
        if not isinstance(turn, dict):
            raise TuneLedgerError(
                f"{at}: expected an object with role and content, got {type(turn).__name__}"
            )
        if turn.get("role") not in chat.ROLES:
            raise TuneLedgerError(
                f"{at}.role: unknown role {turn.get('role')!r} (use {', '.join(chat.ROLES)})"
            )
        if not isinstance(turn.get("content"), str):
            got = type(turn.get("content")).__name__
            raise TuneLedgerError(f"{at}.content: must be a string, got {got}")
        checked.append({"role": turn["role"], "content": turn["content"]})
    return checked


def _check_conversation(row: dict[str, Any], where: str) -> Row:
    if "messages" in row:
        turns = _check_turns(row["messages"], where, "messages")
        if not any(turn["role"] == "assistant" for turn in turns):
            raise TuneLedgerError(f"{where}: messages: no assistant turn to learn from")
        return {"messages": turns}
    prompt = _check_turns(row.get("prompt"), where, "prompt")
    completion = _check_turns(row.get("completion"), where, "completion")
    if [turn["role"] for turn in completion] != ["assistant"]:
        raise TuneLedgerError(f"{where}: completion must be exactly one assistant turn")
    return {"prompt": prompt, "completion": completion}


def _check_plain(row: dict[str, Any], where: str, fields: tuple[str, ...]) -> Row:
    for field in fields:
        if not isinstance(row[field], str):
            raise TuneLedgerError(
                f"{where}: field {field!r} must be a string, got {type(row[field]).__name__}"
            )
    if not any(row[f].strip() for f in fields):
        raise TuneLedgerError(f"{where}: {' and '.join(fields)} empty")
    return {f: row[f] for f in fields}


def check_row(row: Any, where: str, expected: str | None = None) -> Row:
    """One row in one of trl's formats (the file's, once known), reduced to its fields."""
    if not isinstance(row, dict):
        raise TuneLedgerError(f"{where}: expected a JSON object, got {type(row).__name__}")
    found = row_format(row)
    expected = expected or found
    missing = next((f for f in FIELDS[expected] if f not in row), None)
    mixed = f"mixed formats: this row is {found}, earlier rows are {expected}"
    if missing:
        hint = mixed if found != expected else "rows need prompt+completion, messages, or text"
        raise TuneLedgerError(f"{where}: missing field {missing!r} ({hint})")
    if found != expected:
        raise TuneLedgerError(f"{where}: {mixed}")
    if found in CONVERSATIONAL:
        return _check_conversation(row, where)
    return _check_plain(row, where, FIELDS[found])


def check_rows(rows: Iterable[tuple[str, Any]]) -> list[Row]:
    """Check (where, row) pairs; the first row decides the format the others must share."""
    checked: list[Row] = []
    expected: str | None = None
    for where, row in rows:
        checked.append(check_row(row, where, expected))
        expected = expected or row_format(checked[-1])
    return checked


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise TuneLedgerError(f"{where}: not UTF-8 (byte {exc.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise TuneLedgerError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def read_jsonl(path: Path) -> list[Row]:
    """Read rows in one of trl's formats; the first bad line fails as `file:line: what`."""
    if not path.is_file():
        raise TuneLedgerError(f"data.source: {path} not found (a JSONL file, or builtin:reverse-words)")
    rows = check_rows(_jsonl_rows(path))
    if not rows:
        raise TuneLedgerError(
            f"{path}: no rows (the file is empty); add JSONL lines with prompt+completion, messages or text"
        )
    return rows


def is_conversational(rows: list[Row]) -> bool:
    return bool(rows) and chat.is_conversational(rows[0])


def split(rows: list[Row], data: DataParams, seed: int) -> dict[str, list[Row]]:
    """Shuffle with `seed` and cut into train/val/test; each split gets at least one row."""
    if len(rows) < 3:
        raise TuneLedgerError(f"data.source: {len(rows)} rows is too few to split into train, val and test")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(len(rows) * data.test_fraction))
    n_val = max(1, round(len(rows) * data.val_fraction))
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return {"train": [rows[i] for i in train], "val": [rows[i] for i in val], "test": [rows[i] for i in test]}


def write_split(rows: list[Row], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


ORIGIN_FILE = "origin.json"


def write_origin(origin: dict[str, Any], prepared: Path) -> None:
    """Where the rows came from (a hub dataset's resolved commit among it), for metadata."""
    (prepared / ORIGIN_FILE).write_text(json.dumps(origin, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_origin(prepared: Path) -> dict[str, Any]:
    return json.loads((prepared / ORIGIN_FILE).read_text(encoding="utf-8"))


def read_split(prepared: Path, name: str) -> list[Row]:
    """A split written by `prepare` (trusted format, so no per-line diagnostics)."""
    path = prepared / f"{name}.jsonl"
    if not path.is_file():
        raise TuneLedgerError(f"{path} not found; run `dvc repro prepare` first")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
