"""The key holder in attested mode: requests a compromised matching service made up are refused.

The attacks of test_keyholder_attacks.py, rerun against a key holder that knows the capture
edges' signing keys, through the key holder service's request path (the code the network
server runs) and its ledger. Every refusal is a typed error and an audit line, and nothing
the caller crafted is ever decrypted. Honest verification and identification give the same
outcomes as without attested mode on the same data.
"""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("tenseal", reason="the key holder needs TenSEAL")
pytest.importorskip("cryptography", reason="edge signing keys need cryptography")

from fpmatch import (  # noqa: E402
    AttestationError,
    AttestedModeError,
    CaptureEdge,
    EdgeKeys,
    EdgeSigningKey,
    HashKey,
    InvalidInputError,
    KeyFileError,
    MatchingService,
    MessageFormatError,
    PinVerifier,
    ProbeMessage,
    ServiceKey,
    VerificationOutcome,
)
from fpmatch.attestation import SignedTemplate  # noqa: E402
from fpmatch.edge import EnrolmentRecord  # noqa: E402
from fpmatch.he import EncryptedGallery, KeyHolder, RateLimit  # noqa: E402
from fpmatch.he._packing import PACKED_BYTES, pack, unpack  # noqa: E402
from fpmatch.he.attested import AttestedRequest, encrypt_template  # noqa: E402
from fpmatch.he.context import PublicContext  # noqa: E402
from fpmatch.he.ledger import Ledger  # noqa: E402
from fpmatch.he.remote import read_reply  # noqa: E402
from fpmatch.he.server import KeyHolderService, lifted_rate  # noqa: E402
from service_support import ManualClock, grant, sample, store_options, stranger  # noqa: E402
from test_keyholder_attacks import SITE, climb, through_service  # noqa: E402

DIM = 128
KEY = HashKey(bytes(range(40, 72)))
#: The small site of test_keyholder_attacks.py, with room for the attacks' requests against one subject.
ROOMY = replace(SITE, subject_requests_per_day=100)


class Site:
    """One deployment's keys: the key holder's secret key, a registered edge and an intruder's key."""

    def __init__(self) -> None:
        self.base = KeyHolder()
        self.signing = {scheme: EdgeSigningKey.generate() for scheme in ("he", "hybrid")}  # one per profile
        self.intruder = EdgeSigningKey.generate()
        self.keys = EdgeKeys()
        for scheme, key in self.signing.items():
            self.keys.add(key.public_bytes, self.make_edge(scheme, None).profile.profile_id)
        self.edge = self.make_edge("hybrid")

    def make_edge(self, scheme: str, signing: EdgeSigningKey | None | str = "registered") -> CaptureEdge:
        key = self.signing[scheme] if signing == "registered" else signing
        return CaptureEdge(KEY, DIM, scheme=scheme, public_context=self.base.public_context(), signing_key=key)  # type: ignore[arg-type]

    def holder(self, **options: Any) -> KeyHolder:
        options.setdefault("limits", lifted_rate(RateLimit()))
        return KeyHolder.from_bytes(self.base.to_bytes(), edge_keys=self.keys, **options)


@pytest.fixture(scope="module")
def site() -> Site:
    return Site()


def counting_decryptions(holder: KeyHolder) -> list[int]:
    """Count the holder's decryptions (test-only instrumentation): crafted requests must cause none."""
    calls = [0]
    decrypt = holder._decrypt

    def counted(request: Any) -> np.ndarray:
        calls[0] += 1
        return decrypt(request)

    holder._decrypt = counted  # type: ignore[method-assign]
    return calls


def send(service: KeyHolderService, op: str, payload: bytes, **header: Any) -> Any:
    head = json.dumps({"op": op, **header}).encode()
    reply, _ = read_reply(service.handle("compromised", struct.pack("<I", len(head)) + head + payload))
    return reply["result"]


def verify_request(probe: ProbeMessage, template: bytes) -> bytes:
    return AttestedRequest(probe.to_bytes(), [template]).to_bytes()


def outcomes(ledger: Ledger) -> list[str]:
    return [e.outcome for e in ledger.entries()]


@pytest.fixture
def attested(site: Site, tmp_path: Path) -> Iterator[tuple[KeyHolderService, list[int], list[float]]]:
    clock = [time.time()]
    holder = site.holder()
    service = KeyHolderService(holder, Ledger(tmp_path / "ledger.sqlite", ROOMY, clock=lambda: clock[0]))
    yield service, counting_decryptions(holder), clock
    service.ledger.close()


