"""End-to-end demo of the default deployment on synthetic faces.

Three parties, each with its own key file: the key holder (the CKKS secret
key), the capture edge (the transform key and the key holder's public context)
and the matching service (its own key; it stores protected templates only).
The demo records consent, enrols in batches, calibrates at the edge from
labelled templates, verifies and identifies mated and non-mated probes,
withdraws a subject and shows that they no longer match, even after the store
is reopened.
"""

from __future__ import annotations

import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .edge import CaptureEdge
from .hashing import estimate_offset
from .keys import HashKey, ServiceKey
from .service import MatchingService, VerificationOutcome
from .synthetic import FaceGenerator

#: Open-set false-positive identification rate the one threshold is set for: FMR = FPIR / N.
TARGET_FPIR = 1e-2
#: Subjects per enrolment transaction.
CHUNK = 1000
#: People in the labelled calibration set (two samples each, none of them enrolled): every
#: impostor pair among them is scored, enough for FMR 1e-2 / 2,000.
CALIBRATION_PEOPLE = 1500
PURPOSE = "entry"


def _line(label: str, value: str) -> None:
    print(f"  {label:<44} {value}")


def _rate(value: float) -> str:
    return f"{value:.0e}".replace("e-0", "e-")


def _local_keyholder(path: Path) -> Any:
    from .he import KeyHolder, RateLimit

    # One process asks thousands of questions in seconds; a deployed key holder keeps its
    # default per-caller budget against remote callers probing its key.
    return KeyHolder.load(path, limits=RateLimit(requests_per_second=1e9, burst=10**9))


def _make_keys(directory: Path, encrypted: bool) -> dict[str, Path]:
    paths = {"edge": directory / "edge.key", "service": directory / "service.key"}
    HashKey.generate().save(paths["edge"])
    ServiceKey.generate().save(paths["service"])
    if encrypted:
        from .he import KeyHolder

        paths["keyholder"] = KeyHolder().save(directory / "keyholder.key")
    return paths


def run(
    n_subjects: int = 2000,
    n_probes: int = 200,
    seed: int = 7,
    *,
    profiles: Sequence[str] = ("centred", "offset"),
) -> dict[str, float]:
    """Run the demo and return its headline figures (per profile, prefixed by its name)."""
    if not 1 <= n_probes <= n_subjects:
        raise ValueError(f"need 1 <= n_probes <= n_subjects, got {n_probes} probes for {n_subjects} subjects")
    try:
        import fpmatch.he  # noqa: F401

        scheme = "hybrid"
    except ImportError:
        scheme = "hash"
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as keys_dir, tempfile.TemporaryDirectory() as stores_dir:
        paths = _make_keys(Path(keys_dir), scheme == "hybrid")
        edge_key = HashKey.load(paths["edge"])
        service_key = ServiceKey.load(paths["service"])
        holder = _local_keyholder(paths["keyholder"]) if scheme == "hybrid" else None

        print(f"fpmatch demo: the default deployment, {scheme} scheme, {n_subjects:,} opted-in subjects per profile")
        if holder is None:
            print("  (TenSEAL is not installed, so the hash scheme runs: pip install 'fpmatch[he]' for hybrid)")
        print("  who holds which key (files in a temporary directory, mode 0600, none in the store):")
        if holder is not None:
            print(f"    key holder        keyholder.key  CKKS secret key {holder.key_id}; answers decisions only")
        context = "" if holder is None else " + the key holder's public context"
        print(f"    capture edge      edge.key       transform key {edge_key.key_id}{context}; sees templates")
        print(f"    matching service  service.key    its own key {service_key.key_id}; no other party's key")

        for profile in profiles:
            store = Path(stores_dir) / profile
            figures.update(_run_profile(profile, n_subjects, n_probes, seed, store, edge_key, service_key, holder))
    figures["removed_still_identified"] = float(
        any(figures[f"{p}_withdrawn_still_matched"] for p in profiles)
    )
    return figures


