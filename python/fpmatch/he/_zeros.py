"""Fresh SEAL encryptions of zero, read out of SEAL quickly and made on every core.

Each enrolled block or row absorbs fresh public-key encryptions of zero made by SEAL (through
TenSEAL's ``sealapi``); they are most of the cost of enrolment. Two things keep them fast:

* Reading a ciphertext: ``sealapi`` offers one coefficient per Python call. SEAL's own
  serialisation writes the whole ciphertext at once, so it is saved to an anonymous in-memory
  file (``memfd_create``: no name, gone with the process; elsewhere a private file under
  ``/dev/shm``, removed at once), read back and emptied, decompressed (SEAL compresses with zstd or zlib)
  and its trailing coefficient array taken, checked against its length and against values read
  through ``sealapi``. The file is overwritten by the next ciphertext and removed at the end.
* Cores: ``sealapi`` keeps the GIL while it encrypts, so the work goes to worker processes (one
  per core), each holding the same public context. A large request is split between this process
  and one fewer workers than the cores; a run of batches (new blocks of an enrolment) is made by
  the workers, one batch each at a time, while this process uses the batches already made.

A fresh encryption of zero is a one-time pad for the template added to it: it lives only in
this process's (and the worker's) memory and, until it is read, in that in-memory file.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ._packing import PACKED_BYTES
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


def seal_values(data: bytes, count: int, unzstd: "zstandard.ZstdDecompressor", array: "sealapi.DynArray") -> np.ndarray:
    """The ``count`` coefficients a SEAL-serialised ciphertext (or public key) ends with, as int64.

    ``array`` is the same object's ``dyn_array()``: the values are checked against it at both
    ends and the middle, so a layout this reader does not know is refused, never misread.
    """
    magic, header_size, _, _, compression, _, size = _HEADER.unpack_from(data)
    if magic != _SEAL_MAGIC or header_size != _HEADER.size or size != len(data):
        raise CiphertextFormatError("SEAL wrote a ciphertext this reader does not know")
    body = data[_HEADER.size :]
    if compression == _ZSTD:
        body = unzstd.decompress(body, max_output_size=8 * count + 4096)
    elif compression == _ZLIB:
        body = zlib.decompress(body)
    elif compression != 0:
        raise CiphertextFormatError(f"SEAL used compression {compression}, which this reader does not know")
    end = len(body) - 8 * count
    if end < 8 or struct.unpack_from("<Q", body, end - 8)[0] != count or array.size() != count:
        raise CiphertextFormatError("SEAL wrote a ciphertext of an unexpected size")
    values = np.frombuffer(body, dtype="<i8", offset=end)  # residues below q < 2**62: no sign to fix
    middle = count // 2
    if values[0] != array.at(0) or values[-1] != array.at(count - 1) or values[middle] != array.at(middle):
        raise CiphertextFormatError("SEAL's serialised ciphertext differs from the ciphertext")
    return values


class CiphertextReader:
    """The (2, N) coefficient array of a two-polynomial, one-prime SEAL ciphertext, in one read."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._folder: str | None = None
        self._fd: int | None = None
        if zstandard is not None:
            if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
                # An anonymous in-memory file: no name anywhere, gone with the process.
                self._fd = os.memfd_create("fpmatch-ciphertext", os.MFD_CLOEXEC)
                self._path = f"/proc/self/fd/{self._fd}"
            else:
                shm = "/dev/shm"
                self._folder = tempfile.mkdtemp(prefix="fpmatch-ct-", dir=shm if os.path.isdir(shm) else None)
                self._path = str(Path(self._folder) / "ciphertext")
                atexit.register(shutil.rmtree, self._folder, True)
            self._unzstd = zstandard.ZstdDecompressor()

    def read(self, ciphertext: "sealapi.Ciphertext") -> np.ndarray:
        n = self.n
        array = ciphertext.dyn_array()
        if self._folder is None and self._fd is None:
            return np.fromiter(map(array.at, range(2 * n)), dtype=np.int64, count=2 * n).reshape(2, n)
        ciphertext.save(self._path)
        if self._fd is not None:
            try:
                data = os.pread(self._fd, os.fstat(self._fd).st_size, 0)
            finally:
                os.ftruncate(self._fd, 0)  # the pad is not kept past this read
        else:
            try:
                with open(self._path, "rb") as f:
                    data = f.read()
            finally:
                os.unlink(self._path)  # no copy left behind, even if this process is killed later
        values = seal_values(data, 2 * n, self._unzstd, array)
        # The array sits at SEAL's offset in the serialised bytes: aligned for int64 only by chance.
        return np.require(values.reshape(2, n), requirements="AC")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __del__(self) -> None:
        self.close()