def victim(site: Site) -> tuple[np.ndarray, bytes]:
    template = sample("victim", 0, DIM)
    record = site.edge.enrolment(template, subject="victim")
    assert record.attestation is not None
    return template, record.attestation


# -- the climb of test_keyholder_attacks gets nothing ----------------------------------------------


def test_measured_climb_is_refused_before_any_decryption(site: Site, attested: Any) -> None:
    service, decryptions, clock = attested
    true, signed = victim(site)
    # 1. The climb as measured without attested mode: scores the caller computed are refused outright.
    gallery = EncryptedGallery(site.base.public_context(), DIM)
    gallery.enrol(["victim"], true[None, :])
    with pytest.raises(AttestedModeError, match="attested mode"):
        climb(gallery, "victim", through_service(service, clock), true, 0.9, budget=751)
    # 2. The same climb with its made-up probes sent as attested requests beside the victim's real
    #    signed template: unsigned, or signed by a key the key holder does not know.
    intruder_edge = site.make_edge("hybrid", site.intruder)
    unsigned_edge = site.make_edge("hybrid", None)
    rng = np.random.default_rng(5)
    refused: dict[str, int] = {}
    for step in range(40):
        u = rng.standard_normal(DIM).astype(np.float32)
        u /= np.linalg.norm(u)
        probe = (
            unsigned_edge.probe(u)
            if step % 2
            else intruder_edge.probe(u, purpose="entry", subject="victim")
        )
        with pytest.raises(AttestationError) as caught:
            send(service, "decide_attested", verify_request(probe, signed), threshold=0.0)
        reason = "unsigned" if "not signed" in str(caught.value) else "unknown key"
        assert reason == "unsigned" or "does not know" in str(caught.value)
        refused[reason] = refused.get(reason, 0) + 1
    assert refused == {"unsigned": 20, "unknown key": 20}
    assert decryptions[0] == 0  # nothing crafted was decrypted
    lines = outcomes(service.ledger)
    assert lines == ["AttestedModeError"] + ["AttestationError"] * 40
    assert service.ledger.verify().ok
    print(f"\nattested key holder: the climb got {len(lines)} refusals, 0 decisions, 0 decryptions")


def test_key_recovery_requests_are_refused(site: Site, attested: Any) -> None:
    """The secret-key attack sends crafted ring elements as scores: attested mode never decrypts them."""
    service, decryptions, _ = attested
    ring = site.base._ring
    from fpmatch.he import EncryptedScores

    row = np.full((1, ring.n), 1 << 40, dtype=np.int64)
    crafted = EncryptedScores(site.base.key_id, site.base.params.scale_bits, ring.q, row, np.zeros(64, np.int64),
                              np.arange(64, dtype=np.int64), np.zeros(64, np.int64))  # fmt: skip
    for op, extra in (("decide", {}), ("best", {"k": 5})):
        with pytest.raises(AttestedModeError):
            send(service, op, crafted.to_bytes(), threshold=0.25, **extra)
    service.release_coarse = True
    with pytest.raises(AttestedModeError):
        send(service, "coarse_scores", crafted.to_bytes())
    assert decryptions[0] == 0
    assert outcomes(service.ledger) == ["AttestedModeError"] * 3


# -- crafted and altered templates --------------------------------------------------------------


def test_crafted_or_altered_templates_are_refused(site: Site, attested: Any) -> None:
    service, decryptions, _ = attested
    true, signed = victim(site)
    good = SignedTemplate.from_bytes(signed)
    n = site.base._ring.n
    head = len(good.ciphertext) - 2 * PACKED_BYTES * n
    # One coefficient changed, and the whole ciphertext scaled by 2 (a chosen multiple of the template).
    flipped = bytearray(good.ciphertext)
    flipped[head + 3] ^= 1
    c = np.frombuffer(good.ciphertext[head:], dtype=np.uint8)
    q = site.base._ring.q
    scaled = good.ciphertext[:head] + pack(site.base._ring.centre(2 * unpack(c, q)), q).tobytes()
    context = PublicContext(site.base.public_context())
    chosen = np.zeros(DIM, dtype=np.int64)
    chosen[0] = 1 << site.base.params.template_scale_bits  # a ciphertext of e_0: reads out one probe value
    made_up = encrypt_template(context, chosen)
    candidates = {
        "one coefficient altered": replace(good, ciphertext=bytes(flipped)).to_bytes(),
        "ciphertext scaled by 2": replace(good, ciphertext=scaled).to_bytes(),
        "made up, unsigned": replace(good, ciphertext=made_up).to_bytes(),
        "made up, signed by an unknown key": SignedTemplate.make(site.intruder, good.profile_id, "victim", made_up).to_bytes(),
        "signature of another subject's template": replace(good, subject_tag=bytes(32)).to_bytes(),
    }
    for what, template in candidates.items():
        probe = site.edge.probe(true, purpose="entry", subject="victim")
        with pytest.raises(AttestationError):
            send(service, "decide_attested", verify_request(probe, template), threshold=0.5)
    with pytest.raises(MessageFormatError):  # truncated
        send(service, "decide_attested", verify_request(site.edge.probe(true, purpose="entry"), signed[:-100]), threshold=0.5)
    assert decryptions[0] == 0
    assert outcomes(service.ledger) == ["AttestationError"] * len(candidates) + ["MessageFormatError"]
    # The real one still verifies.
    probe = site.edge.probe(true, purpose="entry", subject="victim")
    assert send(service, "decide_attested", verify_request(probe, signed), threshold=0.9) == [True]
    assert decryptions[0] == 1


