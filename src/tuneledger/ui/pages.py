"""The page's views: HTML rendered here from Jinja templates (autoescaped), and the fragments its
script loads after the first paint (the slow parts: a package from the DVC cache, a diff)."""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse, JSONResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup

from tuneledger.ui import queries
from tuneledger.ui.config import PageConfig

templates = Environment(
    loader=PackageLoader("tuneledger.ui"), autoescape=select_autoescape(["html"]), trim_blocks=True
)
# CommonMark with tables and no raw HTML: a model card's `<script>` shows as text, and unsafe link
# schemes (javascript:) are refused by markdown-it's own link check.
card_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")
HISTORY_ROWS = 200  # the newest events matching; thousands of rows would take seconds to lay out
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)


def number(value: Any, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def moment(value: str | None) -> str:
    if not value:
        return "—"
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M")  # UTC, as the footer says


def card_html(text: str) -> tuple[str, Markup]:
    """A model card as its YAML header (shown as text) and its body rendered to safe HTML."""
    match = _FRONT_MATTER.match(text)
    header, body = (match.group(1), text[match.end() :]) if match else ("", text)
    return header, Markup(card_markdown.render(body))  # noqa: S704 - html is off: markdown-it escapes


def param(value: Any) -> str:
    """A params.yaml value as YAML would write it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(map(param, value)) + "]"
    return str(value)


def person(value: str | None) -> str:
    """`Name <email>` as the name alone (the page shows the whole in a tooltip)."""
    return (value or "—").split(" <")[0]


templates.filters.update(
    number=number, moment=moment, param=param, person=person, short=lambda v, n=12: (v or "—")[:n]
)


def compile_templates() -> None:
    """Every template compiled once, at start-up rather than on each one's first view."""
    for name in templates.list_templates():
        templates.get_template(name)


def render(name: str, config: PageConfig, status: int = 200, **context: Any) -> HTMLResponse:
    html = templates.get_template(name).render(
        name=config.name, actions=config.actions, repo=Path.cwd().name, **context
    )
    return HTMLResponse(html, status_code=status)


def add_routes(app: FastAPI, config: PageConfig) -> None:
    name = config.name

    @app.get("/", response_class=HTMLResponse)
    def versions_page() -> HTMLResponse:
        rows, total = queries.version_rows(name)
        reg = queries.registry(name)
        holders = {stage: reg.holder(stage) for stage in reg.stages()}
        versions = [r["version"] for r in reg.rows]
        context = {"rows": rows, "total": total, "holders": holders, "versions": versions}
        return render("versions.html", config, nav="versions", page_size=queries.FIRST_PAGE, **context)

    @app.get("/versions/rows")
    def version_rows(
        sort: str = "created", order: str = "desc", q: str = "", stage: str = "", page: int = Query(1, ge=1)
    ) -> JSONResponse:
        rows, total = queries.version_rows(name, sort, order != "asc", q, stage, page)
        html = templates.get_template("rows.html").render(rows=rows, actions=config.actions)
        return JSONResponse({"html": html, "total": total, "page": page, "size": queries.FIRST_PAGE})

    @app.get("/versions/{version}", response_class=HTMLResponse)
    def version_page(version: str) -> HTMLResponse:
        detail = queries.version_detail(name, version)
        reg = queries.registry(name)
        prod = reg.holder(queries.PROD)
        return render("version.html", config, nav="versions", v=detail, stages=reg.stages(), prod=prod)

    @app.get("/versions/{version}/package", response_class=HTMLResponse)
    def package_fragment(version: str) -> HTMLResponse:
        report = queries.package_report(name, version)
        header, body = card_html(report["card"]) if report["state"] == "verified" else ("", "")
        return render("package.html", config, version=version, report=report, card_header=header, card=body)

    @app.get("/compare", response_class=HTMLResponse)
    def compare_page(a: str | None = None, b: str | None = None) -> HTMLResponse:
        default_a, default_b = queries.default_pair(name)
        a, b = a or default_a, b or default_b
        sides = [queries.version_detail(name, v) for v in (a, b) if v]
        versions = [r["version"] for r in queries.registry(name).rows]
        series = [  # both versions' curves on one chart, a colour per version
            {**c, "name": f"{side['row']['version']} {c['name']}", "color": index}
            for index, side in enumerate(sides)
            for c in side["curves"]
        ]
        context = {"a": a, "b": b, "sides": sides, "versions": versions, "series": series}
        return render("compare.html", config, nav="compare", **context)

    @app.get("/compare/diff", response_class=HTMLResponse)
    def diff_fragment(a: str, b: str) -> HTMLResponse:
        report = queries.comparison(name, a, b)
        return render("diff.html", config, a=a, b=b, report=report, command=_diff_command(name, a, b))

    @app.get("/history", response_class=HTMLResponse)
    def history_page(
        stage: str = "", version: str = "", limit: int = Query(HISTORY_ROWS, ge=0)
    ) -> HTMLResponse:
        every = queries.history(name, config.db)
        rows = [
            r
            for r in every
            if (not stage or r["stage"] == stage) and (not version or r["version"] == version)
        ]
        stages = sorted({r["stage"] for r in every if r["stage"]})
        versions = list(dict.fromkeys(r["version"] for r in every if r["version"]))
        shown = rows[:limit] if limit else rows
        filters = {"stage": stage, "version": version, "stages": stages, "versions": versions}
        counts = {"matching": len(rows), "total": len(every)}
        return render("history.html", config, nav="history", rows=shown, **counts, **filters)

    @app.get("/serving", response_class=HTMLResponse)
    def serving_page() -> HTMLResponse:
        serving = queries.serving(config.db)
        charts = _serving_charts(serving["series"]) if serving else {}
        return render("serving.html", config, nav="serving", db=config.db, serving=serving, charts=charts)

    @app.get("/api/versions")
    def versions_json() -> list[dict[str, Any]]:
        """Every version as the table shows it, for scripts."""
        return queries.with_files(list(queries.registry(name).rows))


def _line(rows: list[dict[str, Any]], name: str, field: str, **extra: Any) -> dict[str, Any]:
    """One chart series over time: x in milliseconds since the epoch, as charts.js reads time."""
    points = [[datetime.fromisoformat(r["time"]).timestamp() * 1000, r[field]] for r in rows]
    return {"name": name, "points": [p for p in points if p[1] is not None], **extra}


def _serving_charts(series: dict[str, Any]) -> dict[str, list]:
    shadow, canary = series["shadow"], series["canary"]
    arms = sorted({r["arm"] for r in canary}, reverse=True)  # stable, then canary
    by_arm = {arm: [r for r in canary if r["arm"] == arm] for arm in arms}
    charts = {
        "agreement": [_line(shadow, "exact", "exact_agreement"), _line(shadow, "token", "token_agreement")],
        "pairs": [_line(shadow, "pairs", "pairs"), _line(shadow, "drops", "drops", dashed=True)],
        "requests": [_line(rows, arm, "requests") for arm, rows in by_arm.items()],
        "errors": [_line(rows, arm, "error_rate") for arm, rows in by_arm.items()],
        "latency": [_line(rows, arm, "mean_latency_ms") for arm, rows in by_arm.items()],
    }
    return {key: lines for key, lines in charts.items() if any(line["points"] for line in lines)}


def _diff_command(name: str, a: str, b: str) -> str:
    reg = queries.registry(name)
    return f"tuneledger diff {reg.tag(a)} {reg.tag(b)}"
