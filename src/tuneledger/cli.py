"""The `tuneledger` command: a thin layer that parses arguments, makes one call into the Python API
(`tuneledger.api`) and prints the result."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tuneledger import api, ui
from tuneledger.core.errors import friendly_errors
from tuneledger.core.layout import EXPORT_DIR
from tuneledger.core.progress import quiet_libraries
from tuneledger.registry.artifacts import DEFAULT_NAME

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


def command(name: str | None = None):
    """Register a command. Whatever it raises is reported as one line `error: ...` with a non-zero
    exit; the traceback only with --debug."""

    def add(function):
        return app.command(name)(friendly_errors(function))

    return add


def _print_json(value) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


@command()
def verify(
    package: Annotated[Path, typer.Argument(help="Package directory.")] = EXPORT_DIR,
    manifest: Annotated[
        Path | None, typer.Option(help="Manifest to check against (default: <DIR>.manifest.json).")
    ] = None,
) -> None:
    """Check every file of a package against its manifest (SHA-256); exit 1 on any difference."""
    checked = api.verify_package(package, manifest)
    out.print(
        f"ok: {package} matches its manifest ({len(checked.files)} files), content id {checked.content_id}"
    )


@command()
def generate(
    package: Annotated[Path, typer.Argument(help="Package directory.")],
    prompt: Annotated[str | None, typer.Argument(help="Prompt text (or use --messages).")] = None,
    messages: Annotated[
        str | None,
        typer.Option(
            help="A chat package's conversation: a JSON file holding a list of {role, content} turns "
            "(or an object with `messages`), or - for stdin. The chat template renders it."
        ),
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Default from signature.json.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 for greedy decoding.")] = None,
    base: Annotated[
        Path | None, typer.Option(help="Base model directory (verified against metadata).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="e.g. cpu or cuda:0 (default: best available).")] = None,
) -> None:
    """Answer one prompt (or one conversation) with a verified package, within its signature."""
    typer.echo(
        api.generate(
            package,
            prompt,
            messages,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            base=base,
            device=device,
        )
    )


@command()
def diff(
    a: Annotated[str, typer.Argument(help="Package directory or git revision.")],
    b: Annotated[str, typer.Argument(help="Package directory or git revision.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    all_keys: Annotated[bool, typer.Option("--all", help="Show equal values too.")] = False,
) -> None:
    """Compare two versions: params, LoRA shape read from the weights, metrics, benchmarks, content ids."""
    result = api.diff(a, b)
    if as_json:
        _print_json(result)
        return
    table = Table(title=f"{a}  vs  {b}")
    for column in ("", a, b):
        table.add_column(column, overflow="fold")
    headline = [
        k for k in result["keys"] if k.startswith(("content_id", "adapter.", "metrics.", "benchmarks."))
    ]
    shown = result["keys"] if all_keys else list(dict.fromkeys([*headline, *result["differing"]]))
    for key in shown:
        mark = "[bold yellow]≠[/] " if key in result["differing"] else "  "
        table.add_row(mark + key, str(result["a"].get(key)), str(result["b"].get(key)))
    out.print(table)


def main() -> None:
    app()


# --- registry -------------------------------------------------------------------------------
NameOption = Annotated[str, typer.Option("--name", help="Artifact declared in dvc.yaml `artifacts:`.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
# A table of thousands of rows is unreadable and takes rich seconds to lay out; --json has every row.
LimitOption = Annotated[
    int, typer.Option("--limit", min=0, help="Rows in the table (0: all); --json has all.")
]
TABLE_ROWS = 50


def _table(title: str, rows: list[dict], columns: list[str], hidden: str | None = None) -> None:
    table = Table(title=title, caption=hidden)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    out.print(table)


def _hidden(shown: int, total: int, noun: str) -> str | None:
    if shown == total:
        return None
    return f"{total - shown} older {noun} not shown: --limit 0 for all, --json for scripts"


@command()
def register(
    name: NameOption = DEFAULT_NAME,
    bump: Annotated[str, typer.Option(help="major, minor or patch.")] = "minor",
    version: Annotated[str | None, typer.Option(help="An explicit version, e.g. v1.2.0.")] = None,
    push: Annotated[bool, typer.Option("--push", help="dvc push before checking the remote.")] = False,
) -> None:
    """Register HEAD's export as a new version (clean workspace, verified, healthy, pushed)."""
    result = api.register(name, bump=bump, version=version, push_first=push)
    out.print(
        f"registered {result['name']}@{result['version']} (commit {result['commit'][:12]}, "
        f"content id {result['content_id']})"
    )


