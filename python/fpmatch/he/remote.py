"""A key holder in another process, behind a byte-message connection.

Messages are a 4-byte length, a JSON header and raw bytes; nothing is
pickled, so a peer cannot make the other side run code. Anything that
:func:`serve` receives is answered by :func:`handle`; the only operations are
those of :class:`~fpmatch.he.keyholder.ScoreDecider` plus ``usage``, and any
other request (a raw decryption, say) is refused with a typed error.
Works with :func:`multiprocessing.Pipe` connections and with
``multiprocessing.connection.Listener``/``Client`` sockets (authenticated with
their ``authkey``).
"""

from __future__ import annotations

import dataclasses
import json
import struct
import threading
from multiprocessing.connection import Connection
from typing import Any

from .. import errors as base_errors
from ..errors import FpmatchError
from . import errors as he_errors
from .errors import CiphertextFormatError, DecryptionRefusedError
from .keyholder import KeyHolder, Usage
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


def handle(holder: KeyHolder, message: bytes) -> bytes:
    """One request in, one reply out; errors travel as their class name and message."""
    try:
        header, payload = _unpack(message)
        op = header.get("op")
        caller = header.get("caller", "")
        if op == "public_context":
            return _pack({"ok": True}, holder.public_context())
        if op == "decide":
            result: Any = holder.decide(payload, header["threshold"], caller=caller)
        elif op == "best":
            result = holder.best(payload, header["threshold"], header["k"], caller=caller)
        elif op == "coarse_scores":
            result = holder.coarse_scores(payload, caller=caller, noise_sigma=header.get("noise_sigma"))
        elif op == "reclaim":
            return _pack({"ok": True}, holder.reclaim(payload, caller=caller))
        elif op == "usage":
            result = dataclasses.asdict(holder.usage(caller))
        else:
            raise DecryptionRefusedError(
                f"the key holder does not do {op!r}: it returns decisions, coarse scores and reclaim ciphertexts only"
            )
        return _pack({"ok": True, "result": result})
    except FpmatchError as exc:
        return _pack({"ok": False, "error": type(exc).__name__, "message": str(exc)})
    except (ValueError, KeyError, TypeError) as exc:
        return _pack({"ok": False, "error": "CiphertextFormatError", "message": f"malformed request: {exc!r}"})


def serve(holder: KeyHolder, connection: Connection) -> None:
    """Answer requests on ``connection`` until the peer closes it."""
    while True:
        try:
            message = connection.recv_bytes(MAX_REQUEST_BYTES + 65536)
        except (EOFError, OSError):
            return
        connection.send_bytes(handle(holder, message))


class RemoteKeyHolder:
    """A :class:`~fpmatch.he.keyholder.ScoreDecider` that forwards to :func:`serve`."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()

    def _call(self, header: dict[str, Any], payload: bytes = b"") -> tuple[dict[str, Any], bytes]:
        with self._lock:
            self._connection.send_bytes(_pack(header, payload))
            reply = self._connection.recv_bytes()
        head, body = _unpack(reply)
        if not head.get("ok"):
            raise _ERRORS.get(str(head.get("error")), FpmatchError)(str(head.get("message")))
        return head, body

    def public_context(self) -> bytes:
        return self._call({"op": "public_context"})[1]

    def decide(self, scores: bytes, threshold: float, *, caller: str) -> list[bool]:
        header = {"op": "decide", "threshold": threshold, "caller": caller}
        return [bool(v) for v in self._call(header, scores)[0]["result"]]

    def best(self, scores: bytes, threshold: float, k: int, *, caller: str) -> list[int]:
        header = {"op": "best", "threshold": threshold, "k": k, "caller": caller}
        return [int(v) for v in self._call(header, scores)[0]["result"]]

    def coarse_scores(self, scores: bytes, *, caller: str, noise_sigma: float | None = None) -> list[float]:
        header = {"op": "coarse_scores", "caller": caller, "noise_sigma": noise_sigma}
        return [float(v) for v in self._call(header, scores)[0]["result"]]

    def reclaim(self, request: bytes, *, caller: str) -> bytes:
        return self._call({"op": "reclaim", "caller": caller}, request)[1]

    def usage(self, caller: str) -> Usage:
        return Usage(**self._call({"op": "usage", "caller": caller})[0]["result"])

