"""Serialised TenSEAL contexts are first read in a separate process.

SEAL can end the process that reads some malformed serialised contexts: an exception raised while
another unwinds (its decompressing reader's destructor throws) calls ``std::terminate``, which no
``try`` in Python can catch. Context bytes that come from a file or a peer are therefore read once
by a child interpreter; only if it reads them and lives are they read in this process. One child serves every
check of a process (started on first use, ended after :data:`IDLE_SECONDS` without one, replaced
when a check ends it). Each context is checked once per process (by the SHA-256 of its bytes), and
contexts this process serialised itself are not checked.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import select
import struct
import subprocess
import sys
import threading
import time

import tenseal as ts

from .errors import CiphertextFormatError

# The child answers each length-prefixed context with b"0" (read) or b"1" and a length-prefixed
# UTF-8 message (refused by a Python exception: the bytes are then never read in this process).
# Anything else, or no answer, means the bytes ended it.
_SERVE = """\
import struct, sys
try:
    import _tenseal_cpp as tenseal_cpp
except ImportError:
    import tenseal._tenseal_cpp as tenseal_cpp
source, sink = sys.stdin.buffer, sys.stdout.buffer
while True:
    head = source.read(8)
    if len(head) < 8:
        break
    (size,) = struct.unpack("<Q", head)
    data = source.read(size)
    try:
        tenseal_cpp.TenSEALContext.deserialize(data)
        answer = b"0"
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"[:1000].encode("utf-8", "replace")
        answer = b"1" + struct.pack("<I", len(message)) + message
    del data
    sink.write(answer)
    sink.flush()
"""
#: Seconds one check may take (a context of the largest parameter set reads in well under one).
CHECK_TIMEOUT = 120.0
#: Seconds the child waits for the next check before it is ended.
IDLE_SECONDS = 30.0

_lock = threading.Lock()
_checked: set[bytes] = set()  # digests of context bytes known to read without ending the process


class _Reader:
    """The child process that reads contexts first (use under ``_lock``)."""

    def __init__(self) -> None:
        self._child: subprocess.Popen[bytes] | None = None
        self._owner = 0  # pid that started the child: a forked copy must not share its pipes
        self._last_used = 0.0

    def check(self, data: bytes) -> None:
        """Returns if the child read ``data``; raises :class:`CiphertextFormatError` if it refused
        the bytes, if they ended it, or if it could not run."""
        child = self._running()
        try:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(struct.pack("<Q", len(data)) + data)
            child.stdin.flush()
            ready, _, _ = select.select([child.stdout], [], [], CHECK_TIMEOUT)
            answer = child.stdout.read(1) if ready else b""
            if answer == b"1":
                (size,) = struct.unpack("<I", child.stdout.read(4))
                message = child.stdout.read(size).decode("utf-8", "replace")
        except (OSError, struct.error):  # the child ended while reading: a broken pipe or a short answer
            ready, answer = [True], b""
        if answer not in (b"0", b"1"):
            status = self.stop()
            why = f"exit status {status}" if ready else f"no answer in {CHECK_TIMEOUT:.0f} s"
            raise CiphertextFormatError(
                "SEAL could not read this serialised context without ending the process that tried "
                f"({why}): damaged or crafted bytes"
            )
        self._last_used = time.monotonic()
        if answer == b"1":
            raise CiphertextFormatError(f"not a serialised TenSEAL context: {message}")

    def stop(self) -> int | None:
        """End the child; its exit status (None if it had to be killed)."""
        child, self._child = self._child, None
        if child is None or self._owner != os.getpid():
            return None
        for stream in (child.stdin, child.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass
        try:
            return child.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            return None

    def _running(self) -> subprocess.Popen[bytes]:
        if self._child is not None and self._owner == os.getpid() and self._child.poll() is None:
            return self._child
        if self._owner == os.getpid():
            self.stop()
        self._child = None
        if not sys.executable:
            raise CiphertextFormatError("cannot check a serialised context: no Python interpreter to run the check")
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-c", _SERVE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise CiphertextFormatError(f"could not check this serialised context in a separate process: {exc}") from None
        self._owner = os.getpid()
        self._last_used = time.monotonic()
        threading.Thread(target=self._end_when_idle, args=(self._child,), daemon=True).start()
        return self._child

    def _end_when_idle(self, child: subprocess.Popen[bytes]) -> None:
        """Ends ``child`` once no check has used it for IDLE_SECONDS (one such thread per child)."""
        while True:
            with _lock:
                if self._child is not child:
                    return
                idle = time.monotonic() - self._last_used
                if idle >= IDLE_SECONDS:
                    self.stop()
                    return
            time.sleep(IDLE_SECONDS - idle)


_reader = _Reader()


@atexit.register
def _stop_at_exit() -> None:
    if _lock.acquire(timeout=5.0):  # a check still running in another thread: its child ends on EOF anyway
        try:
            _reader.stop()
        finally:
            _lock.release()


def trust(data: bytes) -> None:
    """Mark context bytes this process made itself as safe to read here."""
    digest = hashlib.sha256(data).digest()
    with _lock:
        _checked.add(digest)


def context_from(data: bytes) -> ts.Context:
    """``tenseal.context_from(data)``, after the child process has read the same bytes and lived.

    Bytes the child refuses, or that end it, raise :class:`CiphertextFormatError` and are never
    read in this process.
    """
    digest = hashlib.sha256(data).digest()
    with _lock:
        if digest not in _checked:
            _reader.check(data)
            _checked.add(digest)
    return ts.context_from(data)