@command()
def promote(
    version: Annotated[str, typer.Argument(help="Version to promote, e.g. v1.3.0.")],
    stage: Annotated[str, typer.Option(help="A stage declared in .gto.")],
    name: NameOption = DEFAULT_NAME,
    force: Annotated[
        bool, typer.Option("--force", help="Promote despite failed checks (needs --reason).")
    ] = False,
    reason: Annotated[str | None, typer.Option(help="Why; recorded in the registry.")] = None,
    require_shadow_agreement: Annotated[
        float | None, typer.Option(help="Also require this exact agreement of VERSION as a shadow (0–1).")
    ] = None,
    require_canary: Annotated[
        bool,
        typer.Option(
            "--require-canary",
            help="Also require that VERSION, as `serve --canary`'s arm, did no worse than the stable arm.",
        ),
    ] = False,
    since: Annotated[
        str | None, typer.Option(help="Read the serving log from this time on (90m, 24h, 2025-01-31T12:00).")
    ] = None,
    db: Annotated[
        Path | None, typer.Option(help="Serving log holding the shadow pairs and canary arms.")
    ] = None,
) -> None:
    """Run the gate, then point STAGE at VERSION."""
    result = api.promote(
        version,
        stage,
        name=name,
        force=force,
        reason=reason,
        require_shadow_agreement=require_shadow_agreement,
        db=db,
        require_canary=require_canary,
        since=since,
    )
    _table(
        f"gate for {name} {version} → {stage}",
        [
            {"check": c.name, "result": "pass" if c.ok else "FAIL", "detail": c.detail}
            for c in result["checks"]
        ],
        ["check", "result", "detail"],
    )
    forced = " (forced)" if result["forced"] else ""
    out.print(f"{stage}: {result['from'] or '(none)'} → {version}{forced}")


@command()
def rollback(
    stage: Annotated[str, typer.Option(help="Stage to move back.")],
    name: NameOption = DEFAULT_NAME,
    to: Annotated[
        str | None, typer.Option(help="Version to return to (default: the previous holder).")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why; recorded in the registry.")] = None,
) -> None:
    """Give STAGE back to its previous version (a new assignment tag, never an unassignment)."""
    result = api.rollback(stage, name=name, to=to, reason=reason)
    out.print(f"{stage}: {result['from']} → {result['to']} in {result['seconds']:.2f}s")


@command()
def show(
    name: Annotated[str | None, typer.Option("--name")] = None,
    as_json: JsonOption = False,
    limit: LimitOption = TABLE_ROWS,
) -> None:
    """Registered versions, the stages they hold, content ids and key metrics (oldest first)."""
    every = api.show(name)
    if as_json:
        _print_json(every)
        return
    # The newest `limit` versions, and every older one that still holds a stage.
    newest = every[-limit:] if limit else every
    rows = [row for row in every[: len(every) - len(newest)] if row["stages"]] + newest
    for row in rows:
        row["stages"] = ", ".join(row["stages"])
        row["commit"] = row["commit"][:12]
        row["exact match"] = row["metrics"].get("exact_match")
        row["loss"] = row["metrics"].get("loss")
    _table(
        "registry",
        rows,
        ["artifact", "version", "stages", "commit", "created", "content_id", "exact match", "loss"],
        _hidden(len(rows), len(every), "versions"),
    )


@command()
def history(
    name: Annotated[str | None, typer.Option("--name")] = None,
    db: Annotated[
        Path | None, typer.Option(help="Also show when `serve` swapped versions (default log if present).")
    ] = None,
    as_json: JsonOption = False,
    limit: LimitOption = TABLE_ROWS,
) -> None:
    """Who registered, promoted and rolled back what, when and why (newest first)."""
    every = api.history(name, db)
    if as_json:
        _print_json(every)
        return
    rows = every[:limit] if limit else every
    columns = ["time", "artifact", "event", "version", "stage", "from", "by", "reason"]
    _table("registry history", rows, columns, _hidden(len(rows), len(every), "events"))


@command()
def fetch(
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Directory to publish the verified package in.")
    ],
    stage: Annotated[str | None, typer.Option(help="Fetch the version this stage points at.")] = None,
    version: Annotated[str | None, typer.Option(help="Fetch this version.")] = None,
    name: NameOption = DEFAULT_NAME,
    with_base: Annotated[
        bool, typer.Option("--with-base", help="Also fetch the base model into OUTPUT.base/.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace OUTPUT (and OUTPUT.base) even if they are not from a previous fetch."
        ),
    ] = False,
) -> None:
    """Resolve through the registry, download through DVC, verify against the committed manifest."""
    resolved = api.fetch(output, name=name, version=version, stage=stage, with_base=with_base, force=force)
    out.print(
        f"fetched {name}@{resolved.version} → {output} (verified {len(resolved.manifest.files)} files, "
        f"content id {resolved.manifest.content_id})"
    )


