"""Everything `tuneledger serve` can be told, with its defaults, in one place."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from tuneledger.errors import TuneLedgerError
from tuneledger.registry.artifacts import DEFAULT_NAME
from tuneledger.serve import log
from tuneledger.serve.deployment import DEFAULT_CACHE

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class ServeConfig:
    # what answers
    name: str = DEFAULT_NAME
    stage: str = "prod"
    shadow: str | None = None
    cache: Path = DEFAULT_CACHE
    shadow_queue: int = 64
    # the network boundary
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    insecure: bool = False
    allowed_hosts: tuple[str, ...] = ()  # Host header values accepted besides the bound names
    allow_origins: tuple[str, ...] = ()  # browser origins allowed to call the API (CORS)
    # limits: every request ends with a status within bounded time and memory
    max_body: int = 64 * 1024
    max_queue: int = 16  # requests waiting for the model beyond the one generating
    request_timeout: float = 60.0  # from admission to the last token
    body_timeout: float = 10.0  # to receive a request's body
    header_timeout: float = 10.0  # to receive a request's headers
    keep_alive: int = 5  # idle seconds before a kept-alive connection closes
    max_connections: int = 256  # beyond this uvicorn answers 503 at once
    # the serving log
    db: Path = log.DEFAULT_DB
    log_prompts: bool = False
    log_queue: int = log.DEFAULT_QUEUE
    log_retention_days: float | None = None

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

    def check_bind(self) -> None:
        """Refuse to expose the model beyond this machine without a key, unless told to."""
        if is_loopback(self.host) or self.api_key or self.insecure:
            return
        raise TuneLedgerError(
            f"serve: --host {self.host} is reachable from other machines and no API key is set; "
            "set TUNELEDGER_API_KEY (or --api-key), or pass --insecure if something else guards the port"
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
