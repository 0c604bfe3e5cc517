"""Serialised TenSEAL contexts are first read in a separate process.

SEAL can end the process that reads some malformed serialised contexts: an exception raised while
another unwinds (its decompressing reader's destructor throws) calls ``std::terminate``, which no
``try`` in Python can catch. Context bytes that come from a file or a peer are therefore read once
by a child interpreter; only if it lives are they read in this process. One child serves every
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

import tenseal as ts

from .errors import CiphertextFormatError

# The child answers each length-prefixed context with one byte: b"0" read, b"1" refused by a
# Python exception (the caller then gets TenSEAL's own error by reading it here). Anything else,
# or no answer, means the bytes ended it.
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
    except Exception:
        answer = b"1"
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
        self._timer: threading.Timer | None = None

    def check(self, data: bytes) -> bool:
        """True if the child read ``data``, False if it refused it with a Python error.

        Raises :class:`CiphertextFormatError` if the bytes ended the child or it could not run.
        """
        self._cancel_idle()
        child = self._running()
        try:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(struct.pack("<Q", len(data)) + data)
            child.stdin.flush()
            ready, _, _ = select.select([child.stdout], [], [], CHECK_TIMEOUT)
            answer = child.stdout.read(1) if ready else b""
        except OSError:  # the child ended while reading: a broken pipe
            ready, answer = [True], b""
        if answer not in (b"0", b"1"):
            status = self.stop()
            why = f"exit status {status}" if ready else f"no answer in {CHECK_TIMEOUT:.0f} s"
            raise CiphertextFormatError(
                "SEAL could not read this serialised context without ending the process that tried "
                f"({why}): damaged or crafted bytes"
            )
        self._idle_later()
        return answer == b"0"

    def stop(self) -> int | None:
        """End the child; its exit status (None if it had to be killed)."""
        self._cancel_idle()
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
        return self._child

    def _idle_later(self) -> None:
        self._timer = threading.Timer(IDLE_SECONDS, self._stop_if_idle)
        self._timer.daemon = True
        self._timer.start()

    def _stop_if_idle(self) -> None:
        with _lock:
            if self._timer is threading.current_thread():  # not cancelled and replaced meanwhile
                self.stop()

    def _cancel_idle(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_reader = _Reader()


@atexit.register
def _stop_at_exit() -> None:
    with _lock:
        _reader.stop()


def trust(data: bytes) -> None:
    """Mark context bytes this process made itself as safe to read here."""
    digest = hashlib.sha256(data).digest()
    with _lock:
        _checked.add(digest)


def context_from(data: bytes) -> ts.Context:
    """``tenseal.context_from(data)``, after the child process has read the same bytes and lived.

    Bytes that end the child raise :class:`CiphertextFormatError`; other bad bytes raise what
    TenSEAL raises here, as before.
    """
    digest = hashlib.sha256(data).digest()
    with _lock:
        if digest not in _checked and _reader.check(data):
            _checked.add(digest)
    return ts.context_from(data)
