"""A key holder in another process, behind a byte-message connection.

Messages are a 4-byte length, a JSON header and raw bytes; nothing is
pickled, so a peer cannot make the other side run code. Anything that
:func:`serve` receives is answered by :func:`handle`; the only operations are
those of :class:`~fpmatch.he.keyholder.ScoreDecider` plus ``usage``, and any
other request (a raw decryption, say) is refused with a typed error.
Works with :func:`multiprocessing.Pipe` connections and with
``multiprocessing.connection.Listener``/``Client`` sockets (authenticated with
their ``authkey``); :class:`~fpmatch.he.client.RemoteKeyHolder` speaks it over
such a connection or, with mutual TLS, to the network service
(:mod:`fpmatch.he.server`), which uses the same messages.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from multiprocessing.connection import Connection
from typing import Any

from .. import errors as base_errors
from ..errors import FpmatchError
from . import errors as he_errors
from .errors import CiphertextFormatError, DecryptionRefusedError
from .keyholder import KeyHolder
from .scores import MAX_REQUEST_BYTES

_HEAD = struct.Struct("<I")
_ERRORS: dict[str, type[FpmatchError]] = {
    name: cls
    for module in (base_errors, he_errors)
    for name, cls in vars(module).items()
    if isinstance(cls, type) and issubclass(cls, FpmatchError)
}


def _pack(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return _HEAD.pack(len(head)) + head + payload


def _unpack(message: bytes) -> tuple[dict[str, Any], bytes]:
    if len(message) < _HEAD.size:
        raise CiphertextFormatError("message too short")
    (size,) = _HEAD.unpack_from(message)
    header = json.loads(message[_HEAD.size : _HEAD.size + size])
    if not isinstance(header, dict):
        raise CiphertextFormatError("message header must be a JSON object")
    return header, message[_HEAD.size + size :]


#: The operations a key holder answers, beside ``public_context`` and ``usage``.
OPERATIONS = ("decide", "best", "coarse_scores", "reclaim", "decide_attested", "best_attested")


def parse(message: bytes) -> tuple[str, dict[str, Any], bytes]:
    """(operation, header, payload) of a request; raises CiphertextFormatError when malformed."""
    try:
        header, payload = _unpack(message)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CiphertextFormatError(f"malformed request: {exc}") from None
    op = header.get("op")
    if not isinstance(op, str):
        raise CiphertextFormatError("a request names its operation ('op')")
    return op, header, payload


def dispatch(holder: Any, op: str, header: dict[str, Any], payload: bytes, caller: str) -> tuple[Any, bytes]:
    """Run one operation on ``holder``: (JSON result, raw body)."""
    if op == "public_context":
        return None, holder.public_context()
    if op == "decide":
        return holder.decide(payload, header["threshold"], caller=caller), b""
    if op == "best":
        return holder.best(payload, header["threshold"], header["k"], caller=caller), b""
    if op == "coarse_scores":
        return holder.coarse_scores(payload, caller=caller, noise_sigma=header.get("noise_sigma")), b""
    if op == "reclaim":
        return None, holder.reclaim(payload, caller=caller)
    if op == "decide_attested":
        return holder.decide_attested(payload, header["threshold"], caller=caller), b""
    if op == "best_attested":
        return holder.best_attested(payload, header["threshold"], header["k"], caller=caller), b""
    if op == "mode":
        return {"attested": bool(holder.attested_mode)}, b""
    raise DecryptionRefusedError(
        f"the key holder does not do {op!r}: it returns decisions, coarse scores and reclaim ciphertexts only"
    )


def reply(result: Any = None, body: bytes = b"") -> bytes:
    return _pack({"ok": True} if result is None else {"ok": True, "result": result}, body)


def error_reply(exc: BaseException) -> bytes:
    """The reply for an error: typed errors by class name, anything else as a malformed request."""
    if isinstance(exc, FpmatchError):
        return _pack({"ok": False, "error": type(exc).__name__, "message": str(exc)})
    return _pack({"ok": False, "error": "CiphertextFormatError", "message": f"malformed request: {exc!r}"})


def read_reply(message: bytes) -> tuple[dict[str, Any], bytes]:
    """The header and body of a reply; raises the typed error it carries."""
    head, body = _unpack(message)
    if not head.get("ok"):
        raise _ERRORS.get(str(head.get("error")), FpmatchError)(str(head.get("message")))
    return head, body


def handle(holder: KeyHolder, message: bytes) -> bytes:
    """One request in, one reply out; errors travel as their class name and message.

    The caller is the one the request names: only for peers the transport
    already trusts (a pipe to a child process). The network service names
    callers from their certificates instead (:mod:`fpmatch.he.server`).
    """
    try:
        op, header, payload = parse(message)
        caller = header.get("caller", "")
        if op == "usage":
            return reply(dataclasses.asdict(holder.usage(caller)))
        return reply(*dispatch(holder, op, header, payload, caller))
    except (FpmatchError, ValueError, KeyError, TypeError) as exc:
        return error_reply(exc)


def serve(holder: KeyHolder, connection: Connection) -> None:
    """Answer requests on ``connection`` until the peer closes it."""
    while True:
        try:
            message = connection.recv_bytes(MAX_REQUEST_BYTES + 65536)
        except (EOFError, OSError):
            return
        connection.send_bytes(handle(holder, message))
