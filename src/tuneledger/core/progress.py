"""Progress for long work: a live bar on a terminal, a line every tenth of the way in logs."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True, highlight=False, soft_wrap=True)


def _fields(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in values.items())


@contextlib.contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[..., None]]:
    """Yield `advance(**values)`, to be called once per unit of work."""
    if console.is_terminal:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
        )
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(description, total=total, info="")
            yield lambda **values: bar.update(task, advance=1, info=_fields(values))
        return
    done, start, step = 0, time.monotonic(), max(1, total // 10)
    last = start

    def advance(**values: float) -> None:
        nonlocal done, last
        done += 1
        now = time.monotonic()
        # In logs: a line per tenth of the work, at most one every 2 s, and always the last one.
        if done == total or (done % step == 0 and now - last >= 2.0):
            last = now
            console.print(f"{description}: {done}/{total} {_fields(values)} ({now - start:.1f}s)")

    yield advance


def say(message: str) -> None:
    """A status line for the user (stderr, so stdout stays machine-readable)."""
    console.print(message)


def quiet_libraries() -> None:
    """Silence library chatter (deprecation notices, dvclive info) in stage and CLI output."""
    import logging
    import warnings

    logging.getLogger("dvclive").setLevel(logging.WARNING)
    # bitsandbytes looks for optional CPU kernels on import and logs their absence as an error.
    logging.getLogger("bitsandbytes").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices inside libraries
    # peft sets fan_in_fan_out for GPT-2's Conv1D layers itself, as it should, and warns that it did.
    warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
