"""The user-facing failure type, and the one place that turns failures into a one-line message."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class TuneLedgerError(Exception):
    """A failure the user can act on: what went wrong, where, and what to do next."""

    exit_code = 1


def broken_json(where: object, exc: json.JSONDecodeError, what: str) -> TuneLedgerError:
    """`where:line:column: what: reason` for JSON that does not parse (raise it `from None`)."""
    return TuneLedgerError(f"{where}:{exc.lineno}:{exc.colno}: {what}: {exc.msg}")


def first_line(exc: BaseException) -> str:
    """An exception's first line, or its type's name when it says nothing."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def debug_enabled(argv: list[str] | None = None) -> bool:
    """`--debug` on the command line or TUNELEDGER_DEBUG=1 shows full tracebacks."""
    argv = sys.argv if argv is None else argv
    return "--debug" in argv or os.environ.get("TUNELEDGER_DEBUG", "") not in ("", "0", "false")


def report_and_exit(exc: BaseException) -> None:
    """Print an exception as one red line on stderr and exit non-zero (re-raise when debugging)."""
    if debug_enabled():
        raise exc
    if isinstance(exc, TuneLedgerError):
        message, code = str(exc), exc.exit_code
    elif isinstance(exc, KeyboardInterrupt):
        message, code = "interrupted; outputs already published are intact", 130
    else:
        message = f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
        code = 1
    from rich.console import Console
    from rich.markup import escape

    from tuneledger.core.secrets import redact

    message = redact(message)  # error text quotes paths, URLs and arguments, credentials included
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}")
    sys.exit(code)


def friendly_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator for entry points: any failure becomes one line and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SystemExit:
            raise
        except BaseException as exc:  # noqa: BLE001 - this is the single reporting boundary
            report_and_exit(exc)

    return wrapper
