"""The server's boundary: who may call (bearer key, origin, connections per address) and what
they may send (JSON only). Every request is accounted for by serve.request_log.

The host check and CORS are Starlette's own middleware (see app.py). What is here has no library
equivalent: Starlette's CORS middleware adds headers but still runs a cross-origin request, so a
web page could trigger a generation (CSRF); refusing it needs a check of its own. These are plain
ASGI middleware, so they run before routing and the body is never read for a refused request.
"""

from __future__ import annotations

import secrets
from collections import Counter

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from tuneledger.serve.errors import RequestRefused, render
from tuneledger.serve.request_log import OPEN_PATHS


class _Refusing:
    """Base for middleware that may answer a request itself instead of passing it on."""

    def __init__(self, app: ASGIApp):
        self.app = app

    def refusal(self, scope: Scope, headers: Headers) -> RequestRefused | None:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = self.refusal(scope, Headers(scope=scope))
            if refused is not None:
                await render(scope, refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SameOriginOnly(_Refusing):
    """403 for a browser request from another origin (unless --allow-origin names it)."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...] = ()):
        super().__init__(app)
        self.allowed = {origin.rstrip("/").lower() for origin in allowed}

    def refusal(self, scope: Scope, headers: Headers) -> RequestRefused | None:
        origin = headers.get("origin")
        if origin is None:  # not sent by a browser script: nothing to check
            return None
        origin = origin.rstrip("/").lower()
        own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()
        if origin == own or "*" in self.allowed or origin in self.allowed:
            return None
        return RequestRefused(
            403, f"cross-origin request from {origin} refused; start the server with --allow-origin {origin}"
        )


class RequireBearer(_Refusing):
    """401 unless `Authorization: Bearer <key>` matches (compared in constant time)."""

    def __init__(self, app: ASGIApp, key: str | None):
        super().__init__(app)
        self.key = key.encode() if key else None

    def refusal(self, scope: Scope, headers: Headers) -> RequestRefused | None:
        if self.key is None or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            return None
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), self.key):
            return None
        return RequestRefused(
            401,
            "missing or wrong API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )


class RequireJson(_Refusing):
    """415 for a POST that is not `Content-Type: application/json`: a web page cannot send that
    without a CORS preflight, which this server does not grant to other origins."""

    def refusal(self, scope: Scope, headers: Headers) -> RequestRefused | None:
        if scope["method"] != "POST":
            return None
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type == "application/json":
            return None
        return RequestRefused(415, f"Content-Type must be application/json, got {media_type or 'none'}")


# After a stall (a stopped process, a paused VM, a long GC) a deadline can fall due in the same pass
# of the event loop that has the bytes which arrived in time, and run first. Each deadline below is
# judged once more after this much time, long enough for one poll of the sockets.
SECOND_LOOK = 0.05  # seconds


# What a connection beyond its client's share gets before it is closed (no request is read).
_TOO_MANY_BODY = b'{"detail": "too many open connections from this address; close some"}'
TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(_TOO_MANY_BODY), _TOO_MANY_BODY)
)


class LimitedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with two limits it lacks.

    - Headers deadline: uvicorn closes idle kept-alive connections, but waits forever for the
      headers of a request that has begun to arrive (slowloris). A connection that has not
      completed a request's headers within `header_timeout` seconds of opening or of its previous
      response is closed.
    - Connections per client address: uvicorn's `limit_concurrency` counts every connection, so one
      client holding that many idle ones made every route answer 503, /health included. A
      connection beyond `per_client` from one address gets 429 and is closed at once.
    """

    header_timeout = 10.0
    per_client = 128
    open_by_address: Counter  # shared by the server's connections (one event loop)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.address = self.client[0] if self.client else None
        self.open_by_address[self.address] += 1
        if self.open_by_address[self.address] > self.per_client:
            transport.write(TOO_MANY_CONNECTIONS)
            transport.close()
            return
        self._arm_header_deadline()

    def connection_lost(self, exc) -> None:
        self.open_by_address[self.address] -= 1
        if self.open_by_address[self.address] <= 0:
            del self.open_by_address[self.address]
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        self.loop.call_later(self.header_timeout, self._close_if_no_new_request, self.cycle)

    def _close_if_no_new_request(self, cycle_when_armed, looked_again: bool = False) -> None:
        if self.cycle is not cycle_when_armed or self.transport.is_closing():
            return
        if not looked_again:  # see SECOND_LOOK: closing on a request still unread resets the connection
            self.loop.call_later(SECOND_LOOK, self._close_if_no_new_request, cycle_when_armed, True)
            return
        self.transport.close()


def connection_limits(header_timeout: float, per_client: int) -> type[LimitedH11]:
    """The protocol class uvicorn instantiates per connection, with these limits."""
    limits = {"header_timeout": header_timeout, "per_client": per_client, "open_by_address": Counter()}
    return type("LimitedH11", (LimitedH11,), limits)
