"""Fuzz targets: one function per parser of bytes fpmatch may receive from someone else.

Each target takes arbitrary bytes and returns normally when the parser accepted them or
refused them with a typed fpmatch error (:class:`fpmatch.errors.FpmatchError`); anything
else (another exception, a crash, a hang) is a finding. Where a parser accepts bytes, the
target also checks that writing the result back gives the same bytes: nothing is changed
silently on the way in.

Used by ``fuzz/run.py`` (coverage-guided runs) and by ``tests/test_fuzz_smoke.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from fpmatch import EnrolmentRecord, Gallery, HashKey, ProbeMessage, ServiceKey, load_index
from fpmatch.errors import FpmatchError
from fpmatch.he import reclaim
from fpmatch.he.context import PublicContext
from fpmatch.he.scores import EncryptedScores
from fpmatch.store import DATABASE, Store

# Every parser is imported above, not in its target: the fuzzer instruments modules as they are imported.

#: Fixed keys and ring, so that seeds made by seeds.py stay valid.
HASH_KEY = HashKey(bytes(range(32)))
SERVICE_KEY = ServiceKey(bytes(range(100, 132)))
INDEX_MAC = bytes(range(200, 232))
HE_KEY_ID = "0123456789abcdef"
RING_N = 16
RING_Q = (1 << 40) - 87
MAX_ROWS = 4


def edge_enrolment(data: bytes) -> None:
    _round_trip(data, EnrolmentRecord.from_bytes)


def edge_probe(data: bytes) -> None:
    _round_trip(data, ProbeMessage.from_bytes)


def encrypted_scores(data: bytes) -> None:
    _round_trip(data, lambda raw: EncryptedScores.from_bytes(raw, key_id=HE_KEY_ID, n=RING_N, q=RING_Q))


def reclaim_request(data: bytes) -> None:
    try:
        c1, mask = reclaim.parse_request(data, key_id=HE_KEY_ID, n=RING_N, q=RING_Q, max_rows=MAX_ROWS)
    except FpmatchError:
        return
    assert reclaim.reclaim_request(HE_KEY_ID, RING_Q, c1, mask) == data, "a reclaim request was changed"


def reclaim_reply(data: bytes) -> None:
    rows = max(1, min(MAX_ROWS, (len(data) - 32) // (16 * RING_N)))
    try:
        c0, c1 = reclaim.parse_reply(data, key_id=HE_KEY_ID, n=RING_N, q=RING_Q, rows=rows)
    except FpmatchError:
        return
    assert reclaim.reclaim_reply(HE_KEY_ID, RING_Q, c0, c1) == data, "a reclaim reply was changed"


def index_file(data: bytes) -> None:
    """Bytes as they come: nothing is parsed before the tag verifies."""
    try:
        load_index(data, INDEX_MAC)
    except FpmatchError:
        return


def index_file_signed(data: bytes) -> None:
    """What parses an index after its tag verified: fpmatch's framing around a real FAISS payload.

    FAISS reads authenticated bytes as trusted (it has no limits), so its payload is not
    mutated: the input is the framing (header, labels, kind-specific bytes) and the
    target puts a genuine payload in it and signs the result under the key.
    """
    if len(data) < 17:
        return
    payload = _payloads()[data[0] % 2]
    body = b"FPMATCHI" + data[1:17] + len(payload).to_bytes(8, "little") + payload + data[17:]
    try:
        load_index(body + hmac.new(INDEX_MAC, body, hashlib.sha256).digest(), INDEX_MAC)
    except FpmatchError:
        return


_PAYLOADS: list[bytes] = []


def _payloads() -> list[bytes]:
    """The FAISS payloads of a small flat and a small HNSW index."""
    if not _PAYLOADS:
        for index in _small_indexes()[:2]:
            data = index.serialize(INDEX_MAC)
            size = int.from_bytes(data[24:32], "little")
            _PAYLOADS.append(data[32 : 32 + size])
    return _PAYLOADS


def _small_indexes() -> list:
    """Flat, HNSW and IVF indexes of a few 64-bit codes (seeds and payloads)."""
    import numpy as np

    from fpmatch import FlatIndex, HNSWIndex, IVFIndex

    codes = np.random.default_rng(5).integers(0, 256, size=(6, 8), dtype=np.uint8)
    ids = np.arange(10, 16, dtype=np.int64)
    flat, hnsw, ivf = FlatIndex(64), HNSWIndex(64, m=4), IVFIndex(64, nlist=2, nprobe=2, rerank=4)
    ivf.train(codes)
    for index in (flat, hnsw, ivf):
        index.add(codes, ids)
    hnsw.remove(np.array([12], dtype=np.int64))
    return [flat, hnsw, ivf]


def index_framing(data: bytes) -> bytes:
    """The framing of serialised index bytes, as index_file_signed takes it (for seeds)."""
    size = int.from_bytes(data[24:32], "little")
    kind = int.from_bytes(data[12:16], "little")
    return bytes([1 if kind == 2 else 0]) + data[8:24] + data[32 + size : -32]


def gallery_file(data: bytes) -> None:
    """A saved gallery file as it comes (authenticated before anything is parsed)."""
    if not _STORE_DIR:
        _STORE_DIR.append(Path(tempfile.mkdtemp(prefix="fpmatch-fuzz-")))
    path = _STORE_DIR[0] / "gallery.fpg"
    path.write_bytes(data)
    try:
        Gallery.load(path, HASH_KEY)
    except FpmatchError:
        return


def key_file(data: bytes) -> None:
    for kind in (HashKey, ServiceKey):
        try:
            key = kind.from_file_bytes(data)
        except FpmatchError:
            continue
        assert len(key.secret) >= 16


def public_context(data: bytes) -> None:
    try:
        PublicContext(data)
    except FpmatchError:
        return


_STORE_DIR: list[Path] = []


def store_file(data: bytes) -> None:
    """A whole database file as the store finds it on disk."""
    if not _STORE_DIR:
        _STORE_DIR.append(Path(tempfile.mkdtemp(prefix="fpmatch-fuzz-")))
    directory = _STORE_DIR[0] / "store"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700)
    (directory / DATABASE).write_bytes(data)
    try:
        store = Store.open(directory, SERVICE_KEY)
    except FpmatchError:
        return
    try:
        store.templates()
        store.rows()
        store.consents()
        store.audit_entries()
        store.verify()
    except FpmatchError:
        pass
    finally:
        store.close()


TARGETS: dict[str, Callable[[bytes], None]] = {
    "edge_enrolment": edge_enrolment,
    "edge_probe": edge_probe,
    "encrypted_scores": encrypted_scores,
    "reclaim_request": reclaim_request,
    "reclaim_reply": reclaim_reply,
    "index_file": index_file,
    "index_file_signed": index_file_signed,
    "gallery_file": gallery_file,
    "key_file": key_file,
    "public_context": public_context,
    "store_file": store_file,
}


def _round_trip(data: bytes, parse: Callable[[bytes], object]) -> None:
    try:
        parsed = parse(data)
    except FpmatchError:
        return
    assert parsed.to_bytes() == data, "accepted bytes were changed"  # type: ignore[attr-defined]


def corpus_dir(target: str) -> Path:
    return Path(__file__).resolve().parent / "corpus" / target


__all__ = ["TARGETS", "corpus_dir"]
