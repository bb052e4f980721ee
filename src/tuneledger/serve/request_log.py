"""The request log's side of a request: handlers `note()` what they learn (version, arm, prompt,
output, error), and the outermost middleware writes one row with the status the client really got
(and the metrics), or counts a request refused before any route."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneledger.serve import log

LOG_SCOPE_KEY = "tuneledger.log"  # per-request facts handlers leave for the request log
OPEN_PATHS = ("/health",)  # answered without a key and not logged: load balancers probe it


def note(scope: Scope, **facts: Any) -> None:
    """Record facts about this request for its log row (version, prompt, output, error...)."""
    scope.setdefault(LOG_SCOPE_KEY, {}).update(facts)


class RequestLog:
    """Outermost: times every request and accounts for it with the status it really got (a log row
    and metrics when it reached a route; a refusal count when it did not)."""

    def __init__(self, app: ASGIApp, server):
        self.app, self.server = app, server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), None
        facts: dict[str, Any] = scope.setdefault(LOG_SCOPE_KEY, {})

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        except Exception as exc:  # the 500 itself is rendered by the app's exception handler
            facts.setdefault("error", log.short_error(exc))
            status = status or 500
            raise
        finally:
            self._record(scope, facts, facts.get("status") or status or 499, started)

    def _record(self, scope: Scope, facts: dict[str, Any], status: int, started: float) -> None:
        if "endpoint" not in scope and 400 <= status < 500:  # refused before any route: counted only
            self.server.writer.count_refusal(status, log.now())
            self.server.metrics.refused.labels(str(status)).inc()
            return
        seconds = time.perf_counter() - started
        route = getattr(scope.get("route"), "path", scope["path"])  # the template: bounded label values
        self.server.metrics.answered(
            route,
            status,
            facts.get("version"),
            facts.get("content_id"),
            seconds,
            facts.get("completion_tokens"),
        )
        self.server.log_request(
            {
                "time": log.now(),
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "request_hash": facts.get("request_hash"),
                "version": facts.get("version"),
                "content_id": facts.get("content_id"),
                "latency_ms": seconds * 1000,
                "finish_reason": facts.get("finish_reason"),
                "error": facts.get("error"),
                "arm": facts.get("arm"),
                "completion_tokens": facts.get("completion_tokens"),
            },
            facts.get("prompt"),
            facts.get("output"),
        )
