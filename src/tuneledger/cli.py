"""The `tuneledger` command: a thin layer that parses arguments and calls the Python API."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tuneledger.errors import friendly_errors
from tuneledger.layout import EXPORT_DIR
from tuneledger.progress import quiet_libraries

app = typer.Typer(
    help="Versioned, reproducible and safely deployable LoRA fine-tuning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Tables stay readable when piped: a log file has no terminal width to fit.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


@app.callback()
def _global(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    quiet_libraries()
    if debug:
        os.environ["TUNELEDGER_DEBUG"] = "1"


def _print_json(value) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


@app.command()
@friendly_errors
def verify(
    package: Annotated[Path, typer.Argument(help="Package directory.")] = EXPORT_DIR,
    manifest: Annotated[
        Path | None, typer.Option(help="Manifest to check against (default: <DIR>.manifest.json).")
    ] = None,
) -> None:
    """Check every file of a package against its manifest (SHA-256); exit 1 on any difference."""
    from tuneledger.package.verify import verify as verify_package

    checked = verify_package(package, manifest)
    out.print(
        f"ok: {package} matches its manifest ({len(checked.files)} files), content id {checked.content_id}"
    )


@app.command()
@friendly_errors
def generate(
    package: Annotated[Path, typer.Argument(help="Package directory.")],
    prompt: Annotated[str, typer.Argument(help="Prompt text.")],
    max_new_tokens: Annotated[int | None, typer.Option(help="Default from signature.json.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 for greedy decoding.")] = None,
    base: Annotated[
        Path | None, typer.Option(help="Base model directory (verified against metadata).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="e.g. cpu or cuda:0 (default: best available).")] = None,
) -> None:
    """Answer one prompt with a verified package, within its signature."""
    from tuneledger.predict import Predictor

    predictor = Predictor.open(package, base=base, device=device)
    params = {"max_new_tokens": max_new_tokens, "temperature": temperature}
    typer.echo(predictor.predict(prompt, {k: v for k, v in params.items() if v is not None}))


@app.command()
@friendly_errors
def diff(
    a: Annotated[str, typer.Argument(help="Package directory or git revision.")],
    b: Annotated[str, typer.Argument(help="Package directory or git revision.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    all_keys: Annotated[bool, typer.Option("--all", help="Show equal values too.")] = False,
) -> None:
    """Compare two versions: params, LoRA shape read from the weights, metrics, content ids."""
    from tuneledger.package.diff import compare

    result = compare(a, b)
    if as_json:
        _print_json(result)
        return
    table = Table(title=f"{a}  vs  {b}")
    for column in ("", a, b):
        table.add_column(column, overflow="fold")
    headline = [k for k in result["keys"] if k.startswith(("content_id", "adapter.", "metrics."))]
    shown = result["keys"] if all_keys else list(dict.fromkeys([*headline, *result["differing"]]))
    for key in shown:
        mark = "[bold yellow]≠[/] " if key in result["differing"] else "  "
        table.add_row(mark + key, str(result["a"].get(key)), str(result["b"].get(key)))
    out.print(table)


def main() -> None:
    app()