# -- replay, staleness, subject binding ------------------------------------------------------------


def test_replayed_probe_is_refused_also_after_a_restart(site: Site, tmp_path: Path) -> None:
    true, signed = victim(site)
    path = tmp_path / "ledger.sqlite"
    first = KeyHolderService(site.holder(), Ledger(path, SITE))
    probe = site.edge.probe(true, purpose="entry", subject="victim")
    request = verify_request(probe, signed)
    assert send(first, "decide_attested", request, threshold=0.5) == [True]
    with pytest.raises(AttestationError, match="replay"):
        send(first, "decide_attested", request, threshold=0.5)
    first.ledger.close()
    restarted = KeyHolderService(site.holder(), Ledger(path, SITE))  # new process state, same ledger file
    with pytest.raises(AttestationError, match="replay"):
        send(restarted, "decide_attested", request, threshold=0.5)
    assert outcomes(restarted.ledger) == ["ok", "AttestationError", "AttestationError"]
    assert restarted.ledger.verify().ok
    restarted.ledger.close()


def test_stale_and_future_probes_are_refused(site: Site, tmp_path: Path) -> None:
    true, signed = victim(site)
    for shift, word in ((121.0, "issued 121 s ago"), (-60.0, "issued -60 s ago")):
        holder = site.holder(wall_clock=lambda: time.time() + shift)
        decryptions = counting_decryptions(holder)
        service = KeyHolderService(holder, Ledger(tmp_path / f"ledger{shift}.sqlite", SITE))
        with pytest.raises(AttestationError, match=word):
            send(service, "decide_attested", verify_request(site.edge.probe(true, purpose="entry"), signed), threshold=0.5)
        assert decryptions[0] == 0 and outcomes(service.ledger) == ["AttestationError"]
        service.ledger.close()


def test_probe_for_one_subject_cannot_verify_another(site: Site, attested: Any) -> None:
    service, decryptions, _ = attested
    other = site.edge.enrolment(sample("bob", 0, DIM), subject="bob").attestation
    assert other is not None
    probe = site.edge.probe(sample("victim", 1, DIM), purpose="entry", subject="victim")
    with pytest.raises(AttestationError, match="another subject"):
        send(service, "decide_attested", verify_request(probe, other), threshold=0.0)
    # An identification probe cannot be spent on a verification, nor the other way round.
    with pytest.raises(AttestationError, match="identify request, not a verify"):
        send(service, "decide_attested", verify_request(site.edge.probe(sample("bob", 1, DIM), purpose="entry", identify=True), other), threshold=0.0)
    with pytest.raises(AttestationError, match="verify request, not a identify"):
        send(service, "best_attested", verify_request(site.edge.probe(sample("bob", 1, DIM), purpose="entry"), other), threshold=0.0, k=1)
    assert decryptions[0] == 0
    assert outcomes(service.ledger) == ["AttestationError"] * 3


# -- edge keys and messages -----------------------------------------------------------------------


