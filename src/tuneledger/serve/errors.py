"""How the server refuses a request: one exception type, and one place that renders it.

Native routes answer FastAPI's shape (`{"detail": ...}`; for 422 a list of `{loc, msg, type}`),
the OpenAI-compatible routes under /v1 answer OpenAI's (`{"error": {message, type, param, code}}`),
so each kind of client parses the errors it already knows. The message also goes to the log.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse
from starlette.types import Scope

from tuneledger.package.signature import SignatureViolation
from tuneledger.serve.request_log import note

OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    499: "cancelled",
    500: "server_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class RequestRefused(Exception):
    """A request answered with an error status. `errors` name fields for 422s."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ):
        self.status, self.message, self.errors, self.headers = status, message, errors or [], headers or {}
        super().__init__(message)

    @property
    def field(self) -> str | None:
        return ".".join(map(str, self.errors[0]["loc"])) if self.errors else None


def unprocessable(field: str, message: str, kind: str = "signature") -> RequestRefused:
    return RequestRefused(
        422, f"{field}: {message}", [{"loc": field.split("."), "msg": message, "type": kind}]
    )


def from_signature(exc: SignatureViolation, rename: dict[str, str] | None = None) -> RequestRefused:
    """A signature violation as a 422; `rename` maps signature names to the request's own."""
    first, _, rest = exc.field.partition(".")
    field = ".".join(filter(None, [(rename or {}).get(first, first), rest]))
    return unprocessable(field, exc.rule)


def _field_path(loc: tuple) -> list[str]:
    """A pydantic error location without the union members it tried (`str`, `list[TextPart]`,
    `constrained-str`): `messages.0.content`, as the client wrote it."""
    return [
        str(part)
        for part in loc
        if isinstance(part, int) or (part.isidentifier() and part not in ("str", "int", "float", "bool"))
    ]


def from_validation(exc: ValidationError) -> RequestRefused:
    errors = []
    for error in exc.errors(include_url=False):
        loc = _field_path(error["loc"])
        if all(e["loc"] != loc for e in errors):  # one line per field, not one per union member
            errors.append({"loc": loc, "msg": error["msg"], "type": error["type"]})
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"]) or "body"
    return RequestRefused(422, f"{where}: {first['msg']}", errors)


def render(scope: Scope, refused: RequestRefused) -> JSONResponse:
    note(scope, error=refused.message, status=refused.status)
    if scope["path"].startswith("/v1/"):
        body: dict[str, Any] = {
            "error": {
                "message": refused.message,
                "type": OPENAI_TYPES.get(refused.status, "invalid_request_error"),
                "param": refused.field,
                "code": refused.status,
            }
        }
    elif refused.errors:
        body = {"detail": [{**e, "loc": ["body", *e["loc"]]} for e in refused.errors]}
    else:
        body = {"detail": refused.message}
    return JSONResponse(body, status_code=refused.status, headers=refused.headers)
