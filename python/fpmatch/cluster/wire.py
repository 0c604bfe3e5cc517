"""The read path from the service to its replicas: length-prefixed msgpack frames over mutual TLS.

Ray starts, places, restores and replaces the replicas and carries every
write. An identification's own calls (code shortlists, encrypted scores, the
``hash`` scheme's 1:1) go to the replica over a TLS connection of its own,
because a Ray actor call costs about 1 ms, and 2.3 ms with the 1 MB reply of
32 encrypted scores, against 0.07 and 0.6 ms over such a connection on the
same machine (README, "Many machines").

Both ends hold certificates of a CA that the service makes in memory when it
starts its replicas (:class:`fpmatch.he.certs.MemoryCA`) and never writes
down: only that service can call its replicas, and a replica answers only it.
Each replica's certificate names it (``<replica>.<service>.fpmatch``) and the
service checks the name, so one replica cannot stand in for another.

A frame is a 4-byte little-endian length and that many bytes of msgpack:
``[method, args]`` asked, ``[0, result]`` or ``[1, error class, message]``
answered (:func:`reply_to`). A replica answers only its reads, each
argument's type checked first (:meth:`fpmatch.cluster.replica.ShardReplica.read`);
a frame over its size limit ends the connection, anything else gets an error
reply, and the replica goes on serving.
"""

from __future__ import annotations

import builtins
import os
import socket
import ssl
import struct
import tempfile
import threading
from typing import Any, Callable

import msgpack

from ..errors import FpmatchError, InvalidInputError

_LENGTH = struct.Struct("<I")
#: Largest request a replica reads (its arguments are a probe and a few hundred ids).
MAX_REQUEST_FRAME = 16 << 20
#: Largest reply the service reads: encrypted scores at their own limit (256 MiB), and room for the ids.
MAX_REPLY_FRAME = (256 << 20) + (64 << 20)
#: Seconds a new connection has to finish its TLS handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds to wait for a connection to a replica to open.
CONNECT_TIMEOUT = 3.0
#: Connections one replica serves at once (the service opens one per concurrent request).
MAX_CONNECTIONS = 128


class LinkBroken(Exception):
    """The connection failed or the replica closed it: the call may go over Ray instead."""


class LinkTimeout(Exception):
    """The replica did not answer in time."""


def server_name(replica: str, service: str) -> str:
    """The DNS name a replica's certificate carries (``replica`` and ``service``: letters, digits, '-')."""
    return f"{replica}.{service}.fpmatch"


def tls_context(cert: bytes, key: bytes, ca: bytes, *, server: bool) -> ssl.SSLContext:
    """TLS 1.3 only, peers verified against ``ca`` both ways."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=ca.decode("ascii"))
    with tempfile.TemporaryDirectory(prefix="fpmatch-link-") as directory:  # ssl reads a key from a file only
        cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        context.load_cert_chain(cert_path, key_path)
    return context


def write_frame(conn: socket.socket, payload: bytes) -> None:
    if len(payload) < 65536:  # one write; a large payload is not copied to prepend its length
        conn.sendall(_LENGTH.pack(len(payload)) + payload)
    else:
        conn.sendall(_LENGTH.pack(len(payload)))
        conn.sendall(payload)


def read_frame(conn: socket.socket, limit: int) -> bytearray | None:
    """One frame's payload; None when the peer closed the connection between frames."""
    head = _read_exactly(conn, _LENGTH.size, eof_ok=True)
    if head is None:
        return None
    (size,) = _LENGTH.unpack(head)
    if size > limit:
        raise LinkBroken(f"a frame of {size} bytes is over the limit of {limit}")
    return _read_exactly(conn, size) or bytearray()


def _read_exactly(conn: socket.socket, size: int, eof_ok: bool = False) -> bytearray | None:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        count = conn.recv_into(view[got:])
        if not count:
            if eof_ok and not got:
                return None
            raise LinkBroken("the connection closed inside a frame")
        got += count
    return buffer


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(payload: bytes | bytearray) -> Any:
    return msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)


def reply_to(request: bytes | bytearray, read: Callable[[str, list[Any]], Any]) -> bytes:
    """The reply frame's payload to a request's payload: ``read(method, args)``'s result, or its error."""
    try:
        try:
            message = _unpack(request)
        except Exception as exc:
            raise InvalidInputError(f"a read request that is not msgpack: {exc}") from None
        if not (isinstance(message, list) and len(message) == 2 and isinstance(message[0], str) and isinstance(message[1], list)):
            raise InvalidInputError("a read request is [method, arguments]")
        return _pack([0, read(*message)])
    except Exception as exc:  # the caller gets the error; this replica goes on
        return _pack([1, type(exc).__name__, str(exc)])


