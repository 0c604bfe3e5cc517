"""The matching service is blind: everything it holds, on disk and in memory, after
enrolling a few thousand subjects and serving requests, gives no template back.

Every byte of the store directory, every array and byte string reachable from the
service object, and every probe message it received are handed to the
reconstruction attacks the project knows (THREAT_MODEL.md): inverting codes with
a key (another key, or the service's own key used as one), taking rotated probe
values or ciphertext coefficients as templates, and every row of every array in
memory. A reconstruction counts when plain cosine matching accepts it against a
fresh sample of its owner at FMR 1e-3. The control gives the same attacks the
capture edge's key as well: then they must succeed, so the test can fail.
"""

from __future__ import annotations

import gc
import math
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from fpmatch import CancellableHash, CaptureEdge, HashKey, MatchingService, ProbeMessage, ServiceKey
from fpmatch.edge import rotation
from fpmatch.eval import reconstruct_templates, tar_at_far
from fpmatch.synthetic import FaceGenerator
from service_support import OPEN_LIMITS, keyholder, windows

N = 2000
FAR = 1e-3
EDGE_KEY = HashKey(b"\x5e" * 32)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x / np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-300)  # no overflow for huge values
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-300)


def allowed_accepts(n: int, rate: float = FAR) -> int:
    """The most acceptances of ``n`` unrelated tries at FMR ``rate`` that chance explains (about 4 sigma)."""
    return math.ceil(n * rate + 4 * math.sqrt(n * rate) + 1)


class Attack:
    """Plain cosine matching at FMR 1e-3 between people's two samples (``stored`` and ``fresh``)."""

    def __init__(self, stored: np.ndarray, fresh: np.ndarray) -> None:
        self.samples = {"stored": unit(stored), "fresh": unit(fresh)}
        rng = np.random.default_rng(3)
        i, j = rng.integers(0, N, 400_000), rng.integers(0, N, 400_000)
        keep = i != j
        impostor = np.einsum("ij,ij->i", self.samples["stored"][i[keep]], self.samples["fresh"][j[keep]])
        self.threshold = float(tar_at_far(np.zeros(1), impostor, FAR)["threshold"])

    def accepted(self, rebuilt: np.ndarray, against: str = "fresh") -> int:
        """How many of ``rebuilt`` (row i: person i) pass as their owner against the other sample."""
        reference = self.samples[against][: len(rebuilt)]
        return int(np.count_nonzero(np.einsum("ij,ij->i", unit(rebuilt), reference) > self.threshold))

    def closest(self, rows: np.ndarray) -> float:
        """The highest cosine of any row with any sample of anyone (a held template would give 1)."""
        best = -1.0
        for start in range(0, len(rows), 8192):
            part = unit(rows[start : start + 8192])
            for samples in self.samples.values():
                best = max(best, float((part @ samples.T).max()))
        return best


#: Chance cosines of random 512-D directions stay near 0.3 over millions of pairs; a mate scores
#: about 0.65 and a held template 1.
CHANCE_COSINE = 0.5