def test_edge_signing_key_files(tmp_path: Path, site: Site) -> None:
    key = EdgeSigningKey.generate()
    path = key.save(tmp_path / "edge.key")
    assert path.stat().st_mode & 0o777 == 0o600
    assert EdgeSigningKey.load(path).key_id == key.key_id
    with pytest.raises(FileExistsError):
        key.save(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        EdgeSigningKey.load(path)
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"not a key")
    bad.chmod(0o600)
    with pytest.raises(KeyFileError, match="not an fpmatch edge signing key"):
        EdgeSigningKey.load(bad)
    with pytest.raises(KeyFileError):
        EdgeSigningKey.load(tmp_path / "missing.key")
    site.keys.save(tmp_path / "edges.json")
    assert len(EdgeKeys.load(tmp_path / "edges.json")) == len(site.keys)
    (tmp_path / "broken.json").write_text('{"edges": [{"public_key": "zz"}]}')
    with pytest.raises(KeyFileError):
        EdgeKeys.load(tmp_path / "broken.json")


def test_unsigned_messages_keep_version_1(site: Site) -> None:
    plain = site.make_edge("hybrid", None)
    template = sample("victim", 0, DIM)
    record = plain.enrolment(template)
    assert record.to_bytes()[:8] == b"FPEDGE01" and record.attestation is None
    signed = site.edge.enrolment(template, subject="victim")
    data = signed.to_bytes()
    assert data[:8] == b"FPEDGE02"
    again = EnrolmentRecord.from_bytes(data)
    assert again.attestation == signed.attestation and np.array_equal(again.values, signed.values)
    probe = site.edge.probe(template, purpose="entry")
    assert ProbeMessage.from_bytes(probe.to_bytes()).attestation == probe.attestation
    assert probe.unsigned()[:8] == b"FPEDGE01"
    with pytest.raises(MessageFormatError):
        ProbeMessage.from_bytes(probe.to_bytes()[:-1])
    with pytest.raises(InvalidInputError):
        site.edge.enrolment(template)  # a signing edge needs the subject
    with pytest.raises(InvalidInputError):
        site.edge.probe(template)  # ... and the purpose


# -- honest traffic: the same outcomes with and without attested mode --------------------------


def open_pair(site: Site, tmp_path: Path, scheme: str, clock: ManualClock) -> tuple[MatchingService, MatchingService, CaptureEdge]:
    capture = site.make_edge(scheme)
    services = []
    for name, holder in (("plain", KeyHolder.from_bytes(site.base.to_bytes(), limits=lifted_rate(RateLimit()))),
                         ("attested", site.holder())):  # fmt: skip
        directory = tmp_path / f"{scheme}-{name}"
        services.append(MatchingService.open(
            directory, ServiceKey(bytes(range(100, 132))), edge=capture.profile, keyholder=holder, clock=clock,
            alternative=PinVerifier(cost=2**10, clock=clock), max_face_failures=None, **store_options(directory),
        ))  # fmt: skip
    return services[0], services[1], capture


@pytest.mark.parametrize("scheme", ["he", "hybrid"])
def test_honest_outcomes_agree_with_unattested_mode(site: Site, tmp_path: Path, scheme: str, backend: str) -> None:
    clock = ManualClock()
    plain, attested, capture = open_pair(site, tmp_path, scheme, clock)
    people = [f"person-{i}" for i in range(12)]
    try:
        for service in (plain, attested):
            for name in people:
                grant(service, name, ("entry",))
            service.enrol_many(people, capture.enrolments(np.stack([sample(p, 0, DIM) for p in people]), people))
            service.calibrate(calibration=_calibration(capture))
        # Unsigned enrolment is refused in attested mode (it could never be scored); accepted as before otherwise.
        grant(plain, "legacy", ("entry",))
        grant(attested, "legacy", ("entry",))
        unsigned = site.make_edge(scheme, None).enrolment(sample("legacy", 0, DIM))
        plain.enrol("legacy", unsigned)
        with pytest.raises(AttestationError, match="no signed template"):
            attested.enrol("legacy", unsigned)
        verified = {"plain": [], "attested": []}
        for name in people[:6]:
            for claimed, face in ((name, sample(name, 1, DIM)), (name, stranger(len(name), DIM))):
                for label, service in (("plain", plain), ("attested", attested)):
                    probe = capture.probe(face, purpose="entry", subject=claimed)
                    verified[label].append(service.verify(claimed, probe, "entry"))
        assert verified["plain"] == verified["attested"]
        assert verified["plain"].count(VerificationOutcome.MATCH) == 6  # every mate matched, no stranger
        probe = capture.probe(sample(people[0], 1, DIM), purpose="payment", subject=people[0])
        with pytest.raises(AttestationError, match="purpose"):  # signed for another purpose
            attested.verify(people[0], probe, "entry")
        if scheme == "hybrid":
            for name in people[:6]:
                face = sample(name, 2, DIM)
                found = [plain.identify(capture.probe(face, purpose="entry", identify=True), "entry", k=3),
                         attested.identify(capture.probe(face, purpose="entry", identify=True), "entry", k=3)]  # fmt: skip
                assert found[0] == found[1] and found[0][0].subject == name
        else:
            with pytest.raises(AttestedModeError, match="hybrid"):
                attested.identify(capture.probe(sample(people[0], 2, DIM), purpose="entry", identify=True), "entry")
        assert attested.store.verify() == []
    finally:
        plain.close()
        attested.close()


