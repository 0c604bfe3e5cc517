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

import msgpack

from fpmatch import EnrolmentRecord, Gallery, HashKey, ProbeMessage, ServiceKey, load_index
from fpmatch.attestation import ProbeAttestation, SignedTemplate
from fpmatch.errors import FpmatchError
from fpmatch.he.attested import AttestedRequest, read_template
from fpmatch.he import reclaim
from fpmatch.he.context import PublicContext
from fpmatch.he.keyholder import KeyHolder
from fpmatch.he.scores import EncryptedScores
from fpmatch.store import DATABASE, Store
from fpmatch.he import remote
from fpmatch.he.ledger import Budgets, Ledger
from fpmatch.he.server import KeyHolderService, lifted_rate
from fpmatch.api.app import create_app
from fpmatch.api.tokens import TokenStore
from fpmatch.cluster.replica import ShardReplica
from fpmatch.cluster.wire import error_class, reply_to

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


def attested_request(data: bytes) -> None:
    """An attested request as a key holder in attested mode parses it, before any signature is checked:
    the request, its probe message and probe attestation, each signed template and its ciphertext."""
    try:
        request = AttestedRequest.from_bytes(data, max_templates=MAX_ROWS)
        probe = ProbeMessage.from_bytes(request.probe)
        if probe.attestation is not None:
            ProbeAttestation.from_bytes(probe.attestation)
        for template in request.templates:
            read_template(SignedTemplate.from_bytes(template).ciphertext, key_id=HE_KEY_ID, n=RING_N, q=RING_Q)
    except FpmatchError:
        return
    if request.to_bytes() != data:
        raise AssertionError("an accepted attested request does not write back to the same bytes")


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


def he_key_file(data: bytes) -> None:
    """An HE key holder's key file as written unsealed (a sealed one is authenticated before it is read)."""
    try:
        holder = KeyHolder.from_bytes(data)
    except FpmatchError:
        return
    assert len(holder.key_id) == 16, "a key file accepted with a malformed key id"


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


_KEYHOLDER: list = []


def keyholder_request(data: bytes) -> None:
    """A request as the key holder service receives it from an authenticated caller.

    Whatever arrives, the service answers with a reply message (a typed error at worst)
    and never raises; the reply parses.
    """
    if not _KEYHOLDER:
        directory = Path(tempfile.mkdtemp(prefix="fpmatch-fuzz-kh-"))
        budgets = Budgets(requests_per_second=1e9, burst=10**9, caller_requests_per_day=10**9,
                          caller_scores_per_day=10**12, caller_released_per_day=10**12,
                          subject_requests_per_day=10**9)  # fmt: skip
        holder = keyholder()
        _KEYHOLDER.append(KeyHolderService(holder, Ledger(directory / "ledger.sqlite", budgets), release_coarse=True))
    service = _KEYHOLDER[0]
    answer = service.handle("fuzzer", with_key_id(data, service.holder.key_id))
    header, _ = remote._unpack(answer)
    assert isinstance(header.get("ok"), bool), "a reply without its ok flag"


def keyholder() -> KeyHolder:
    """The target's key holder: the one whose key seeds.py saved (``FPMATCH_FUZZ_KEYHOLDER``), else a new one."""
    import os

    if not _HOLDER:
        saved = os.environ.get("FPMATCH_FUZZ_KEYHOLDER")
        _HOLDER.append(KeyHolder.load(saved, limits=lifted_rate()) if saved else KeyHolder(limits=lifted_rate()))
    return _HOLDER[0]


_HOLDER: list = []


def with_key_id(message: bytes, key_id: str) -> bytes:
    """The message with its payload's key id (bytes 8-16 after the magic) set to ``key_id``.

    Callers know the key id (it is public); without this the fuzzer would have to guess
    this key holder's random id before it reached anything past the key id check.
    """
    try:
        header, payload = remote._unpack(message)
    except ValueError:  # also the format errors, which are ValueErrors
        return message
    if len(payload) < 16:
        return message
    cut = len(message) - len(payload)
    return message[: cut + 8] + bytes.fromhex(key_id) + message[cut + 16 :]


_API: list = []
#: Routes the HTTP target sends to; the first input byte picks one, the rest is the body.
API_ROUTES = (
    ("POST", "/v1/consents"),
    ("POST", "/v1/enrolments"),
    ("POST", "/v1/verify"),
    ("POST", "/v1/identify"),
    ("POST", "/v1/consents/ann/withdraw"),
    ("GET", "/v1/consents/ann"),
    ("DELETE", "/v1/subjects/bob"),
)


