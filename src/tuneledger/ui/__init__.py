"""`tuneledger ui`: a local page of the registry (versions, one version, compare, history, serving).

Read-only by default; promote and roll back only when started with an API key, through the same API
and gate as the command line. This module is the entry the CLI calls: it stays light, and the web
stack is imported only when the page starts.
"""

from __future__ import annotations

from tuneledger.ui.config import PageConfig


def serve(config: PageConfig) -> None:
    """Serve the page until stopped."""
    from tuneledger.ui import app

    app.run(config)


__all__ = ["PageConfig", "serve"]