# -- worker processes ------------------------------------------------------------------------------
#
# A worker is ``python -m fpmatch.he._zero_worker`` on pipes: it imports nothing of the caller's
# program. Request: public context length (0: the one sent before), count, packed (0 or 1), then
# the context bytes; reply: count * N int64 of c0, then of c1 (6 bytes a value when packed). A
# worker that fails is dropped and its share made here. A worker starts in the background and
# says "R" once its imports are done; until then requests are made here, so the first large
# request never waits for an interpreter to start.

_REQUEST = struct.Struct("<QQQ")
_READY = b"R"
_lock = threading.Lock()
_workers: list["_Worker"] = []


class _Worker:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fpmatch.he._zero_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.loaded: bytes | None = None  # digest of the context it holds
        self.owner = os.getpid()  # a forked child must not share its pipes
        self.ready = False

    def is_ready(self, timeout: float = 0.0) -> bool:
        """Whether it has said it is ready (waiting up to ``timeout`` seconds)."""
        if not self.ready and self.process.stdout is not None:
            if select.select([self.process.stdout], [], [], timeout)[0]:
                self.ready = self.process.stdout.read(1) == _READY
                if not self.ready:
                    raise OSError("an encryption worker failed to start")
        return self.ready

    def ask(self, public: bytes, digest: bytes, count: int, packed: bool) -> None:
        send = public if digest != self.loaded else b""
        assert self.process.stdin is not None
        self.process.stdin.write(_REQUEST.pack(len(send), count, int(packed)) + send)
        self.process.stdin.flush()
        self.loaded = digest

    def answer(self, count: int, n: int, packed: bool) -> tuple[np.ndarray, np.ndarray]:
        assert self.process.stdout is not None
        width = PACKED_BYTES if packed else 8
        size = 2 * width * count * n
        data = bytearray(size)
        if self.process.stdout.readinto(data) != size:
            raise OSError("an encryption worker stopped")
        if packed:
            values = np.frombuffer(data, dtype=np.uint8).reshape(2, count, width * n)
        else:
            values = np.frombuffer(data, dtype="<i8").reshape(2, count, n)
        return values[0], values[1]

    def stop(self) -> None:
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
        except OSError:  # it had already stopped
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _cores() -> int:
    return os.cpu_count() or 1


def workers() -> int:
    """Worker processes (one per core when there are several): a large request is shared
    between this process and one fewer than the cores; batches of them between all of them."""
    return _cores() if _cores() > 1 else 0


def start_workers(wait: float = 0.0) -> int:
    """Start the worker processes now (they start on the first large request otherwise) and wait
    up to ``wait`` seconds for them to be ready. Returns how many are ready."""
    with _lock:
        _start()
        deadline = time.monotonic() + wait
        ready = 0
        for worker in list(_workers):
            try:
                ready += worker.is_ready(max(0.0, deadline - time.monotonic()))
            except OSError:
                _drop(worker)
        return ready


def _start() -> None:
    _workers[:] = [w for w in _workers if w.owner == os.getpid()]
    try:
        while len(_workers) < workers():
            _workers.append(_Worker())
    except OSError:  # no new process: the workers there are (or none) will do
        pass


def shutdown() -> None:
    """Stop the worker processes (they also stop when this process exits)."""
    with _lock:
        while _workers:
            _workers.pop().stop()


atexit.register(shutdown)


#: Makes ``count`` encryptions of zero in this process: (count, packed) -> (c0, c1).
Encrypt = Callable[[int, bool], "tuple[np.ndarray, np.ndarray]"]