@command()
def reproduce(
    version: Annotated[str, typer.Argument(help="Registered version to rebuild.")],
    name: NameOption = DEFAULT_NAME,
    as_json: JsonOption = False,
) -> None:
    """Rebuild a version from its commit in a temporary worktree and compare content ids."""
    result = api.reproduce(version, name)
    if as_json:
        explanation = None if result.identical else result.explanation()
        _print_json(vars(result) | {"identical": result.identical, "explanation": explanation})
    elif result.identical:
        out.print(f"identical: {name}@{version} rebuilt to content id {result.rebuilt}")
    else:
        out.print(f"differs: {name}@{version} expected {result.expected}, rebuilt {result.rebuilt}")
        out.print(f"  why: {result.explanation()}")
        for path in result.differing:
            out.print(f"  {path}")
    if not result.identical:
        raise typer.Exit(1)


# --- serving --------------------------------------------------------------------------------
def _default(field: str) -> str:
    """A serve option's help suffix, from ServeConfig: the one place the defaults are written."""
    return f" (default {getattr(api.SERVE_DEFAULTS, field)})"


@command()
def serve(
    stage: Annotated[
        str | None, typer.Option(help="Stage the bare name follows." + _default("stage"))
    ] = None,
    canary: Annotated[
        str | None,
        typer.Option(help="STAGE:PERCENT: that share of the followed name's requests, sticky per user."),
    ] = None,
    shadow: Annotated[str | None, typer.Option(help="Stage whose version shadows every request.")] = None,
    name: Annotated[str | None, typer.Option(help="Artifact name." + _default("name"))] = None,
    max_versions: Annotated[
        int | None, typer.Option(help="Versions resident on one base, LRU." + _default("max_versions"))
    ] = None,
    sync_seconds: Annotated[
        float | None,
        typer.Option(help="A stage move is live within this; 0: on reload only." + _default("sync_seconds")),
    ] = None,
    batch_window_ms: Annotated[
        float | None,
        typer.Option(help="Requests this close together generate together." + _default("batch_window_ms")),
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option(help="Requests in one batch." + _default("max_batch"))
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Interface to bind, loopback by default." + _default("host"))
    ] = None,
    port: Annotated[int | None, typer.Option(help=_default("port"))] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="TUNELEDGER_API_KEY",
            show_envvar=True,
            help="Bearer token required on every route but /health. Prefer the environment variable: "
            "a command line is visible to other users of the machine.",
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback --host without an API key.")
    ] = False,
    ssl_certfile: Annotated[
        Path | None, typer.Option(help="Serve TLS with this certificate (PEM; with --ssl-keyfile).")
    ] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="The TLS certificate's private key (PEM).")] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="Also accept this Host header (repeatable; * accepts any).", show_default=False),
    ] = None,
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(help="Let web pages from this origin call the API (repeatable).", show_default=False),
    ] = None,
    db: Annotated[Path | None, typer.Option(help="SQLite serving log." + _default("db"))] = None,
    cache: Annotated[
        Path | None, typer.Option(help="Where fetched versions are kept." + _default("cache"))
    ] = None,
    max_body_bytes: Annotated[
        int | None, typer.Option(help="Larger request bodies get 413." + _default("max_body"))
    ] = None,
    max_queue: Annotated[
        int | None,
        typer.Option(
            help="Requests that may wait beyond a batch; then 503 with Retry-After." + _default("max_queue")
        ),
    ] = None,
    request_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds from admission to the answer; then 504." + _default("request_timeout")),
    ] = None,
    body_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds to receive a request body; then 408." + _default("body_timeout")),
    ] = None,
    header_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds to receive a request's headers; then it closes." + _default("header_timeout")
        ),
    ] = None,
    max_connections: Annotated[
        int | None, typer.Option(help="Open connections before 503 at once." + _default("max_connections"))
    ] = None,
    max_connections_per_client: Annotated[
        int | None,
        typer.Option(
            help="Open connections one client address may hold; then 429."
            + _default("max_connections_per_client")
        ),
    ] = None,
    shadow_queue: Annotated[
        int | None, typer.Option(help="Pending shadow requests before drops." + _default("shadow_queue"))
    ] = None,
    log_prompts: Annotated[
        bool,
        typer.Option(
            "--log-prompts", help="Store raw prompts and outputs in the log (default: SHA-256 and length)."
        ),
    ] = False,
    log_retention_days: Annotated[
        float | None,
        typer.Option(
            help="Delete request and shadow rows older than this; 0 keeps them."
            + _default("log_retention_days")
        ),
    ] = None,
    log_max_mb: Annotated[
        float | None,
        typer.Option(
            help="Delete the oldest request and shadow rows beyond this size; 0: no cap."
            + _default("log_max_mb")
        ),
    ] = None,
    log_queue: Annotated[
        int | None,
        typer.Option(help="Log rows held in memory before new ones are dropped." + _default("log_queue")),
    ] = None,
) -> None:
    """Serve the registry's versions over HTTP: the `model` field picks one (NAME, NAME@STAGE,
    NAME@vX.Y.Z, a content-id prefix); stage moves are followed, POST /admin/reload or SIGHUP at once."""
    api.serve(
        name=name,
        stage=stage,
        canary=canary,
        shadow=shadow,
        cache=cache,
        shadow_queue=shadow_queue,
        max_versions=max_versions,
        sync_seconds=sync_seconds,
        batch_window_ms=batch_window_ms,
        max_batch=max_batch,
        host=host,
        port=port,
        api_key=api_key,
        insecure=insecure,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        allowed_hosts=allowed_host,
        allow_origins=allow_origin,
        max_body=max_body_bytes,
        max_queue=max_queue,
        request_timeout=request_timeout,
        body_timeout=body_timeout,
        header_timeout=header_timeout,
        max_connections=max_connections,
        max_connections_per_client=max_connections_per_client,
        db=db,
        log_prompts=log_prompts,
        log_queue=log_queue,
        log_retention_days=log_retention_days,
        log_max_mb=log_max_mb,
    )


