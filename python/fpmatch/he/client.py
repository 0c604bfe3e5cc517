"""RemoteKeyHolder: the matching side's handle on a key holder in another process or host.

It is a :class:`~fpmatch.he.keyholder.ScoreDecider`, used exactly like an
in-process :class:`~fpmatch.he.keyholder.KeyHolder`. Two transports carry the
same byte messages (:mod:`fpmatch.he.remote`):

* ``RemoteKeyHolder("host:port", ClientCredentials.from_files(ca, cert, key))``:
  the key holder service (:mod:`fpmatch.he.server`) over gRPC with mutual TLS.
  The service names the caller from the client certificate, so the ``caller``
  argument of each method is not sent. Calls have a deadline; a connection
  that fails (the service down or restarting) is retried with exponential
  backoff, and then :class:`~fpmatch.he.errors.KeyHolderUnavailable` is raised:
  nothing was decided, so nothing may be taken as a match.
* ``RemoteKeyHolder(connection)``: a :mod:`multiprocessing` connection to
  :func:`fpmatch.he.remote.serve` (a child process the caller trusts; the
  request names the caller).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

from ..errors import AttestedModeError
from .errors import DecryptionRefusedError, KeyHolderUnavailable
from .keyholder import Usage
from .remote import _pack, read_reply
from .scores import MAX_REQUEST_BYTES

#: The gRPC method every request goes to; the message names the operation.
METHOD = "/fpmatch.keyholder.v1.KeyHolder/Call"
#: Largest message either side accepts: the largest request plus its header.
MAX_MESSAGE_BYTES = MAX_REQUEST_BYTES + (1 << 16)
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
#: Reconnect soon after the key holder comes back (gRPC's own default waits up to two minutes).
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass(frozen=True)
class ClientCredentials:
    """PEM bytes: the CA that signed the key holder's certificate, and this caller's certificate and key."""

    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def from_files(cls, ca: str | Path, cert: str | Path, key: str | Path) -> "ClientCredentials":
        return cls(Path(ca).read_bytes(), Path(cert).read_bytes(), Path(key).read_bytes())

    def __repr__(self) -> str:  # never print a private key
        return "ClientCredentials(...)"


class _GrpcTransport:
    def __init__(self, address: str, credentials: ClientCredentials, server_name: str | None) -> None:
        try:
            import grpc
        except ImportError:
            raise ImportError("a remote key holder needs grpcio: pip install 'fpmatch[keyholder]'") from None

        self._grpc = grpc
        options = CHANNEL_OPTIONS + RECONNECT_OPTIONS
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        channel_credentials = grpc.ssl_channel_credentials(
            root_certificates=credentials.ca, private_key=credentials.key, certificate_chain=credentials.cert
        )
        self._channel = grpc.secure_channel(address, channel_credentials, options=options)
        self._call = self._channel.unary_unary(METHOD)
        self.address = address

    def transient(self, exc: BaseException) -> bool:
        return isinstance(exc, self._grpc.RpcError) and exc.code() == self._grpc.StatusCode.UNAVAILABLE

    def unavailable(self, exc: BaseException) -> bool:
        return isinstance(exc, self._grpc.RpcError)

    def send(self, message: bytes, timeout: float) -> bytes:
        return self._call(message, timeout=timeout)

    def close(self) -> None:
        self._channel.close()


class _ConnectionTransport:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()
        self.address = "a local connection"

    def transient(self, exc: BaseException) -> bool:
        return False

    def unavailable(self, exc: BaseException) -> bool:
        return isinstance(exc, (EOFError, OSError))

    def send(self, message: bytes, timeout: float) -> bytes:
        with self._lock:
            if self._connection.closed:
                raise EOFError("the connection was closed after an earlier request timed out")
            self._connection.send_bytes(message)
            if not self._connection.poll(timeout):
                # A late reply would answer the next request: this connection is done.
                self._connection.close()
                raise TimeoutError(f"no reply within {timeout} s")
            return self._connection.recv_bytes(MAX_MESSAGE_BYTES)

    def close(self) -> None:
        self._connection.close()


class RemoteKeyHolder:
    """A :class:`~fpmatch.he.keyholder.ScoreDecider` that forwards to a key holder elsewhere.

    ``address``: ``"host:port"`` of the key holder service (with
    ``credentials``), or a :mod:`multiprocessing` connection. ``timeout`` is
    the deadline of one attempt in seconds; ``retries`` more attempts follow a
    failed connection, ``backoff`` seconds apart at first, doubling up to
    ``max_backoff`` (with jitter). ``server_name`` overrides the name the
    server certificate is checked against.
    """

    def __init__(
        self,
        address: str | Connection,
        credentials: ClientCredentials | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        server_name: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if isinstance(address, Connection):
            self._transport: Any = _ConnectionTransport(address)
        else:
            if not isinstance(address, str) or ":" not in address:
                raise ValueError(f"address must be 'host:port' or a multiprocessing connection, got {address!r}")
            if not isinstance(credentials, ClientCredentials):
                raise ValueError("the key holder service takes mutual TLS only: pass ClientCredentials")
            self._transport = _GrpcTransport(address, credentials, server_name)
        if not timeout > 0 or retries < 0 or not backoff >= 0:
            raise ValueError("need timeout > 0, retries >= 0 and backoff >= 0")
        self.timeout, self.retries, self.backoff, self.max_backoff = timeout, retries, backoff, max_backoff
        self._sleep = sleep
        self.attempts = 0  # attempts made, retries included (for monitoring)
        self._key_id: str | None = None
        self._attested: bool | None = None

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> "RemoteKeyHolder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, header: dict[str, Any], payload: bytes = b"") -> tuple[dict[str, Any], bytes]:
        message = _pack(header, payload)
        delay = self.backoff
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                answer = self._transport.send(message, self.timeout)
                break
            except Exception as exc:
                if self._transport.transient(exc) and attempt < self.retries:
                    self._sleep(delay * (0.5 + random.random() / 2))
                    delay = min(self.max_backoff, delay * 2)
                    continue
                if self._transport.unavailable(exc) or isinstance(exc, TimeoutError):
                    detail = exc.details() if hasattr(exc, "details") else str(exc)
                    raise KeyHolderUnavailable(
                        f"the key holder at {self._transport.address} did not answer after {attempt + 1} "
                        f"attempt(s): {detail}"
                    ) from None
                raise
        try:
            return read_reply(answer)
        except AttestedModeError:
            self._attested = None  # the key holder's mode differs from what was asked: ask again next time
            raise

    def public_context(self) -> bytes:
        return self._call({"op": "public_context"})[1]

    @property
    def key_id(self) -> str:
        """The key holder's key id, read from its public context (asked once)."""
        if self._key_id is None:
            from .context import PublicContext

            self._key_id = PublicContext(self.public_context()).key_id
        return self._key_id

    def decide(self, scores: bytes, threshold: float, *, caller: str, subject: str | None = None) -> list[bool]:
        header = {"op": "decide", "threshold": threshold, "caller": caller, "subject": subject}
        return [bool(v) for v in self._call(self._named(header), scores)[0]["result"]]

    def best(self, scores: bytes, threshold: float, k: int, *, caller: str, subject: str | None = None) -> list[int]:
        header = {"op": "best", "threshold": threshold, "k": k, "caller": caller, "subject": subject}
        return [int(v) for v in self._call(self._named(header), scores)[0]["result"]]

    def coarse_scores(self, scores: bytes, *, caller: str, noise_sigma: float | None = None) -> list[float]:
        header = {"op": "coarse_scores", "caller": caller, "noise_sigma": noise_sigma}
        return [float(v) for v in self._call(self._named(header), scores)[0]["result"]]

    def decide_attested(self, request: bytes, threshold: float, *, caller: str, subject: str | None = None) -> list[bool]:
        header = {"op": "decide_attested", "threshold": threshold, "caller": caller, "subject": subject}
        return [bool(v) for v in self._call(self._named(header), request)[0]["result"]]

    def best_attested(self, request: bytes, threshold: float, k: int, *, caller: str) -> list[int]:
        header = {"op": "best_attested", "threshold": threshold, "k": k, "caller": caller}
        return [int(v) for v in self._call(self._named(header), request)[0]["result"]]

    @property
    def attested_mode(self) -> bool:
        """Whether the key holder runs in attested mode (asked once, then remembered until a request
        is refused for the other mode, e.g. after the key holder restarted with other options)."""
        if self._attested is None:
            try:
                self._attested = bool(self._call(self._named({"op": "mode", "caller": ""}))[0]["result"]["attested"])
            except DecryptionRefusedError:  # a key holder of a version without attested mode
                self._attested = False
        return self._attested

    def reclaim(self, request: bytes, *, caller: str) -> bytes:
        return self._call(self._named({"op": "reclaim", "caller": caller}), request)[1]

    def usage(self, caller: str = "") -> Usage:
        """The caller's counters (over the network: the certificate's caller, today's counts)."""
        result = self._call(self._named({"op": "usage", "caller": caller}))[0]["result"]
        return Usage(**{k: v for k, v in result.items() if k in Usage.__dataclass_fields__})

    def _named(self, header: dict[str, Any]) -> dict[str, Any]:
        if isinstance(self._transport, _GrpcTransport):
            header.pop("caller", None)  # the service names the caller from the certificate
        if header.get("subject") is None:
            header.pop("subject", None)
        return header


__all__ = ["ClientCredentials", "METHOD", "RemoteKeyHolder"]