class ReadServer:
    """A replica's listener: answers each request by ``read(method, args)``, each connection in a thread."""

    def __init__(self, read: Callable[[str, list[Any]], Any], context: ssl.SSLContext, host: str) -> None:
        self._read, self._context = read, context
        self._socket = socket.create_server((host, 0))
        self.address = (host, int(self._socket.getsockname()[1]))
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="fpmatch-replica-reads", daemon=True).start()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Stop listening and end every connection."""
        self._closed.set()
        with self._lock:
            ending = [self._socket, *self._open]
        for conn in ending:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return  # closed
            if not self._slots.acquire(blocking=False):
                conn.close()  # at its limit: the service falls back to Ray for this call
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        self._track(conn)
        link: ssl.SSLSocket | None = None
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(HANDSHAKE_TIMEOUT)
            link = self._context.wrap_socket(conn, server_side=True)
            self._track(link, instead_of=conn)
            link.settimeout(None)
            while not self._closed.is_set():
                request = read_frame(link, MAX_REQUEST_FRAME)
                if request is None:
                    return
                write_frame(link, reply_to(request, self._read))
        except (OSError, LinkBroken):  # the peer left, failed its handshake or broke the framing
            pass
        finally:
            for end in (link, conn):
                if end is not None:
                    self._track(None, instead_of=end)
                    end.close()
            self._slots.release()

    def _track(self, conn: socket.socket | None, instead_of: socket.socket | None = None) -> None:
        with self._lock:
            self._open.discard(instead_of)  # type: ignore[arg-type]
            if conn is not None:
                self._open.add(conn)


class ReadClient:
    """The service's end of the links to one replica: a pool of connections, one per call in flight."""

    def __init__(self, address: tuple[str, int], name: str, context: ssl.SSLContext, timeout: float) -> None:
        self.address, self._name, self._context, self._timeout = (str(address[0]), int(address[1])), name, context, timeout
        self._idle: list[ssl.SSLSocket] = []
        self._lock = threading.Lock()
        self.calls = 0  # answered over this link

    def send(self, method: str, args: tuple[Any, ...]) -> ssl.SSLSocket:
        """Send one call; :meth:`receive` its answer on the connection returned."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None:
                conn = self._connect()
            write_frame(conn, _pack([method, list(args)]))
            return conn
        except OSError as exc:
            if conn is not None:
                conn.close()
            raise LinkBroken(str(exc)) from None

    def receive(self, conn: ssl.SSLSocket) -> Any:
        try:
            payload = read_frame(conn, MAX_REPLY_FRAME)
            if payload is None:
                raise LinkBroken("the replica closed the connection")
            reply = _unpack(payload)
        except socket.timeout:
            conn.close()
            raise LinkTimeout() from None
        except (OSError, LinkBroken, ValueError) as exc:
            conn.close()
            raise LinkBroken(str(exc)) from None
        with self._lock:
            self._idle.append(conn)
            self.calls += 1
        if reply[0] == 0:
            return reply[1]
        raise _error(reply[1], reply[2])

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection(self.address, timeout=CONNECT_TIMEOUT)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = self._context.wrap_socket(raw, server_hostname=self._name)
        except BaseException:
            raw.close()
            raise
        conn.settimeout(self._timeout)
        return conn


def error_class(name: Any) -> type[Exception] | None:
    """The exception class a reply names: one of fpmatch's own errors, or one of Python's built-in ones."""
    if not isinstance(name, str):
        return None
    known = {kind.__name__: kind for kind in _subclasses(FpmatchError) if kind.__module__.startswith("fpmatch.")}
    builtin = getattr(builtins, name, None)
    return known.get(name) or (builtin if isinstance(builtin, type) and issubclass(builtin, Exception) else None)


def _error(name: Any, message: Any) -> Exception:
    """The replica's error as the same class here (FpmatchError for a class this side does not know)."""
    kind = error_class(name) or FpmatchError
    try:
        return kind(str(message))
    except Exception:  # a class whose constructor takes more than a message
        return FpmatchError(f"{name}: {message}")


def _subclasses(kind: type) -> list[type]:
    return [kind] + [k for sub in kind.__subclasses__() for k in _subclasses(sub)]