def reachable_arrays(root: object) -> Iterator[np.ndarray | bytes]:
    """Every numpy array and byte string reachable from ``root`` through fpmatch objects and containers."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            yield obj
            continue
        if isinstance(obj, (bytes, bytearray)):
            yield bytes(obj)
            continue
        module = type(obj).__module__ or ""
        if isinstance(obj, (dict, list, tuple, set, frozenset)) or module.startswith("fpmatch"):
            stack.extend(gc.get_referents(obj))
        elif hasattr(obj, "__dict__") and module.startswith(("fpmatch", "builtins")):
            stack.append(vars(obj))


def rows_of(buffer: np.ndarray | bytes, dim: int) -> list[np.ndarray]:
    """Every aligned run of ``dim`` values in a buffer, read as float32, float64, int32 and int64."""
    data = buffer.tobytes() if isinstance(buffer, np.ndarray) else buffer
    out = []
    for dtype in (np.float32, np.float64, np.int32, np.int64):
        values = np.frombuffer(data[: len(data) // np.dtype(dtype).itemsize * np.dtype(dtype).itemsize], dtype=dtype)
        usable = len(values) // dim * dim
        if usable:
            with np.errstate(invalid="ignore", over="ignore"):  # arbitrary bytes read as floats
                rows = values[:usable].reshape(-1, dim).astype(np.float64)
            rows = rows[np.isfinite(rows).all(axis=1) & (np.abs(rows).max(axis=1) > 0)]
            if len(rows):
                out.append(rows)
    return out


@pytest.fixture(scope="module", params=["hash", "he", "hybrid"])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A service after N enrolments and 200 verifications and identifications, and what it received."""
    scheme = request.param
    faces = FaceGenerator("centred", 21)
    people = faces.identities(N)
    stored, fresh = faces.samples(people), faces.samples(people)
    dim = stored.shape[1]
    holder = keyholder() if scheme != "hash" else None
    edge = CaptureEdge(EDGE_KEY, dim, scheme=scheme, public_context=None if holder is None else holder.public_context())
    directory = tmp_path_factory.mktemp(f"blind-{scheme}") / "store"
    service_key = ServiceKey(b"\x77" * 32)
    options = {} if holder is None else {"keyholder": holder}
    service = MatchingService.open(directory, service_key, edge=edge.profile, **options)
    names = [f"person-{i:05d}" for i in range(N)]
    for name in names:
        service.grant_consent(
            name, ["entry"], notice_version="v1", evidence_ref=name, method="app", separate=True,
            retention=timedelta(days=30),
        )  # fmt: skip
    service.enrol_many(names, edge.enrolments(stored))
    calibration_faces = FaceGenerator("centred", 22)
    labelled = calibration_faces.identities(300)
    templates = np.concatenate([calibration_faces.samples(labelled), calibration_faces.samples(labelled)])
    service.calibrate(calibration=edge.calibration(templates, np.tile(np.arange(300), 2), 1e-4))
    received: list[ProbeMessage] = []
    for i in range(200):
        probe = edge.probe(fresh[i])
        received.append(probe)
        assert service.verify(names[i], probe, "entry").value == "match"
        stranger = edge.probe(faces.samples(faces.identities(1))[0])
        received += [stranger]
        service.identify(stranger, "entry")
    return {
        "scheme": scheme, "service": service, "edge": edge, "directory": directory, "stored": stored,
        "fresh": fresh, "received": received, "service_key": service_key, "attack": Attack(stored, fresh),
    }  # fmt: skip


def stored_codes(service: MatchingService) -> np.ndarray:
    return np.stack([np.frombuffer(t.code or b"", dtype=np.uint8) for t in service.store.templates()])


def test_nothing_the_service_holds_rebuilds_a_template(deployment: dict[str, Any]) -> None:
    service, attack, dim = deployment["service"], deployment["attack"], deployment["edge"].dim
    limit = allowed_accepts(N)
    profile = deployment["edge"].profile
    probes = deployment["received"][0::2]
    if profile.hashed:
        # Codes inverted with a key that is not the transform key: another key, or the service's own secret.
        codes = stored_codes(service)
        for key in (HashKey(b"\x01" * 32), HashKey(deployment["service_key"].secret)):
            assert attack.accepted(reconstruct_templates(codes, CancellableHash(key, dim))) <= limit
        # Probe messages (person i's fresh sample for i < 200): codes inverted with another key,
        # against the person's enrolled sample.
        guess = CancellableHash(HashKey(b"\x02" * 32), dim)
        assert attack.accepted(reconstruct_templates(np.stack([p.code for p in probes]), guess), "stored") <= limit
    if profile.encrypted:  # rotated probe values taken as templates
        values = np.stack([p.values for p in probes]).astype(np.float64)
        assert attack.accepted(values, "stored") <= limit
    # Every aligned row of every array and byte string reachable from the service, and of every
    # file in its directory, read as float or integer values: none is near anyone's template.
    buffers = list(reachable_arrays(service)) + [p.read_bytes() for p in deployment["directory"].rglob("*") if p.is_file()]
    buffers += [p.to_bytes() for p in deployment["received"]]
    assert sum(len(b.tobytes() if isinstance(b, np.ndarray) else b) for b in buffers) > N * dim // 8
    closest = max(attack.closest(rows) for buffer in buffers for rows in rows_of(buffer, dim))
    assert closest < CHANCE_COSINE