def http_request(data: bytes) -> None:
    """An HTTP request to the matching service's API, with a valid token and any body.

    Every answer is a JSON document with a status below 500: errors are typed
    (4xx with a stable code), never an internal error.
    """
    if not data:
        return
    client, token = _api()
    method, path = API_ROUTES[data[0] % len(API_ROUTES)]
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    response = client.request(method, path, content=data[1:], headers=headers)
    assert response.status_code < 500, f"{method} {path}: {response.status_code} {response.text[:300]}"
    body = response.json()
    if response.status_code >= 400:
        assert isinstance(body.get("error"), dict) and body["error"].get("code"), body


def _api() -> tuple:
    """A hash-scheme service with two consenting, enrolled subjects, calibrated, behind the API."""
    if not _API:
        from datetime import timedelta

        import numpy as np
        from fastapi.testclient import TestClient

        from fpmatch import MatchingService

        directory = Path(tempfile.mkdtemp(prefix="fpmatch-fuzz-api-"))
        edge = api_edge()
        service = MatchingService.open(directory / "store", SERVICE_KEY, edge=edge.profile)
        rng = np.random.default_rng(7)
        people = rng.standard_normal((40, 16)).astype(np.float32)
        samples = np.repeat(people, 2, axis=0) + 0.1 * rng.standard_normal((80, 16)).astype(np.float32)
        for name, template in zip(("ann", "bob"), people):
            service.grant_consent(name, {"entry"}, notice_version="n1", evidence_ref="form", method="signed-form",
                                  separate=True, retention=timedelta(days=30))  # fmt: skip
            service.enrol(name, edge.enrolment(template))
        service.calibrate(calibration=edge.calibration(samples, np.repeat(np.arange(40), 2), 1e-2))
        tokens = TokenStore(directory / "tokens.json")
        _API.append((TestClient(create_app(service, tokens)), tokens.issue("fuzzer")))
    return _API[0]


def replica_read(data: bytes) -> None:
    """A read as a shard replica's link receives it from a certified peer: the first byte picks a
    ``hash`` or a ``hybrid`` replica (a few subjects each), the rest is the frame's payload.

    Every reply is an answer or an fpmatch error, and the replica's subjects are unchanged.
    """
    if not data:
        return
    replica = _replicas()[data[0] % 2]
    reply = msgpack.unpackb(reply_to(data[1:], replica.read), raw=False)
    assert reply[0] == 0 or issubclass(error_class(reply[1]) or Exception, FpmatchError), reply
    assert replica.ping() == len(REPLICA_SUBJECTS)


#: The subjects of the replica_read target's replicas, stored under ids 0, 1, 2.
REPLICA_SUBJECTS = ("ann", "bob", "cat")


def _replicas() -> list:
    """A hash and a hybrid shard replica holding REPLICA_SUBJECTS (made once)."""
    if not _REPLICAS:
        import numpy as np

        from fpmatch import CaptureEdge

        templates = np.random.default_rng(3).standard_normal((len(REPLICA_SUBJECTS), 16)).astype(np.float32)
        for edge in (api_edge(), CaptureEdge(HASH_KEY, 16, scheme="hybrid", public_context=keyholder().public_context())):
            replica = ShardReplica(edge.profile.to_dict(), "flat", {})
            messages = [edge.enrolment(t).to_bytes() for t in templates]
            staged = replica.stage_add(list(REPLICA_SUBJECTS), messages, {})
            replica.replay(staged["change"], list(range(len(REPLICA_SUBJECTS))))
            _REPLICAS.append(replica)
    return _REPLICAS


_REPLICAS: list = []


def api_edge() -> "CaptureEdge":
    from fpmatch import CaptureEdge

    return CaptureEdge(HASH_KEY, 16, scheme="hash", bits=64)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "edge_enrolment": edge_enrolment,
    "edge_probe": edge_probe,
    "attested_request": attested_request,
    "encrypted_scores": encrypted_scores,
    "reclaim_request": reclaim_request,
    "reclaim_reply": reclaim_reply,
    "index_file": index_file,
    "index_file_signed": index_file_signed,
    "gallery_file": gallery_file,
    "key_file": key_file,
    "public_context": public_context,
    "he_key_file": he_key_file,
    "store_file": store_file,
    "keyholder_request": keyholder_request,
    "http_request": http_request,
    "replica_read": replica_read,
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