def _calibration(capture: CaptureEdge) -> Any:
    from service_support import labelled_set

    templates, labels = labelled_set(n=150, dim=DIM)
    return capture.calibration(templates, labels, 1e-3, max_pairs=20_000)


def test_withdrawal_erases_the_signed_template(site: Site, tmp_path: Path, backend: str) -> None:
    clock = ManualClock()
    plain, attested, capture = open_pair(site, tmp_path, "hybrid", clock)
    plain.close()
    try:
        grant(attested, "leaver", ("entry",))
        record = capture.enrolment(sample("leaver", 0, DIM), subject="leaver")
        attested.enrol("leaver", record)
        id_ = attested.store.subject_ids()["leaver"]
        assert attested.store.attested([id_]) == {id_: record.attestation}
        attested.withdraw("leaver")
        assert attested.store.attested([id_]) == {}
        assert record.attestation is not None
        directory = tmp_path / "hybrid-attested"
        ciphertext = SignedTemplate.from_bytes(record.attestation).ciphertext
        piece = ciphertext[100:164]
        attested.close()
        if backend == "sqlite":  # the PostgreSQL erasure search is tested in test_store_postgres.py
            for root, _, files in os.walk(directory):
                for f in files:
                    assert piece not in (Path(root) / f).read_bytes(), f
    finally:
        attested.close()


# -- the real server: fpmatch keyholder serve --edge-keys ------------------------------------------


def test_remote_attested_key_holder(tmp_path: Path) -> None:
    pytest.importorskip("grpc", reason="the key holder service needs grpcio")
    from keyholder_support import Deployment, Server

    deployment = Deployment(tmp_path)
    signing = EdgeSigningKey.generate()
    capture = CaptureEdge(KEY, DIM, scheme="hybrid", public_context=deployment.public, signing_key=signing)
    keys = EdgeKeys()
    keys.add(signing.public_bytes, capture.profile.profile_id)
    edges = keys.save(tmp_path / "edges.json")
    attested_options = ["--edge-keys", str(edges)]
    server = Server(deployment, extra=attested_options)
    clock = ManualClock()
    client = deployment.client(server)  # the matching service's
    direct = deployment.client(server)  # the same certificate, asking the key holder straight
    service = None
    try:
        assert client.attested_mode
        service = MatchingService.open(tmp_path / "store", ServiceKey(bytes(range(100, 132))), edge=capture.profile,
                                       keyholder=client, clock=clock, alternative=PinVerifier(cost=2**10, clock=clock),
                                       max_face_failures=None)  # fmt: skip
        people = [f"remote-{i}" for i in range(6)]
        for name in people:
            grant(service, name, ("entry",))
        service.enrol_many(people, capture.enrolments(np.stack([sample(p, 0, DIM) for p in people]), people))
        service.calibrate(calibration=_calibration(capture))
        probe = capture.probe(sample(people[1], 1, DIM), purpose="entry", subject=people[1])
        assert service.verify(people[1], probe, "entry") == VerificationOutcome.MATCH
        impostor = capture.probe(stranger(3, DIM), purpose="entry", subject=people[1])
        assert service.verify(people[1], impostor, "entry") == VerificationOutcome.NO_MATCH
        found = service.identify(capture.probe(sample(people[2], 1, DIM), purpose="entry", identify=True), "entry", k=2)
        assert [m.subject for m in found][:1] == [people[2]]
        # Straight to the key holder: the old request and an unsigned probe are refused, typed, over the network.
        signed = service.store.attested([service.store.subject_ids()[people[1]]])
        template = next(iter(signed.values()))
        with pytest.raises(AttestedModeError):
            direct.decide(b"\0" * 64, 0.5, caller="matching-service")
        unsigned = site_free_probe(capture, sample(people[1], 2, DIM))
        with pytest.raises(AttestationError, match="not signed"):
            direct.decide_attested(verify_request(unsigned, template), 0.5, caller="matching-service")
        used = capture.probe(sample(people[1], 2, DIM), purpose="entry", subject=people[1])
        assert direct.decide_attested(verify_request(used, template), 0.5, caller="matching-service") == [True]
        server.stop()
        server = Server(deployment, port=server.port, extra=attested_options)  # a restart, on the same ledger
        with pytest.raises(AttestationError, match="replay"):
            direct.decide_attested(verify_request(used, template), 0.5, caller="matching-service")
        # Restarted without attested mode: the service's first request is refused for the mode, then it
        # asks again and decides as before.
        server.stop()
        server = Server(deployment, port=server.port)
        probe = capture.probe(sample(people[1], 3, DIM), purpose="entry", subject=people[1])
        with pytest.raises(AttestedModeError, match="not in attested mode"):
            service.verify(people[1], probe, "entry")
        assert service.verify(people[1], probe, "entry") == VerificationOutcome.MATCH
    finally:
        if service is not None:
            service.close()
        client.close()
        direct.close()
        server.stop()
    ledger = Ledger(deployment.ledger)
    lines = [(e.op, e.outcome) for e in ledger.entries()]
    ledger.close()
    assert ("decide", "AttestedModeError") in lines and ("decide_attested", "AttestationError") in lines
    assert lines[-2:] == [("decide_attested", "AttestedModeError"), ("decide", "ok")]


