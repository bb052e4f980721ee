"""The HTTP API: answers from the registry's versions, proves provenance, follows stage moves.

Routes: POST /generate (native), the OpenAI-compatible /v1 routes, GET /health, GET /version,
GET /metrics (Prometheus) and POST /admin/reload. A request names the version that should answer
(`version` here, `model` under /v1; the followed stage by default). Every answer names its
version and content id
(body and X-TuneLedger-* headers). Around the routes, outermost first: the request log (every
status), the host check, the cross-origin check (and CORS for --allow-origin), the bearer key, and
JSON-only POSTs.
"""

from __future__ import annotations

import contextlib
import logging
import signal

from fastapi import FastAPI, Request
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse

from tuneledger.core.progress import say
from tuneledger.core.secrets import register_secret
from tuneledger.serve import log
from tuneledger.serve.config import ServeConfig
from tuneledger.serve.errors import RequestRefused, render
from tuneledger.serve.guards import (
    RequireBearer,
    RequireJson,
    SameOriginOnly,
    connection_limits,
)
from tuneledger.serve.native import native_router
from tuneledger.serve.openai.api_router import build_router
from tuneledger.serve.openai.serving import OpenAIServing
from tuneledger.serve.request_log import RequestLog
from tuneledger.serve.server import Server

logger = logging.getLogger(__name__)


def create_app(server: Server) -> FastAPI:
    config = server.config

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        server.close()  # uvicorn re-raises SIGTERM after shutdown, so a `finally` would never run

    app = FastAPI(
        title="TuneLedger",
        description="Answers from the registry's version; every reply names it.",
        lifespan=lifespan,
    )
    app.include_router(native_router(server))  # /generate, /health, /metrics, /version, /admin/reload
    app.include_router(build_router(OpenAIServing(server)))

    @app.exception_handler(RequestRefused)
    async def refused(request: Request, exc: RequestRefused) -> JSONResponse:
        return render(request.scope, exc)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        logger.error(f"{request.method} {request.url.path} failed: {log.short_error(exc)}")
        return render(request.scope, RequestRefused(500, "internal error; see the server log"))

    # add_middleware wraps what is there: the last added runs first.
    app.add_middleware(RequireJson)
    app.add_middleware(RequireBearer, key=config.api_key)
    if config.allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.allow_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-TuneLedger-Version", "X-TuneLedger-Content-Id"],
        )
    app.add_middleware(SameOriginOnly, allowed=config.allow_origins)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=config.trusted_hosts())
    app.add_middleware(RequestLog, server=server)
    return app


def _operators_log() -> None:
    """The server's events (swaps, failed reloads, trouble with the log or a batch) on stderr, with
    a timestamp, a level and the module that speaks; requests go to the serving log instead."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    serving = logging.getLogger("tuneledger.serve")
    serving.addHandler(handler)
    serving.setLevel(logging.INFO)
    serving.propagate = False


def serve(config: ServeConfig) -> None:
    import uvicorn

    _operators_log()
    config.check_bind()
    for warning in config.warnings():
        say(warning)
    register_secret(config.api_key)  # never stored in the log, even with --log-prompts
    server = Server(config)
    signal.signal(signal.SIGHUP, server.reload_in_background)  # `kill -HUP` after a rollback
    shadow = server.shadow
    shadow_note = f", shadow {shadow.stage} {shadow.version or f'({shadow.state})'}" if shadow else ""
    canary = server.canary
    canary_note = f", canary {config.canary[0]} {canary.version} at {config.canary[1]:g}%" if canary else ""
    say(
        f"serving {config.name} {config.stage} {server.followed.version} "
        f"({server.followed.content_id[:12]}){canary_note}{shadow_note} on "
        f"{'https' if config.tls else 'http'}://{config.host}:{config.port}; "
        f"log {config.db}{'' if config.api_key else '; no API key'}"
    )
    uvicorn.run(
        create_app(server),
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=False,  # the serving log records every request, with its version
        http=connection_limits(config.header_timeout, config.max_connections_per_client),
        timeout_keep_alive=config.keep_alive,
        limit_concurrency=config.max_connections,
        h11_max_incomplete_event_size=16 * 1024,  # request line and headers
        timeout_graceful_shutdown=5,
        ssl_certfile=str(config.ssl_certfile) if config.ssl_certfile else None,
        ssl_keyfile=str(config.ssl_keyfile) if config.ssl_keyfile else None,
    )
