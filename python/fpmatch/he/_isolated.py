"""Serialised TenSEAL contexts are first read in a throwaway process.

SEAL can end the process that reads some malformed serialised contexts: an exception raised while
another unwinds (its decompressing reader's destructor throws) calls ``std::terminate``, which no
``try`` in Python can catch. Context bytes that come from a file or a peer are therefore read once
by a child interpreter; only if it exits normally are they read in this process. Each context is
checked once per process (by the SHA-256 of its bytes), and contexts this process serialised
itself are not checked.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading

import tenseal as ts

from .errors import CiphertextFormatError

_READ = """\
import sys
try:
    import _tenseal_cpp as tenseal_cpp
except ImportError:
    import tenseal._tenseal_cpp as tenseal_cpp
tenseal_cpp.TenSEALContext.deserialize(sys.stdin.buffer.read())
"""
#: Seconds the child may take (a context of the largest parameter set reads in well under one).
CHECK_TIMEOUT = 120.0
_lock = threading.Lock()
_checked: set[bytes] = set()  # digests of context bytes known to read without ending the process


def trust(data: bytes) -> None:
    """Mark context bytes this process made itself as safe to read here."""
    digest = hashlib.sha256(data).digest()
    with _lock:
        _checked.add(digest)


def context_from(data: bytes) -> ts.Context:
    """``tenseal.context_from(data)``, after a child process has read the same bytes and lived.

    Bytes that end the child raise :class:`CiphertextFormatError`; other bad bytes raise what
    TenSEAL raises here, as before.
    """
    digest = hashlib.sha256(data).digest()
    with _lock:
        known = digest in _checked
    if not known and sys.executable:
        try:
            run = subprocess.run(
                [sys.executable, "-c", _READ], input=data, capture_output=True, timeout=CHECK_TIMEOUT
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CiphertextFormatError(f"could not check this serialised context in a separate process: {exc}") from None
        if run.returncode < 0 or run.returncode > 1:  # killed by a signal, or aborted: not a Python error
            raise CiphertextFormatError(
                "SEAL could not read this serialised context without ending the process that tried "
                f"(exit status {run.returncode}): damaged or crafted bytes"
            )
        if run.returncode == 0:
            trust(data)
    return ts.context_from(data)