def site_free_probe(capture: CaptureEdge, face: np.ndarray) -> ProbeMessage:
    """The probe a signing edge would send, with its signature taken off (a made-up probe)."""
    return replace(capture.probe(face, purpose="entry"), attestation=None)


# -- a stolen edge key: a search at the calibrated threshold, counted per signed subject -------------


def test_stolen_edge_key_cannot_climb_below_the_registered_floor(site: Site, tmp_path: Path) -> None:
    floor = 0.3  # the profile's calibrated threshold, registered with the edge's key
    keys = EdgeKeys()
    keys.add(site.signing["hybrid"].public_bytes, site.edge.profile.profile_id, min_threshold=floor)
    keys.save(tmp_path / "edges.json")
    assert EdgeKeys.load(tmp_path / "edges.json").min_threshold(site.signing["hybrid"].key_id) == floor
    holder = KeyHolder.from_bytes(site.base.to_bytes(), limits=lifted_rate(RateLimit()), edge_keys=keys)
    service = KeyHolderService(holder, Ledger(tmp_path / "ledger.sqlite", ROOMY))
    true, signed = victim(site)
    rng = np.random.default_rng(9)
    answers = []
    for step in range(30):  # made-up probes, signed with the stolen key
        u = rng.standard_normal(DIM).astype(np.float32)
        u /= np.linalg.norm(u)
        request = verify_request(site.edge.probe(u, purpose="entry", subject="victim"), signed)
        if step % 2:
            with pytest.raises(AttestationError, match="below the least"):
                send(service, "decide_attested", request, threshold=0.0)  # the climb's threshold
        else:
            answers += send(service, "decide_attested", request, threshold=floor)
    assert answers == [False] * 15  # at the calibrated threshold a made-up probe learns nothing to climb on
    service.ledger.close()


def test_per_subject_budget_counts_the_signed_subject(site: Site, tmp_path: Path) -> None:
    """A caller that leaves the subject label out is still counted per subject: the template's signed tag."""
    from fpmatch.he import RateLimitExceededError

    service = KeyHolderService(site.holder(), Ledger(tmp_path / "ledger.sqlite", SITE))
    true, signed = victim(site)
    for _ in range(SITE.subject_requests_per_day):
        probe = site.edge.probe(sample("victim", 2, DIM), purpose="entry", subject="victim")
        send(service, "decide_attested", verify_request(probe, signed), threshold=0.5)
    probe = site.edge.probe(sample("victim", 2, DIM), purpose="entry", subject="victim")
    with pytest.raises(RateLimitExceededError, match="subject 'signed:"):
        send(service, "decide_attested", verify_request(probe, signed), threshold=0.5, subject="another-label")
    service.ledger.close()


