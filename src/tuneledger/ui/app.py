"""The page's web application: views, its own static assets (no CDN: it works offline), the actions
when a key was given, and the host check on everything (a DNS-rebinding page cannot read it)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from markupsafe import escape
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.progress import say
from tuneledger.core.secrets import register_secret
from tuneledger.registry.artifacts import resolve
from tuneledger.ui import actions, pages, queries
from tuneledger.ui.config import PageConfig

# Everything the page loads comes from itself: a model card cannot pull a script or an image from
# elsewhere, and no other site may frame the page's buttons.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


def create_app(config: PageConfig) -> FastAPI:
    app = FastAPI(title="TuneLedger registry", docs_url=None, redoc_url=None, openapi_url=None)
    pages.add_routes(app, config)
    if config.actions:
        app.mount("/actions", actions.create(config))
    else:

        @app.post("/actions/{action}")
        def read_only(action: str) -> JSONResponse:
            detail = f"{action} refused: this page is read-only; start `tuneledger ui` with an API key"
            return JSONResponse({"detail": detail}, status_code=403)

    app.mount("/static", StaticFiles(packages=[("tuneledger.ui", "static")]), name="static")

    @app.exception_handler(TuneLedgerError)
    async def failed(request: Request, exc: TuneLedgerError) -> HTMLResponse:
        status = 404 if isinstance(exc, queries.UnknownVersion) else 500
        if request.headers.get("x-fragment") == "1":  # fetched by the page's script: the line alone
            return HTMLResponse(f'<p class="error-line">{escape(str(exc))}</p>', status_code=status)
        return pages.render("error.html", config, status=status, message=str(exc))

    app.add_middleware(SecurityHeaders)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=config.trusted_hosts())
    return app


def run(config: PageConfig) -> None:
    import uvicorn

    config.check_bind()
    resolve(config.name)  # a repository that declares the artifact, or one line saying what to do
    queries.warm_up()
    pages.compile_templates()
    register_secret(config.api_key)
    mode = "promote and roll back need the API key" if config.actions else "read-only"
    say(f"registry page of {config.name} on http://{config.host}:{config.port} ({mode})")
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="warning")
