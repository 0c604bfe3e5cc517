"""The default deployment on photos: ``fpmatch demo --photos DIR`` (``make demo PHOTOS=DIR``).

Photos named ``PERSON_N.jpg`` are people: the first of each is enrolled (with
consent recorded first), the rest are probes of that person. Other photos are
probes only; one showing several faces is also offered for enrolment, and
refused. Every photo is embedded at the capture edge and dropped; the service
sees protected messages only.
"""

from __future__ import annotations

import re
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..edge import CaptureEdge
from ..keys import HashKey, ServiceKey
from ..service import MatchingService, VerificationOutcome
from . import DIM, MODEL_THRESHOLD, MultipleFacesError, calibration, detect

SUFFIXES = (".jpg", ".jpeg", ".png")
PURPOSE = "entry"
_NUMBERED = re.compile(r"^(?P<person>.+)_(?P<n>\d+)$")


def _line(label: str, value: str) -> None:
    print(f"  {label:<52} {value}")


def _parties() -> tuple[CaptureEdge, Any, str]:
    try:
        from ..he import KeyHolder, RateLimit
    except ImportError:
        return CaptureEdge(HashKey.generate(), DIM, scheme="hash"), None, "hash"
    # One process asks every question in a second; a deployed key holder keeps its per-caller limit.
    holder = KeyHolder(limits=RateLimit(requests_per_second=1e9, burst=10**9))
    return CaptureEdge(HashKey.generate(), DIM, public_context=holder.public_context()), holder, "hybrid"


def run(directory: str | Path) -> dict[str, int]:
    """Run the demo on the photos in ``directory``; returns the counts it prints."""
    folder = Path(directory)
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
    people: dict[str, list[Path]] = {}
    others: list[Path] = []
    for path in photos:
        match = _NUMBERED.match(path.stem)
        if match:
            people.setdefault(match["person"], []).append(path)
        else:
            others.append(path)
    if not people:
        raise ValueError(f"no photos named PERSON_N.jpg in {folder}")
    edge, holder, scheme = _parties()
    counts = {"genuine": 0, "genuine_matched": 0, "impostor": 0, "impostor_matched": 0, "refused": 0}
    print(f"fpmatch demo on photos in {folder}: the {scheme} scheme, {len(people)} people, dlib's ResNet (128-D)")
    with tempfile.TemporaryDirectory(prefix="fpmatch-photos-") as store:
        # Every photo is tried against every person: more failed tries per person than a day allows.
        options = {"edge": edge.profile, "keyholder": holder, "max_face_failures": None}
        with MatchingService.open(store, ServiceKey.generate(), **options) as service:
            for person, shots in people.items():
                service.grant_consent(person, {PURPOSE}, notice_version="demo", evidence_ref=f"form-{person}",
                                      method="signed-form", separate=True, retention=timedelta(days=1))  # fmt: skip
                service.enrol(person, edge.enrolment(shots[0]))
                _line(f"enrolled {person}", f"from {shots[0].name} (consent recorded first)")
            service.calibrate(calibration=calibration(edge))
            _line("threshold", f"cosine >= {MODEL_THRESHOLD} (the face model's own rule)")
            for person, shots in people.items():
                for shot in shots[1:]:
                    probe = edge.probe(shot)
                    for claimed in people:
                        outcome = service.verify(claimed, probe, PURPOSE)
                        key = "genuine" if claimed == person else "impostor"
                        counts[key] += 1
                        counts[f"{key}_matched"] += outcome is VerificationOutcome.MATCH
                    found = [m.subject for m in service.identify(probe, PURPOSE, k=3)]
                    _line(f"identify {shot.name}", ", ".join(found) or "nobody")
            for shot in others:
                faces = detect(shot)
                found = [m.subject for m in service.identify(edge.probe(shot), PURPOSE, k=3)] if faces else []
                _line(f"identify {shot.name} ({len(faces)} face(s), largest)", ", ".join(found) or "nobody")
                if len(faces) > 1:
                    service.grant_consent(shot.stem, {PURPOSE}, notice_version="demo", evidence_ref="form",
                                          method="signed-form", separate=True, retention=timedelta(days=1))  # fmt: skip
                    try:
                        service.enrol(shot.stem, edge.enrolment(shot))
                    except MultipleFacesError:
                        counts["refused"] += 1
                        _line(f"enrol {shot.name}", "refused: bystanders gave no consent; nobody embedded")
            _line("verify, same person: matched", f"{counts['genuine_matched']} of {counts['genuine']}")
            _line("verify, another person: matched", f"{counts['impostor_matched']} of {counts['impostor']}")
            first = next(iter(people))
            service.withdraw(first)
            again = service.verify(first, edge.probe(people[first][-1]), PURPOSE)
            _line(f"withdrawal of {first}, then verify", again.value)
            _line("audit chain", "intact" if service.audit_verify().ok else "BROKEN")
    return counts


__all__ = ["run"]