def test_identification_shortlists_are_counted_per_signed_subject(site: Site, tmp_path: Path) -> None:
    """A holder of an edge key who also builds the shortlist tries its faces against its victim in
    every identification: past the victim's daily shortlist budget the victim is left out of the
    scoring (never a match), the others in the list are still scored, and the count outlives a restart."""
    budgets = replace(ROOMY, subject_shortlists_per_day=3)
    clock = [time.time()]
    path = tmp_path / "ledger.sqlite"
    service = KeyHolderService(site.holder(), Ledger(path, budgets, clock=lambda: clock[0]))
    _, signed_victim = victim(site)
    signed_carol = site.edge.enrolment(sample("carol", 0, DIM), subject="carol").attestation
    assert signed_carol is not None

    def identify(service: KeyHolderService, face: np.ndarray, *others: bytes) -> list[int]:
        probe = site.edge.probe(face, purpose="entry", identify=True)
        request = AttestedRequest(probe.to_bytes(), [signed_victim, *others])
        return send(service, "best_attested", request.to_bytes(), threshold=0.5, k=2)

    assert [identify(service, sample("victim", 1, DIM)) for _ in range(3)] == [[0]] * 3
    assert identify(service, sample("victim", 1, DIM)) == []  # over budget: left out, not a match
    assert identify(service, sample("carol", 1, DIM), signed_carol) == [1]  # the rest of the list is still scored
    last = service.ledger.entries()[-2:]
    assert [(e.op, e.outcome, e.released.get("left_out")) for e in last] == [("best_attested", "ok", 1)] * 2
    service.ledger.close()
    restarted = KeyHolderService(site.holder(), Ledger(path, budgets, clock=lambda: clock[0]))
    assert identify(restarted, sample("victim", 1, DIM)) == []
    clock[0] += 86400  # the next UTC day
    assert identify(restarted, sample("victim", 1, DIM)) == [0]
    assert restarted.ledger.verify().ok
    restarted.ledger.close()