def encrypt_shared(public: bytes, n: int, count: int, packed: bool, here: Encrypt) -> tuple[np.ndarray, np.ndarray]:
    """``count`` encryptions of zero (ring degree ``n``), shared between ``here(k, packed)`` (this
    process) and the workers."""
    if count < MIN_PARALLEL or _cores() == 1:
        return here(count, packed)
    with _lock:
        _start()
        ready = _ready_workers()[: _cores() - 1]  # with this process, one per core
        share = -(-count // (len(ready) + 1))
        digest = hashlib.sha256(public).digest()
        asked: list[tuple[_Worker, int]] = []
        mine = count
        for worker in ready:
            k = min(share, mine - share)
            if k <= 0:
                break
            try:
                worker.ask(public, digest, k, packed)
            except OSError:  # it stopped: its share stays here
                _drop(worker)
                continue
            asked.append((worker, k))
            mine -= k
        parts = []
        try:
            parts.append(here(mine, packed))
            for worker, k in asked:
                try:
                    parts.append(worker.answer(k, n, packed))
                except OSError:  # it failed: its share is made here, and it is replaced next time
                    _drop(worker)
                    parts.append(here(k, packed))
        except BaseException:
            for worker, _ in asked:  # a reply left unread would answer the next request
                _drop(worker)
            raise
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def encrypt_units(
    public: bytes, n: int, unit: int, units: int, packed: bool, here: Encrypt,
    use: Callable[[np.ndarray, np.ndarray], None],
) -> None:
    """``units`` batches of ``unit`` encryptions of zero, each handed to ``use(c0, c1)`` as soon
    as it is ready, in no set order.

    The workers (one per core) make the batches, one each at a time, while this process uses
    the finished ones: the caller's own work on a batch overlaps the encryption of the next. A
    worker that fails is dropped and its batch made here; with no worker ready, every batch is.
    Fewer batches than cores are each shared as :func:`encrypt_shared` shares one request.
    """
    if units < _cores():
        for _ in range(units):
            use(*encrypt_shared(public, n, unit, packed, here))
        return
    with _lock:
        _start()
        idle = _ready_workers()
        digest = hashlib.sha256(public).digest()
        left, busy = units, []

        def dispatch() -> None:
            nonlocal left
            while left and idle:
                worker = idle.pop()
                try:
                    worker.ask(public, digest, unit, packed)
                except OSError:
                    _drop(worker)
                    continue
                busy.append(worker)
                left -= 1

        try:
            dispatch()
            while left or busy:
                if not busy:  # no worker left: this process makes the rest
                    left -= 1
                    use(*here(unit, packed))
                    continue
                readable = select.select([w.process.stdout for w in busy], [], [])[0]
                worker = next(w for w in busy if w.process.stdout in readable)
                busy.remove(worker)
                try:
                    batch = worker.answer(unit, n, packed)
                except OSError:  # it failed: its batch is made again
                    _drop(worker)
                    left += 1
                    dispatch()
                    continue
                idle.append(worker)
                dispatch()  # it works on the next batch while this one is used
                use(*batch)
        except BaseException:
            for worker in busy:  # a reply left unread would answer the next request
                _drop(worker)
            raise


def _ready_workers() -> list[_Worker]:
    """The started workers that are ready (those that failed to start are dropped)."""
    ready = []
    for worker in list(_workers):
        try:
            if worker.is_ready():
                ready.append(worker)
        except OSError:
            _drop(worker)
    return ready


def _drop(worker: _Worker) -> None:
    if worker in _workers:
        _workers.remove(worker)
    worker.stop()


def serve() -> None:
    """The worker's loop: answer requests until the caller closes the pipe."""
    from .context import PublicContext

    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    replies.write(_READY)
    replies.flush()
    context = None
    while True:
        head = requests.read(_REQUEST.size)
        if len(head) < _REQUEST.size:
            return
        public_len, count, packed = _REQUEST.unpack(head)
        if public_len:
            context = PublicContext._from_parent(requests.read(public_len))
        if context is None:
            return
        c0, c1 = context.encrypt_zeros_here(count, bool(packed))
        for part in (c0, c1):
            replies.write(memoryview(np.ascontiguousarray(part if packed else part.astype("<i8", copy=False))).cast("B"))
        replies.flush()

