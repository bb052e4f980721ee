"""Everything `tuneledger ui` can be told, with its defaults, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuneledger.core.errors import TuneLedgerError
from tuneledger.registry.artifacts import DEFAULT_NAME
from tuneledger.serve import log
from tuneledger.serve.config import MIN_API_KEY_CHARS, ServeConfig, is_loopback


@dataclass(frozen=True)
class PageConfig:
    name: str = DEFAULT_NAME  # the artifact whose versions the page shows
    host: str = "127.0.0.1"
    port: int = 8050
    api_key: str | None = None  # enables promote and roll back; every action must carry it
    insecure: bool = False
    db: Path = log.DEFAULT_DB  # the serving log charted under "Serving"

    @property
    def actions(self) -> bool:
        return bool(self.api_key)

    def trusted_hosts(self) -> list[str]:
        """Host header values to accept: the server's own rule for the names a bind answers to."""
        return ServeConfig(host=self.host).trusted_hosts()

    def check_bind(self) -> None:
        """Refuse a guessable key, and a page reachable from other machines without a key (unless
        told to), as `serve` does."""
        if self.api_key and len(self.api_key) < MIN_API_KEY_CHARS:
            raise TuneLedgerError(
                f"ui: the API key has {len(self.api_key)} characters; use at least {MIN_API_KEY_CHARS}, "
                "e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))'"
            )
        if is_loopback(self.host) or self.api_key or self.insecure:
            return
        raise TuneLedgerError(
            f"ui: --host {self.host} is reachable from other machines and no API key is set; "
            "set TUNELEDGER_API_KEY (or --api-key), or pass --insecure to show the registry read-only "
            "to anyone who reaches the port"
        )
