"""The request size limit, enforced before anything parses a body.

A declared ``Content-Length`` above the limit is refused at once, without
reading the body; a body sent without one (chunked) is counted as it arrives
and refused as soon as it passes the limit. Either way the answer is a 413
with the API's JSON error.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from .errors import body

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Default largest request body: a capture-edge message (at most 1 MiB) in base64, with room for JSON.
DEFAULT_MAX_BODY = 1_500_000


class BodyLimit:
    """ASGI middleware: requests whose body exceeds ``max_bytes`` get 413 ``too_large``."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int = DEFAULT_MAX_BODY) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = [v for k, v in scope.get("headers", []) if k.lower() == b"content-length"]
        if declared:
            text = declared[0].decode("latin-1").strip()
            if len(declared) > 1 or not text.isdigit():
                await _refuse(send, 400, "bad_request", "a request needs one numeric Content-Length")
                return
            if int(text) > self.max_bytes:
                await _refuse(send, 413, "too_large", f"the body is larger than {self.max_bytes} bytes")
                return
        # Read the whole body first (at most max_bytes), then hand it on in one piece.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _refuse(send, 413, "too_large", f"the body is larger than {self.max_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    payload = json.dumps(body(code, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


__all__ = ["BodyLimit", "DEFAULT_MAX_BODY"]