def _run_profile(
    profile: str,
    n_subjects: int,
    n_probes: int,
    seed: int,
    directory: Path,
    edge_key: HashKey,
    service_key: ServiceKey,
    holder: Any,
) -> dict[str, float]:
    faces = FaceGenerator(profile, seed)
    people = faces.identities(n_subjects)
    enrolment = faces.samples(people)
    mated = faces.samples(people[:n_probes])
    strangers = faces.samples(faces.identities(n_probes))
    names = [f"subject-{i:05d}" for i in range(n_subjects)]
    dim = enrolment.shape[1]

    # The edge estimates a narrow-cone model's shared offset from embeddings it need not enrol.
    offset = estimate_offset(faces.samples(faces.identities(2000)))
    scheme = "hash" if holder is None else "hybrid"
    context = None if holder is None else holder.public_context()
    edge = CaptureEdge(edge_key, dim, scheme=scheme, public_context=context, offset=offset)
    shared = "removed at the edge" if offset is not None else "none (centred model)"
    print(f"\n[{profile} profile: {dim}-D, shared offset {shared}]")

    service = MatchingService.open(directory, service_key, edge=edge.profile, keyholder=holder)
    try:
        for name in names:
            service.grant_consent(
                name, {PURPOSE}, notice_version="demo-1", evidence_ref=f"form-{name}", method="signed-form",
                separate=True, retention=timedelta(days=365),
            )  # fmt: skip
        _line("consent recorded (separate, one purpose)", f"{n_subjects:,} subjects, purpose {PURPOSE!r}")

        start = time.perf_counter()
        for i in range(0, n_subjects, CHUNK):
            service.enrol_many(names[i : i + CHUNK], edge.enrolments(enrolment[i : i + CHUNK]))
        enrol_s = time.perf_counter() - start
        _line(
            f"enrolled (enrol_many, {CHUNK:,} per transaction)",
            f"{len(service):,} in {enrol_s:.2f} s ({n_subjects / enrol_s:,.0f}/s, edge and service)",
        )

        labelled = faces.samples(faces.identities(CALIBRATION_PEOPLE), per_identity=2)
        labels = np.repeat(np.arange(CALIBRATION_PEOPLE), 2)
        # One threshold serves 1:1 and 1:N; an open-set search meets every subject, so it is set
        # for FMR = FPIR / N.
        target_fmr = TARGET_FPIR / n_subjects
        every_pair = len(labelled) * (len(labelled) - 1) // 2
        calibration = edge.calibration(labelled, labels, target_fmr, max_pairs=every_pair)
        threshold = service.calibrate(calibration=calibration)
        unit = "cosine" if holder is not None else "score"
        _line(
            f"threshold for FMR {_rate(target_fmr)} (FPIR {_rate(TARGET_FPIR)}), set at the edge",
            f"{unit} >= {threshold:.3f} ({calibration.impostor_pairs:,} labelled impostor pairs)",
        )

        start = time.perf_counter()
        accepted = [service.verify(names[i], edge.probe(mated[i]), PURPOSE) for i in range(n_probes)]
        verify_ms = (time.perf_counter() - start) * 1000 / n_probes
        false = [service.verify(names[i], edge.probe(strangers[i]), PURPOSE) for i in range(n_probes)]
        tar = sum(o is VerificationOutcome.MATCH for o in accepted) / n_probes
        false_matches = sum(o is VerificationOutcome.MATCH for o in false)
        _line("1:1 mated probes accepted (TAR)", f"{tar:.3f}  ({verify_ms:.2f} ms per verification)")
        _line("1:1 non-mated probes accepted", f"{false_matches} of {n_probes}")

        start = time.perf_counter()
        found = [service.identify(edge.probe(mated[i]), PURPOSE, k=1) for i in range(n_probes)]
        identify_ms = (time.perf_counter() - start) * 1000 / n_probes
        rank1 = sum(bool(m) and m[0].subject == names[i] for i, m in enumerate(found)) / n_probes
        strays = sum(bool(service.identify(edge.probe(s), PURPOSE, k=1)) for s in strangers)
        _line("1:N rank-1 on mated probes", f"{rank1:.3f}  ({identify_ms:.2f} ms per identification)")
        _line("1:N non-mated probes that matched someone", f"{strays} of {n_probes}")
        other = service.verify(names[1], edge.probe(mated[1]), "payment")
        _line("1:1 for a purpose without consent (payment)", other.value)

        gone = names[0]
        erased = service.withdraw(gone)
        _line(f"withdrawal of {gone}", "protected template erased" if erased else "nothing erased")
        after = service.verify(gone, edge.probe(mated[0]), PURPOSE)
        still = any(m.subject == gone for m in service.identify(edge.probe(mated[0]), PURPOSE, k=5))
        _line("  verify afterwards", after.value)
        _line("  among the top 5 identified afterwards", "yes" if still else "no")
    finally:
        service.close()

    with MatchingService.open(directory, service_key, keyholder=holder) as reopened:
        back = gone in reopened or reopened.subject_report(gone).enrolled
        kept = reopened.verify(names[1], edge.probe(mated[1]), PURPOSE)
        _line("  after reopening the store", f"{gone} enrolled: {'yes' if back else 'no'}; {names[1]}: {kept.value}")
        audit = reopened.audit_verify()
        _line("audit chain", audit.message)

    return {
        f"{profile}_enrol_per_s": n_subjects / enrol_s,
        f"{profile}_verify_ms": verify_ms,
        f"{profile}_identify_ms": identify_ms,
        f"{profile}_tar": tar,
        f"{profile}_fmr": false_matches / n_probes,
        f"{profile}_rank1": rank1,
        f"{profile}_nonmated_identified": strays / n_probes,
        f"{profile}_withdrawn_still_matched": float(still or back or after is not VerificationOutcome.USE_ALTERNATIVE),
    }
