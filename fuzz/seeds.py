"""Writes the seed corpus: a few valid inputs per fuzz target, made with the targets' fixed keys.

    python fuzz/seeds.py [DIRECTORY] [--public-context]

The public context and key holder seeds (a real TenSEAL context, hundreds of kilobytes)
are made only with --public-context, which also saves the key the key holder target
must load (``FPMATCH_FUZZ_KEYHOLDER``); ``make fuzz`` makes them in its build directory.
"""

from __future__ import annotations

import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import targets  # noqa: E402
from fpmatch import CancellableHash, CaptureEdge, EnrolmentRecord, Gallery, ProbeMessage  # noqa: E402


def seeds(public_context: bool = False) -> dict[str, list[bytes]]:
    rng = np.random.default_rng(1)
    edge = CaptureEdge(targets.HASH_KEY, 16, scheme="hash", bits=64)
    template = rng.standard_normal((2, 16)).astype(np.float32)
    pid = edge.profile.profile_id
    values = rng.integers(-(1 << 20), 1 << 20, size=16, dtype=np.int64)
    out: dict[str, list[bytes]] = {
        "edge_enrolment": [
            edge.enrolment(template[0]).to_bytes(),
            EnrolmentRecord(pid, np.arange(8, dtype=np.uint8), None, values).to_bytes(),
            EnrolmentRecord(pid, None, None, values).to_bytes(),
        ],
        "edge_probe": [
            edge.probe(template[1]).to_bytes(),
            ProbeMessage(pid, None, None, values).to_bytes(),
        ],
    }
    from fpmatch.he import reclaim
    from fpmatch.he.scores import EncryptedScores

    n, q = targets.RING_N, targets.RING_Q
    a = rng.integers(0, q, size=(2, n), dtype=np.int64)
    b = rng.integers(0, q, size=3, dtype=np.int64)
    scores = EncryptedScores(targets.HE_KEY_ID, 20, q, a, b, np.array([0, 5, 15]), np.array([0, 1, 1]))
    out["encrypted_scores"] = [scores.to_bytes()]
    out["attested_request"] = [attested_seed(pid, values, rng)]
    mask = rng.integers(0, 2, size=(2, n)).astype(bool)
    out["reclaim_request"] = [reclaim.reclaim_request(targets.HE_KEY_ID, q, a - q // 2, mask)]
    centred = rng.integers(-(q // 2), q // 2, size=(2, 2, n), dtype=np.int64)
    out["reclaim_reply"] = [reclaim.reclaim_reply(targets.HE_KEY_ID, q, centred[0], centred[1])]
    indexes = [index.serialize(targets.INDEX_MAC) for index in targets._small_indexes()]
    out["index_file"] = indexes
    out["index_file_signed"] = [targets.index_framing(data) for data in indexes]
    with tempfile.TemporaryDirectory() as tmp:
        out["key_file"] = [
            targets.HASH_KEY.save(Path(tmp) / "hash.key").read_bytes(),
            targets.SERVICE_KEY.save(Path(tmp) / "service.key").read_bytes(),
        ]
        out["store_file"] = [_store_bytes(Path(tmp) / "store", edge)]
        gallery = Gallery(CancellableHash(targets.HASH_KEY, 16, 64))
        gallery.enrol(["ann", "bob"], template)
        gallery.save(Path(tmp) / "gallery.fpg")
        out["gallery_file"] = [(Path(tmp) / "gallery.fpg").read_bytes()]
    out["http_request"] = http_seeds(rng)
    out["replica_read"] = replica_seeds(edge, template[1])
    if public_context:
        context = targets.keyholder().public_context()
        out["public_context"] = [context]
        out["he_key_file"] = [targets.keyholder().to_bytes()]
        out["keyholder_request"] = keyholder_seeds(context)
    return out


def attested_seed(pid: str, values: np.ndarray, rng: np.random.Generator) -> bytes:
    """A well-formed attested request in the target's small ring (signatures are not checked by the parser)."""
    import struct

    from fpmatch.attestation import ProbeAttestation, SignedTemplate
    from fpmatch.he._packing import pack
    from fpmatch.he.attested import AttestedRequest

    n, q = targets.RING_N, targets.RING_Q
    signature = bytes(rng.integers(0, 256, 64, dtype=np.uint8))
    attestation = ProbeAttestation("00112233445566ff", bytes(16), 1.8e9, "verify", bytes(32), "entry", signature)
    probe = ProbeMessage(pid, None, None, values, attestation.to_bytes())
    ciphertext = struct.pack("<8s8sIQ", b"FPHEATC1", bytes.fromhex(targets.HE_KEY_ID), n, q) + pack(
        rng.integers(-(q // 2), q // 2, size=2 * n, dtype=np.int64), q
    ).tobytes()
    template = SignedTemplate(pid, "00112233445566ff", bytes(32), ciphertext, signature).to_bytes()
    return AttestedRequest(probe.to_bytes(), [template, template]).to_bytes()


def replica_seeds(edge: CaptureEdge, template: np.ndarray) -> list[bytes]:
    """Each read, as the service sends it, to the hash replica (first byte even) and the hybrid one."""
    import msgpack

    probe = edge.probe(template)
    code, reliability = probe.code.tobytes(), np.ascontiguousarray(probe.reliability, dtype="<f4").tobytes()
    values = np.arange(16, dtype="<i8").tobytes()
    return [
        b"\x00" + msgpack.packb(["ping", []]),
        b"\x00" + msgpack.packb(["nearest", [code, reliability, 2]]),
        b"\x00" + msgpack.packb(["decide_codes", ["ann", probe.to_bytes(), 0.5]]),
        b"\x01" + msgpack.packb(["nearest", [bytes(range(128)), np.ones(1024, dtype="<f4").tobytes(), 3]]),  # 1,024 bits
        b"\x01" + msgpack.packb(["encrypted_scores", [[2, 0], values]]),
    ]


def http_seeds(rng: np.random.Generator) -> list[bytes]:
    """One valid body per API route (the first byte picks the route, see targets.API_ROUTES)."""
    import base64
    import json

    edge = targets.api_edge()
    template = rng.standard_normal(16).astype(np.float32)
    probe = base64.b64encode(edge.probe(template).to_bytes()).decode()
    record = base64.b64encode(edge.enrolment(template).to_bytes()).decode()
    bodies = [
        {"subject": "cy", "purposes": ["entry"], "notice_version": "n1", "evidence_ref": "f", "method": "signed-form",
         "separate": True, "retention_days": 30},
        {"subject": "cy", "record": record},
        {"subject": "ann", "purpose": "entry", "probe": probe},
        {"purpose": "entry", "probe": probe, "k": 2},
        {"consent_id": "c-1"},
        {},
        {},
    ]  # fmt: skip
    routes = [r for r, _ in enumerate(targets.API_ROUTES)]
    return [bytes([route]) + json.dumps(body).encode() for route, body in zip(routes, bodies)]


def keyholder_seeds(public_context: bytes) -> list[bytes]:
    """Valid requests of every operation under the ring of ``public_context`` (any key id: the target sets it)."""
    from fpmatch.he import EncryptedGallery, reclaim
    from fpmatch.he.context import PublicContext
    from fpmatch.he.remote import _pack

    gallery = EncryptedGallery(public_context, 16)
    templates = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
    gallery.enrol(["a", "b", "c"], templates)
    scores = gallery.verification_request("a", templates[0]).to_bytes()
    ring = PublicContext(public_context).ring
    c1 = np.random.default_rng(3).integers(0, ring.q, size=(1, ring.n), dtype=np.int64) - ring.q // 2
    mask = np.zeros((1, ring.n), dtype=bool)
    mask[0, :8] = True
    key_id = "00" * 8
    return [
        _pack({"op": "decide", "threshold": 0.5, "subject": "s"}, scores),
        _pack({"op": "best", "threshold": 0.1, "k": 1}, scores),
        _pack({"op": "coarse_scores"}, scores),
        _pack({"op": "reclaim"}, reclaim.reclaim_request(key_id, ring.q, c1, mask)),
        _pack({"op": "public_context"}),
        _pack({"op": "usage"}),
    ]


def _store_bytes(directory: Path, edge: CaptureEdge) -> bytes:
    """A small hash store: two subjects, their consents, a ciphertext row and audit entries."""
    from fpmatch.audit import AuditEvent
    from fpmatch.consent import ConsentRecord
    from fpmatch.store import DATABASE, Store

    store = Store.open(directory, targets.SERVICE_KEY, profile=edge.profile)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with store.transaction() as tx:
        for i, name in enumerate(["ann", "bob"]):
            record = ConsentRecord(
                subject=name,
                purposes=frozenset({"entry"}),
                granted_at=start,
                expires_at=start + timedelta(days=30),
                notice_version="n1",
                evidence_ref=f"form-{name}",
                method="signed-form",
                separate=True,
                consent_id=f"consent-{name}",
            )
            tx.put_consent(record)
            tx.insert_subject(name, bytes(range(i, i + 8)), "2026-01-01T00:00:00.000000+00:00", slot=i)
            tx.audit("2026-01-01T00:00:00.000000+00:00", AuditEvent.ENROL, subject=f"pseudonym-{i}", outcome="ok")
        tx.put_row(0, (bytes(range(64)), 2, 0))
    store.close()
    return (directory / DATABASE).read_bytes()


def main(argv: list[str]) -> None:
    root = Path(argv[0]) if argv and not argv[0].startswith("-") else Path(__file__).resolve().parent / "corpus"
    with_context = "--public-context" in argv
    if with_context:  # the key holder target decrypts these seeds: it must hold the same key
        key = root / "keyholder.key"
        key.unlink(missing_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        targets.keyholder().save(key)
        print(f"export FPMATCH_FUZZ_KEYHOLDER={key}")
    for target, inputs in seeds(with_context).items():
        folder = root / target
        folder.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(inputs):
            (folder / f"seed-{i}").write_bytes(data)


if __name__ == "__main__":
    main(sys.argv[1:])
