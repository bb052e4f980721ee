"""Datasets: reading a built-in task or a user's JSONL file, and the deterministic splits."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tuneledger import tasks
from tuneledger.errors import TuneLedgerError
from tuneledger.params import DataParams

SPLITS = ("train", "val", "test")
Row = dict[str, str]


def load_source(data: DataParams, seed: int) -> list[Row]:
    """Rows of `data.source`: `builtin:<task>` or a path to a JSONL file."""
    if data.source.startswith("builtin:"):
        name = data.source.removeprefix("builtin:")
        if name not in tasks.BUILTIN_TASKS:
            known = ", ".join(f"builtin:{n}" for n in tasks.BUILTIN_TASKS)
            raise TuneLedgerError(f"data.source: unknown built-in task {data.source!r}; known: {known}")
        return tasks.generate(tasks.BUILTIN_TASKS[name], data.builtin_rows, seed)
    return read_jsonl(Path(data.source))


def _parse_row(line: str, where: str, expected: tuple[str, ...] | None) -> Row:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TuneLedgerError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise TuneLedgerError(f"{where}: expected a JSON object, got {type(row).__name__}")
    fields = expected or (("prompt", "completion") if "prompt" in row or "completion" in row else ("text",))
    for field in fields:
        if field not in row:
            raise TuneLedgerError(f"{where}: missing field {field!r} (rows need prompt+completion, or text)")
        if not isinstance(row[field], str):
            raise TuneLedgerError(
                f"{where}: field {field!r} must be a string, got {type(row[field]).__name__}"
            )
    if not any(row[f].strip() for f in fields):
        raise TuneLedgerError(f"{where}: {' and '.join(fields)} empty")
    return {f: row[f] for f in fields}


def read_jsonl(path: Path) -> list[Row]:
    """Read `prompt`/`completion` or `text` rows; the first bad line fails as `file:line: what`."""
    if not path.is_file():
        raise TuneLedgerError(f"data.source: {path} not found (a JSONL file, or builtin:reverse-words)")
    rows: list[Row] = []
    fields: tuple[str, ...] | None = None
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise TuneLedgerError(f"{where}: not UTF-8 (byte {exc.start + 1} of the line)") from None
            if not line.strip():
                continue
            row = _parse_row(line, where, fields)
            fields = fields or tuple(row)
            rows.append(row)
    if not rows:
        raise TuneLedgerError(
            f"{path}: no rows (the file is empty); add JSONL lines with prompt+completion or text"
        )
    return rows


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


def read_split(prepared: Path, name: str) -> list[Row]:
    """A split written by `prepare` (trusted format, so no per-line diagnostics)."""
    path = prepared / f"{name}.jsonl"
    if not path.is_file():
        raise TuneLedgerError(f"{path} not found; run `dvc repro prepare` first")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