PAGE_DEFAULTS = ui.PageConfig()


@command("ui")
def registry_page(
    host: Annotated[
        str, typer.Option(help="Interface to bind; another than loopback needs a key or --insecure.")
    ] = PAGE_DEFAULTS.host,
    port: Annotated[int, typer.Option(help="Port of the page.")] = PAGE_DEFAULTS.port,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="TUNELEDGER_API_KEY",
            show_envvar=True,
            help="Show promote and roll back, and require this key on each of them (read-only without).",
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback --host without an API key.")
    ] = False,
    name: NameOption = DEFAULT_NAME,
    db: Annotated[Path, typer.Option(help="Serving log charted under Serving.")] = PAGE_DEFAULTS.db,
) -> None:
    """A local page of the registry: versions, one version, compare, history, serving. Read-only
    unless started with an API key; offline."""
    ui.serve(
        ui.PageConfig(name=name, host=host, port=port, api_key=api_key or None, insecure=insecure, db=db)
    )


@command("canary-report")
def canary_report(
    db: Annotated[Path | None, typer.Option(help="SQLite serving log.")] = None,
    version: Annotated[
        str | None, typer.Option(help="Only canary requests answered by this version.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only requests from this time on: a duration back (90m, 24h, 7d) or 2025-01-31T12:00."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """The canary and stable arms of `serve --canary` side by side: requests, errors, latency, tokens."""
    report = api.canary_report(db, since, version)
    if as_json:
        _print_json(report)
        return
    rows = []
    for arm, figures in report["arms"].items():
        latency = figures["latency_ms"]
        rows.append(
            {
                "arm": arm,
                "versions": ", ".join(figures["versions"]) or "-",
                "requests": figures["requests"],
                "errors": figures["errors"],
                "error rate": _share(figures["error_rate"]),
                "p50 ms": _ms(latency["p50"]),
                "p95 ms": _ms(latency["p95"]),
                "p99 ms": _ms(latency["p99"]),
                "tokens": figures["output_tokens"],
            }
        )
    _table("canary report", rows, list(rows[0]))


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


@command("shadow-report")
def shadow_report(
    db: Annotated[Path | None, typer.Option(help="SQLite serving log.")] = None,
    version: Annotated[str | None, typer.Option(help="Only pairs of this shadow version.")] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only pairs from this time on: a duration back (90m, 24h, 7d) or 2025-01-31T12:00."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Agreement of the shadow with prod, latency of both sides, errors and drops."""
    report = api.shadow_report(db, version, since)
    if as_json:
        _print_json(report)
        return
    rows = [{"measure": k, "value": v} for k, v in report.items() if not isinstance(v, dict)]
    for side in ("prod_latency_ms", "shadow_latency_ms"):
        rows += [{"measure": f"{side} {q}", "value": v} for q, v in report[side].items()]
    _table("shadow report", rows, ["measure", "value"])
