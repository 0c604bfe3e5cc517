"""The HTTP API of the matching service (``pip install 'fpmatch[api]'``; ``fpmatch serve``).

:func:`create_app` builds a FastAPI app over an open :class:`~fpmatch.MatchingService`;
:class:`TokenStore` keeps per-client tokens as salted hashes; :func:`serve`
runs it on uvicorn with TLS. Capture edges send base64 of their messages'
``to_bytes()``; errors are ``{"error": {"code": ..., "message": ...}}`` with
the stable codes of :data:`ERROR_CODES`.
"""

from __future__ import annotations

from .app import create_app
from .errors import ERROR_CODES, HTTP_CODES
from .limits import DEFAULT_MAX_BODY, BodyLimit
from .server import serve
from .tokens import TokenStore

__all__ = ["BodyLimit", "DEFAULT_MAX_BODY", "ERROR_CODES", "HTTP_CODES", "TokenStore", "create_app", "serve"]
