"""Running the API: uvicorn over TLS, one process holding the store."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..service import MatchingService
from .limits import DEFAULT_MAX_BODY
from .tokens import TokenStore


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    service: MatchingService,
    tokens: TokenStore,
    *,
    host: str = "127.0.0.1",
    port: int = 8443,
    certfile: str | Path | None = None,
    keyfile: str | Path | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    log_level: str = "info",
) -> None:
    """Serve the API until interrupted (SIGINT or SIGTERM). TLS is required except on a loopback address."""
    import uvicorn

    from .app import create_app

    if (certfile is None) != (keyfile is None):
        raise InvalidInputError("TLS needs both a certificate file and its key file")
    if certfile is None and not is_loopback(host):
        raise InvalidInputError(f"refusing to serve {host} without TLS: pass a certificate and key")
    options: dict[str, Any] = {}
    if certfile is not None:
        options.update(ssl_certfile=str(certfile), ssl_keyfile=str(keyfile))
    config = uvicorn.Config(
        create_app(service, tokens, max_body_bytes=max_body_bytes),
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
        limit_concurrency=64,
        **options,
    )
    uvicorn.Server(config).run()


__all__ = ["is_loopback", "serve"]