def test_the_scan_finds_templates_where_they_are_held(deployment: dict[str, Any]) -> None:
    """The scan above is not blind itself: plain or fixed-point templates are found at once."""
    attack, edge = deployment["attack"], deployment["edge"]
    held = deployment["stored"][:3]
    fixed_point = np.rint(unit(held) * 2**23).astype(np.int64)
    for buffer in (held, fixed_point, held.astype(np.float64).tobytes()):
        assert max(attack.closest(rows) for rows in rows_of(buffer, edge.dim)) > 0.999


def test_the_same_attacks_with_the_edge_key_succeed(deployment: dict[str, Any]) -> None:
    """The control: what the service holds plus the capture edge's key does give templates back."""
    service, attack, edge = deployment["service"], deployment["attack"], deployment["edge"]
    if edge.profile.hashed:
        with_key = reconstruct_templates(stored_codes(service), CancellableHash(EDGE_KEY, edge.dim))
        assert attack.accepted(with_key) > N // 2
    if edge.profile.encrypted:
        probes = deployment["received"][0::2]
        values = np.stack([p.values for p in probes]).astype(np.float64)
        unrotated = values @ rotation(EDGE_KEY, edge.dim)  # R^T applied to each row: the probes themselves
        assert attack.closest(unrotated) > 0.999
        assert attack.accepted(unrotated, "stored") >= 190


def test_no_plain_or_rotated_template_is_written(deployment: dict[str, Any]) -> None:
    directory, edge = deployment["directory"], deployment["edge"]
    contents = [p.read_bytes() for p in directory.rglob("*") if p.is_file()]
    for template in deployment["stored"][:10]:
        needles = [template.tobytes(), unit(template).tobytes()]
        record = edge.enrolment(template)
        if record.values is not None:  # what the service received, before it encrypted it
            needles.append(record.values.tobytes())
        pieces = [piece for needle in needles for piece in windows(needle)[:4]]
        assert not any(piece in data for piece in pieces for data in contents)


def _serve_key_holder(connection: Any, peer: Any) -> None:
    from fpmatch.he import KeyHolder, serve

    peer.close()
    serve(KeyHolder(limits=OPEN_LIMITS), connection)  # the secret key exists in this process only


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(), reason="needs fork")
def test_the_parties_in_separate_processes(tmp_path: Path) -> None:
    """The key holder in its own process, its key made there: the service reaches it only
    through its connection, and nothing reachable from the service is secret-key material."""
    import multiprocessing

    from fpmatch.he import RemoteKeyHolder

    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    process = context.Process(target=_serve_key_holder, args=(theirs, ours), daemon=True)
    process.start()
    theirs.close()
    try:
        remote = RemoteKeyHolder(ours)
        faces = FaceGenerator("centred", 5)
        people = faces.identities(300)
        stored, fresh = faces.samples(people), faces.samples(people)
        edge = CaptureEdge(EDGE_KEY, stored.shape[1], public_context=remote.public_context())
        with MatchingService.open(tmp_path / "store", ServiceKey(b"\x31" * 32), edge=edge.profile, keyholder=remote) as svc:
            names = [f"p{i}" for i in range(300)]
            for name in names:
                svc.grant_consent(name, ["entry"], notice_version="v1", evidence_ref=name, method="app",
                                  separate=True, retention=timedelta(days=30))  # fmt: skip
            svc.enrol_many(names, edge.enrolments(stored))
            svc.calibrate(0.01)  # from the codes: centred model
            assert svc.verify("p3", edge.probe(fresh[3]), "entry").value == "match"
            assert svc.verify("p3", edge.probe(fresh[4]), "entry").value == "no_match"
            assert [m.subject for m in svc.identify(edge.probe(fresh[7]), "entry", k=1)] == ["p7"]
            assert not any(isinstance(b, bytes) and b"FPHESEC1" in b for b in reachable_arrays(svc))
    finally:
        ours.close()
        process.join(10)
    assert process.exitcode == 0
