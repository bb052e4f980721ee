"""Everything `tuneledger serve` can be told, with its defaults, in one place."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.layout import SERVE_CACHE
from tuneledger.registry.artifacts import DEFAULT_NAME
from tuneledger.serve import log

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
MIN_API_KEY_CHARS = 16  # a shorter key is guessable; `secrets.token_urlsafe(24)` gives 32
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class ServeConfig:
    # what answers
    name: str = DEFAULT_NAME
    stage: str = "prod"  # the stage the bare name follows
    canary: tuple[str, float] | None = None  # (stage, percent) of the followed name's requests
    shadow: str | None = None
    cache: Path = SERVE_CACHE
    shadow_queue: int = 64
    max_versions: int = 8  # resident on one base; the least recently used is unloaded first
    sync_seconds: float = 5.0  # a stage move is live within this (0: only on reload or SIGHUP)
    # batching
    batch_window_ms: float = 10.0  # requests arriving this close together generate together
    max_batch: int = 16
    # the network boundary
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    insecure: bool = False
    ssl_certfile: Path | None = None  # TLS through uvicorn, when both are given
    ssl_keyfile: Path | None = None
    allowed_hosts: tuple[str, ...] = ()  # Host header values accepted besides the bound names
    allow_origins: tuple[str, ...] = ()  # browser origins allowed to call the API (CORS)
    # limits: every request ends with a status within bounded time and memory
    max_body: int = 64 * 1024
    max_queue: int = 16  # requests waiting for the model beyond a running batch
    request_timeout: float = 60.0  # from admission to the last token
    body_timeout: float = 10.0  # to receive a request's body
    header_timeout: float = 10.0  # to receive a request's headers
    keep_alive: int = 5  # idle seconds before a kept-alive connection closes
    max_connections: int = 256  # beyond this uvicorn answers 503 at once
    # Open connections one client address may hold (beyond: 429 and closed), half of max_connections
    # so that one client cannot make every route answer 503. Behind a proxy every client has the
    # proxy's address: raise it to max_connections there and let the proxy limit per client.
    max_connections_per_client: int = 128
    # the serving log
    db: Path = log.DEFAULT_DB
    log_prompts: bool = False
    log_queue: int = log.DEFAULT_QUEUE
    log_retention_days: float | None = 30.0  # request and shadow rows older than this go
    log_max_mb: float | None = 1024.0  # and the oldest go while the log holds more than this

    def __post_init__(self) -> None:
        if self.max_versions < 1 or self.max_batch < 1:
            raise TuneLedgerError("serve: --max-versions and --max-batch must be at least 1")
        if self.batch_window_ms < 0 or self.sync_seconds < 0:
            raise TuneLedgerError("serve: --batch-window-ms and --sync-seconds cannot be negative")
        if self.canary is not None and self.canary[0] == self.stage:
            raise TuneLedgerError(
                f"serve: --canary {self.canary[0]} is the followed stage; name another stage"
            )

    def trusted_hosts(self) -> list[str]:
        """Host header values to accept: the names the server is bound to, plus --allowed-host."""
        if "*" in self.allowed_hosts:
            return ["*"]
        if is_loopback(self.host):
            bound = list(LOOPBACK_NAMES)
        elif self.host in WILDCARD_HOSTS:
            bound = [socket.gethostname(), socket.getfqdn(), *LOOPBACK_NAMES]
        else:
            bound = [self.host]
        return sorted({name.lower() for name in (*bound, *self.allowed_hosts)})

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None

    def check_bind(self) -> None:
        """Refuse a guessable key, half a TLS setting, and exposing the model beyond this machine
        without a key (unless told to)."""
        if self.api_key is not None and len(self.api_key) < MIN_API_KEY_CHARS:
            raise TuneLedgerError(
                f"serve: the API key has {len(self.api_key)} characters; use at least {MIN_API_KEY_CHARS}, "
                "e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))'"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise TuneLedgerError("serve: TLS needs both --ssl-certfile and --ssl-keyfile")
        for path in (self.ssl_certfile, self.ssl_keyfile):
            if path is not None and not Path(path).is_file():
                raise TuneLedgerError(f"serve: {path}: no such file (TLS certificate or key)")
        if is_loopback(self.host) or self.api_key or self.insecure:
            return
        raise TuneLedgerError(
            f"serve: --host {self.host} is reachable from other machines and no API key is set; "
            "set TUNELEDGER_API_KEY (or --api-key), or pass --insecure if something else guards the port"
        )

    def warnings(self) -> list[str]:
        if not is_loopback(self.host) and self.api_key and not self.tls:
            return [
                f"warning: --host {self.host} is reachable from other machines and the API key crosses the "
                "network in clear text; serve TLS (--ssl-certfile, --ssl-keyfile) or put a TLS proxy in front"
            ]
        return []


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_canary(value: str) -> tuple[str, float]:
    """`--canary STAGE:PERCENT`, e.g. `staging:10`."""
    stage, _, percent = value.rpartition(":")
    try:
        share = float(percent)
    except ValueError:
        share = -1.0
    if not stage or not 0 < share <= 100:
        raise TuneLedgerError(
            f"serve: --canary {value!r}: expected STAGE:PERCENT with 0 < PERCENT <= 100, e.g. staging:10"
        )
    return stage, share