def test_benchmark_writes_its_figures(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "attested.json"
    subprocess.run([sys.executable, str(root / "benchmarks" / "bench_attested.py"), "--dim", "64", "--shortlist", "4",
                    "--rounds", "2", "--json", str(out)], check=True, cwd=root / "benchmarks", capture_output=True)  # fmt: skip
    figures = json.loads(out.read_text())
    for key in ("decide_ms_p50", "decide_attested_ms_p50", "decide_attested_ratio", "best_ms_p50",
                "best_attested_ms_p50", "best_attested_ratio"):  # fmt: skip
        assert figures[key] > 0


def test_command_line_makes_and_registers_edge_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fpmatch import cli

    key = tmp_path / "edge-signing.key"
    assert cli.main(["keys", "new", "--kind", "edge-signing", str(key)]) == 0
    public = EdgeSigningKey.load(key).public_bytes.hex()
    assert public in capsys.readouterr().out
    edges = tmp_path / "edges.json"
    assert cli.main(["keyholder", "register-edge", str(edges), "--public-key", public, "--profile", "0123456789abcdef",
                     "--min-threshold", "0.4"]) == 0  # fmt: skip
    loaded = EdgeKeys.load(edges)
    assert len(loaded) == 1 and loaded.min_threshold(EdgeSigningKey.load(key).key_id) == 0.4
    assert cli.main(["keyholder", "register-edge", str(edges), "--public-key", "zz", "--profile", "0123456789abcdef",
                     "--no-floor"]) == 2  # fmt: skip
    assert "64 hex digits" in capsys.readouterr().err
    assert cli.main(["keyholder", "register-edge", str(edges), "--public-key", public, "--profile", "xyz", "--no-floor"]) == 2
    assert "profile id" in capsys.readouterr().err
    for choice in ([], ["--no-floor", "--min-threshold", "0.4"]):  # the floor is a choice made explicitly
        assert cli.main(["keyholder", "register-edge", str(edges), "--public-key", public, "--profile", "0123456789abcdef",
                         *choice]) == 2  # fmt: skip
        assert "--min-threshold X" in capsys.readouterr().err
    assert cli.main(["keyholder", "register-edge", str(edges), "--public-key", public, "--profile", "0123456789abcdef",
                     "--no-floor"]) == 0  # fmt: skip
    assert EdgeKeys.load(edges).min_threshold(EdgeSigningKey.load(key).key_id) is None


def test_http_api_answers_attested_refusals_with_stable_codes() -> None:
    pytest.importorskip("fastapi", reason="the HTTP API needs fastapi")
    from fpmatch.api.errors import classify

    assert classify(AttestationError("replayed")) == (403, "attestation_refused")
    assert classify(AttestedModeError("use hybrid")) == (409, "attested_mode")


def test_store_commands_sign_for_an_attested_key_holder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("grpc", reason="the key holder service needs grpcio")
    from fpmatch import cli
    from fpmatch.hashing import DEFAULT_BITS
    from keyholder_support import Deployment, Server
    from service_support import labelled_set

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    deployment = Deployment(tmp_path / "kh")
    keys = tmp_path / "keys"
    keys.mkdir()
    for kind, name in (("edge", "edge.key"), ("service", "service.key"), ("edge-signing", "signing.key")):
        assert run("keys", "new", "--kind", kind, str(keys / name))[0] == 0
    signing = EdgeSigningKey.load(keys / "signing.key")
    profile = CaptureEdge(HashKey.load(keys / "edge.key"), DIM, scheme="hybrid", public_context=deployment.public,
                          bits=DEFAULT_BITS).profile.profile_id  # fmt: skip
    edges = tmp_path / "edges.json"
    assert run("keyholder", "register-edge", str(edges), "--public-key", signing.public_bytes.hex(), "--profile", profile,
               "--no-floor")[0] == 0  # fmt: skip
    server = Server(deployment, extra=["--edge-keys", str(edges)])
    try:
        data = tmp_path / "data"
        data.mkdir()
        names = ["alice", "bob", "carol"]
        np.save(data / "batch.npy", np.stack([sample(name, 0, DIM) for name in names]))
        (data / "subjects.txt").write_text("\n".join(names) + "\n")
        np.save(data / "probe.npy", sample("alice", 1, DIM))
        templates, labels = labelled_set(150, DIM)
        np.save(data / "cal.npy", templates)
        np.save(data / "labels.npy", labels)
        pki = deployment.pki
        unsigned = ["--store", str(tmp_path / "store"), "--key", str(keys / "edge.key"), "--service-key",
                    str(keys / "service.key"), "--keyholder-address", server.address, "--keyholder-cert",
                    str(pki / "matching-service.crt"), "--keyholder-tls-key", str(pki / "matching-service.key"),
                    "--keyholder-ca", str(pki / "ca.crt")]  # fmt: skip
        args = [*unsigned, "--edge-signing-key", str(keys / "signing.key")]
        for name in names:
            code, _, err = run("consent", "grant", name, "--purpose", "payment", "--notice-version", "v1", "--evidence",
                               name, "--method", "signed-form", "--retention-days", "30", "--dim", str(DIM), *args)  # fmt: skip
            assert code == 0, err
        code, out, err = run("enrol", "--batch", str(data / "subjects.txt"), "--templates", str(data / "batch.npy"), *unsigned)
        assert code == 2 and "no signed template" in err  # unsigned enrolment: refused in attested mode
        code, out, err = run("enrol", "--batch", str(data / "subjects.txt"), "--templates", str(data / "batch.npy"), *args)
        assert code == 0 and "enrolled 3" in out, err
        code, _, err = run("calibrate", "--target-fmr", "1e-3", "--templates", str(data / "cal.npy"), "--labels",
                           str(data / "labels.npy"), "--max-pairs", "40000", *args)  # fmt: skip
        assert code == 0, err
        code, out, err = run("verify", "alice", "--probe", str(data / "probe.npy"), "--purpose", "payment", *args)
        assert (code, out.strip()) == (0, "match"), err
        code, out, err = run("verify", "bob", "--probe", str(data / "probe.npy"), "--purpose", "payment", *args)
        assert (code, out.strip()) == (0, "no_match"), err
        code, out, err = run("identify", "--probe", str(data / "probe.npy"), "--purpose", "payment", *args)
        assert code == 0 and [json.loads(line)["subject"] for line in out.splitlines()] == ["alice"], err
        code, out, err = run("verify", "alice", "--probe", str(data / "probe.npy"), "--purpose", "payment", *unsigned)
        assert code == 2 and "not signed" in err and "Traceback" not in err
    finally:
        server.stop()
    ledger = Ledger(deployment.ledger)
    ops = {e.op for e in ledger.entries() if e.outcome == "ok"}
    ledger.close()
    assert {"decide_attested", "best_attested"} <= ops and not ops & {"decide", "best"}


def test_enrolment_checks_the_signed_template_it_stores(site: Site, tmp_path: Path) -> None:
    clock = ManualClock()
    plain, attested, capture = open_pair(site, tmp_path, "hybrid", clock)
    try:
        for service in (plain, attested):
            grant(service, "alice", ("entry",))
            record = capture.enrolment(sample("alice", 0, DIM), subject="bob")  # signed for someone else
            with pytest.raises(AttestationError, match="another subject than 'alice'"):
                service.enrol("alice", record)
            broken = replace(capture.enrolment(sample("alice", 0, DIM), subject="alice"), attestation=b"junk")
            with pytest.raises(MessageFormatError):
                service.enrol("alice", broken)
            assert "alice" not in service
    finally:
        plain.close()
        attested.close()
