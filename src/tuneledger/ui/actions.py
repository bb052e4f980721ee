"""Promote and roll back from the page: mounted only when the page was started with an API key, and
every request must carry it. They call the API the command line calls, so the same gate decides and
the same tags record who and why. The server's own guards stand in front, in the server's order:
another origin is refused, then a request without the key, then a body that is not JSON."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from tuneledger import api
from tuneledger.core.errors import TuneLedgerError
from tuneledger.registry.promotion_gate import Check, GateFailed
from tuneledger.serve.guards import RequireBearer, RequireJson, SameOriginOnly
from tuneledger.ui.config import PageConfig
from tuneledger.ui.queries import DVC_LOCK


class Promotion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str
    stage: str
    force: bool = False
    reason: str | None = None


class Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: str
    to: str | None = None
    reason: str | None = None


def _checks(checks: list[Check]) -> list[dict]:
    return [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in checks]


def create(config: PageConfig) -> FastAPI:
    actions = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @actions.post("/promote")
    def promote(body: Promotion) -> dict:
        with DVC_LOCK:  # the gate downloads through DVC, as the page's reads do
            done = api.promote(
                body.version, body.stage, name=config.name, force=body.force, reason=body.reason or None
            )
        forced = " (forced)" if done["forced"] else ""
        message = f"{body.stage}: {done['from'] or '(none)'} → {body.version}{forced}"
        return {"message": message, "checks": _checks(done["checks"])}

    @actions.post("/rollback")
    def rollback(body: Rollback) -> dict:
        done = api.rollback(body.stage, name=config.name, to=body.to or None, reason=body.reason or None)
        return {"message": f"{body.stage}: {done['from']} → {done['to']}"}

    @actions.exception_handler(GateFailed)
    async def refused(_: Request, exc: GateFailed) -> JSONResponse:
        detail = str(exc).splitlines()[0]
        return JSONResponse({"detail": detail, "checks": _checks(exc.checks)}, status_code=409)

    @actions.exception_handler(TuneLedgerError)
    async def failed(_: Request, exc: TuneLedgerError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    # add_middleware wraps what is there: the last added runs first.
    actions.add_middleware(RequireJson)
    actions.add_middleware(RequireBearer, key=config.api_key)
    actions.add_middleware(SameOriginOnly)
    return actions
