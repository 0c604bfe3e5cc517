"""Fresh SEAL encryptions of zero, read out of SEAL quickly and made on every core.

Each enrolled block or row absorbs fresh public-key encryptions of zero made by SEAL (through
TenSEAL's ``sealapi``); they are most of the cost of enrolment. Two things keep them fast:

* Reading a ciphertext: ``sealapi`` offers one coefficient per Python call. SEAL's own
  serialisation writes the whole ciphertext at once, so it is saved to a private file in memory
  (``/dev/shm`` where there is one), read back, decompressed (SEAL compresses with zstd or zlib)
  and its trailing coefficient array taken, checked against its length and against values read
  through ``sealapi``. The file is overwritten by the next ciphertext and removed at the end.
* Cores: ``sealapi`` keeps the GIL while it encrypts, so large requests are split between this
  process and worker processes (one fewer than the cores), each holding the same public context.

A fresh encryption of zero is a one-time pad for the template added to it: it lives only in
this process's (and the worker's) memory and in that short-lived in-memory file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import zlib
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import CiphertextFormatError

try:
    import zstandard
except ImportError:  # reading falls back to one coefficient per call
    zstandard = None

if TYPE_CHECKING:
    from tenseal import sealapi

    from ._ring import Ring

#: Requests smaller than this stay in the calling process (a worker round trip costs more).
MIN_PARALLEL = 64
_HEADER = struct.Struct("<HBBBBHQ")  # SEAL's header: magic, header size, version, compression, reserved, size
_SEAL_MAGIC = 0xA15E
_ZLIB, _ZSTD = 1, 2


class CiphertextReader:
    """The (2, N) coefficient array of a two-polynomial, one-prime SEAL ciphertext, in one read."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._folder: str | None = None
        if zstandard is not None:
            shm = "/dev/shm"
            self._folder = tempfile.mkdtemp(prefix="fpmatch-ct-", dir=shm if os.path.isdir(shm) else None)
            self._path = str(Path(self._folder) / "ciphertext")
            self._unzstd = zstandard.ZstdDecompressor()

    def read(self, ciphertext: "sealapi.Ciphertext") -> np.ndarray:
        n = self.n
        array = ciphertext.dyn_array()
        if self._folder is None:
            return np.fromiter(map(array.at, range(2 * n)), dtype=np.int64, count=2 * n).reshape(2, n)
        ciphertext.save(self._path)
        with open(self._path, "rb") as f:
            data = f.read()
        magic, header_size, _, _, compression, _, size = _HEADER.unpack_from(data)
        if magic != _SEAL_MAGIC or header_size != _HEADER.size or size != len(data):
            raise CiphertextFormatError("SEAL wrote a ciphertext this reader does not know")
        body = data[_HEADER.size :]
        if compression == _ZSTD:
            body = self._unzstd.decompress(body, max_output_size=64 * n + 4096)
        elif compression == _ZLIB:
            body = zlib.decompress(body)
        elif compression != 0:
            raise CiphertextFormatError(f"SEAL used compression {compression}, which this reader does not know")
        end = len(body) - 16 * n
        if end < 8 or struct.unpack_from("<Q", body, end - 8)[0] != 2 * n:
            raise CiphertextFormatError("SEAL wrote a ciphertext of an unexpected size")
        values = np.frombuffer(body, dtype="<u8", offset=end).astype(np.int64)
        if values[0] != array.at(0) or values[-1] != array.at(2 * n - 1) or values[n] != array.at(n):
            raise CiphertextFormatError("SEAL's serialised ciphertext differs from the ciphertext")
        return values.reshape(2, n)

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __del__(self) -> None:
        self.close()


# -- worker processes ------------------------------------------------------------------------------

_pool: ProcessPoolExecutor | None = None
_pool_workers = 0
_worker_contexts: dict[bytes, object] = {}  # in a worker: public context digest -> PublicContext


def workers() -> int:
    """Worker processes large requests are shared with (one fewer than the cores)."""
    return max(0, (os.cpu_count() or 1) - 1)


def _worker_encrypt(public: bytes, digest: bytes, count: int) -> tuple[np.ndarray, np.ndarray]:
    from .context import PublicContext  # in the worker process

    context = _worker_contexts.get(digest)
    if context is None:
        context = _worker_contexts[digest] = PublicContext(public)
    return context.encrypt_zeros_here(count)  # type: ignore[attr-defined]


def _executor(n: int) -> ProcessPoolExecutor:
    global _pool, _pool_workers
    if _pool is None or _pool_workers != n:
        if _pool is not None:
            _pool.shutdown()
        # spawn: a fresh interpreter, nothing of this process's memory (or threads) copied.
        _pool, _pool_workers = ProcessPoolExecutor(n, mp_context=get_context("spawn")), n
    return _pool


def shutdown() -> None:
    """Stop the worker processes (they also stop when this process exits)."""
    global _pool
    if _pool is not None:
        _pool.shutdown()
        _pool = None


def encrypt_shared(public: bytes, count: int, here) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """``count`` encryptions of zero, shared between ``here(k)`` (this process) and the workers."""
    n_workers = workers()
    if count < MIN_PARALLEL or n_workers == 0:
        return here(count)
    share = -(-count // (n_workers + 1))
    digest = hashlib.sha256(public).digest()
    pool = _executor(n_workers)
    jobs: list[Future] = []
    start = share
    while start < count:
        jobs.append(pool.submit(_worker_encrypt, public, digest, min(share, count - start)))
        start += share
    parts = [here(share)] + [job.result() for job in jobs]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
