"""`GET /metrics` in Prometheus' text format (prometheus_client), labelled by the version and content
id that answered, so a dashboard tells versions apart as the registry does."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

ANSWERED_BY = ["version", "content_id"]
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServerMetrics:
    """The server's counters, gauges and histograms, in a registry of its own (not the process-wide
    default, so two servers in one process never mix their figures)."""

    def __init__(self, queue_depth: Callable[[], int], resident: Callable[[], list[tuple]]):
        self.resident_now = resident  # read at each scrape: a swap or a shadow restart shows at once
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tuneledger_requests",
            "Requests that reached a route, by route, status and the version that answered",
            ["route", "status", *ANSWERED_BY],
            registry=self.registry,
        )
        self.errors = Counter(
            "tuneledger_request_errors",
            "Requests that failed on the server's side (status 5xx)",
            ["route", *ANSWERED_BY],
            registry=self.registry,
        )
        self.refused = Counter(
            "tuneledger_refused_requests",
            "Requests refused before any route (key, host, origin, media type, unknown path)",
            ["status"],
            registry=self.registry,
        )
        self.output_tokens = Counter(
            "tuneledger_output_tokens", "Tokens generated", ANSWERED_BY, registry=self.registry
        )
        self.latency = Histogram(
            "tuneledger_request_latency_seconds",
            "Time from the request's arrival to its last byte",
            ["route", *ANSWERED_BY],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "tuneledger_batch_size",
            "Requests generated together in one model call",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        queue = Gauge(
            "tuneledger_queue_depth",
            "Requests admitted to the model (generating or waiting)",
            registry=self.registry,
        )
        queue.set_function(queue_depth)
        self.resident = Gauge(
            "tuneledger_resident_version",
            "1 for each version loaded to answer (prod) or to shadow it",
            ["role", "stage", *ANSWERED_BY],
            registry=self.registry,
        )

    def answered(
        self, route: str, status: int, version, content_id, seconds: float, tokens: int | None
    ) -> None:
        answered_by = (version or "", content_id or "")
        self.requests.labels(route, str(status), *answered_by).inc()
        self.latency.labels(route, *answered_by).observe(seconds)
        if status >= 500:
            self.errors.labels(route, *answered_by).inc()
        if tokens:
            self.output_tokens.labels(*answered_by).inc(tokens)

    def render(self) -> tuple[bytes, str]:
        """The text format, with the resident versions as they are now: (role, stage, version,
        content id) of each, the ones no longer loaded dropped."""
        self.resident.clear()
        for role, stage, version, content_id in self.resident_now():
            if version:
                self.resident.labels(role, stage, version, content_id or "").set(1)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
