"""Where the shared test photos are (not a test module): ``<repo>/../shared/faces``, never copied here."""

from __future__ import annotations

from pathlib import Path

import pytest

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces"
needs_photos = pytest.mark.skipif(not FACES.is_dir(), reason=f"the shared test photos are not at {FACES}")

#: One single-face photo per person, for enrolment.
ENROL = {"obama": "obama_1.jpg", "biden": "biden_1.jpg", "alex": "alex_lacamoire_1.jpg", "rose": "rose_leslie_1.jpg"}
#: Another photo of the same people, for probes.
PROBE = {"obama": "obama_2.jpg", "biden": "biden_2.jpg", "alex": "alex_lacamoire_2.jpg", "rose": "rose_leslie_2.jpg"}
#: Every single-face photo and its person.
LABELLED = {
    "obama_1.jpg": "obama", "obama_2.jpg": "obama", "obama_3.jpg": "obama", "obama_4.jpg": "obama",
    "obama_partial_face.jpg": "obama", "biden_1.jpg": "biden", "biden_2.jpg": "biden",
    "alex_lacamoire_1.jpg": "alex", "alex_lacamoire_2.jpg": "alex",
    "rose_leslie_1.jpg": "rose", "rose_leslie_2.jpg": "rose",
}  # fmt: skip
TWO_PEOPLE = "two_people.jpg"


def photo(name: str) -> Path:
    return FACES / name
