"""Photos in, at the capture edge: the face model embeds one face per photo, the capture edge takes
photos wherever it takes embeddings, and consent reaches the camera (a photo of two people enrols
nobody; a probe embeds only the chosen face). Uses the shared photos in ``../shared/faces``."""

from __future__ import annotations

import io
import itertools
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from faces_support import ENROL, LABELLED, PROBE, TWO_PEOPLE, needs_photos, photo
from fpmatch import CaptureEdge, ConsentRequiredError, DtypeError, HashKey, InvalidInputError, MatchingService
from fpmatch import ServiceKey, VerificationOutcome, faces
from fpmatch.faces import ImageError, MultipleFacesError, NoFaceError
from fpmatch.he import KeyHolder
from PIL import Image
from service_support import OPEN_LIMITS

pytestmark = needs_photos
PURPOSE = "entry"


@pytest.fixture(scope="module")
def embeddings() -> dict[str, np.ndarray]:
    return {name: faces.embed(photo(name)) for name in LABELLED}


@pytest.fixture(scope="module")
def holder() -> KeyHolder:
    return KeyHolder(limits=OPEN_LIMITS)


@pytest.fixture
def deployment(tmp_path: Path, holder: KeyHolder) -> Iterator[tuple[CaptureEdge, MatchingService]]:
    """The default scheme (hybrid) with the face model's threshold; everyone in ENROL has consented."""
    edge = CaptureEdge(HashKey.generate(), faces.DIM, public_context=holder.public_context())
    with MatchingService.open(tmp_path / "store", ServiceKey.generate(), edge=edge.profile, keyholder=holder) as service:
        for person in ENROL:
            service.grant_consent(person, {PURPOSE}, notice_version="2026-01", evidence_ref=f"form-{person}",
                                  method="signed-form", separate=True, retention=timedelta(days=30))  # fmt: skip
        service.calibrate(calibration=faces.calibration(edge))
        yield edge, service


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def test_embed_gives_one_float32_embedding(embeddings: dict[str, np.ndarray]) -> None:
    for value in embeddings.values():
        assert value.dtype == np.float32 and value.shape == (faces.DIM,) and np.isfinite(value).all()


def test_the_model_threshold_separates_the_shared_photos(embeddings: dict[str, np.ndarray]) -> None:
    for (a, x), (b, y) in itertools.combinations(embeddings.items(), 2):
        cosine = float(unit(x) @ unit(y))
        if LABELLED[a] == LABELLED[b]:
            assert cosine >= faces.MODEL_THRESHOLD, (a, b, cosine)
        else:
            assert cosine < faces.MODEL_THRESHOLD, (a, b, cosine)


def test_same_person_matches_others_do_not(deployment: tuple[CaptureEdge, MatchingService]) -> None:
    edge, service = deployment
    assert service.profile.scheme == "hybrid"
    for person, name in ENROL.items():
        service.enrol(person, edge.enrolment(photo(name)))
    for person, name in PROBE.items():
        probe = edge.probe(photo(name))  # a message may be sent more than once; it is never stored
        assert service.verify(person, probe, PURPOSE) is VerificationOutcome.MATCH
        for other in ENROL:
            if other != person:
                assert service.verify(other, probe, PURPOSE) is VerificationOutcome.NO_MATCH
        assert [m.subject for m in service.identify(probe, PURPOSE, k=3)] == [person]


def test_photos_and_embeddings_are_interchangeable(
    deployment: tuple[CaptureEdge, MatchingService], embeddings: dict[str, np.ndarray]
) -> None:
    edge, service = deployment
    records = edge.enrolments([photo(ENROL["obama"]), photo(ENROL["biden"]).read_bytes()])
    service.enrol_many(["obama", "biden"], records)
    array = np.asarray(Image.open(photo(PROBE["obama"])).convert("RGB"))
    assert service.verify("obama", edge.probe(array), PURPOSE) is VerificationOutcome.MATCH
    assert service.verify("biden", edge.probe(embeddings[PROBE["biden"]]), PURPOSE) is VerificationOutcome.MATCH
    assert service.verify("biden", edge.probe(str(photo(PROBE["obama"]))), PURPOSE) is VerificationOutcome.NO_MATCH


def test_a_photo_of_two_people_enrols_nobody(deployment: tuple[CaptureEdge, MatchingService]) -> None:
    edge, service = deployment
    with pytest.raises(MultipleFacesError, match="2 faces"):
        edge.enrolment(photo(TWO_PEOPLE))
    with pytest.raises(MultipleFacesError):  # one such photo in a batch stops the whole batch
        edge.enrolments([photo(ENROL["obama"]), photo(TWO_PEOPLE)])
    with pytest.raises(ConsentRequiredError):  # the error is also a consent refusal
        faces.embed(photo(TWO_PEOPLE))
    assert len(service) == 0


class CountingModel(faces.FaceModel):
    def __init__(self) -> None:
        super().__init__()
        self.embedded: list[faces.Face] = []

    def embed_face(self, image: np.ndarray, face: faces.Face) -> np.ndarray:
        self.embedded.append(face)
        return super().embed_face(image, face)


def test_a_probe_embeds_only_the_chosen_face(embeddings: dict[str, np.ndarray]) -> None:
    model = CountingModel()
    found = faces.detect(photo(TWO_PEOPLE), model=model)
    assert len(found) == 2 and found[0].area >= found[1].area and model.embedded == []
    largest = faces.embed_probe(photo(TWO_PEOPLE), model=model)
    assert model.embedded == [found[0]]
    second = faces.embed_probe(photo(TWO_PEOPLE), 1, model=model)
    by_box = faces.embed_probe(photo(TWO_PEOPLE), found[1], model=model)
    assert model.embedded == [found[0], found[1], found[1]]
    np.testing.assert_array_equal(second, by_box)
    # The largest face is Joe Biden's, the other Barack Obama's.
    assert float(unit(largest) @ unit(embeddings["biden_1.jpg"])) >= faces.MODEL_THRESHOLD
    assert float(unit(second) @ unit(embeddings["biden_1.jpg"])) < faces.MODEL_THRESHOLD
    assert float(unit(second) @ unit(embeddings["obama_1.jpg"])) >= faces.MODEL_THRESHOLD
    with pytest.raises(NoFaceError, match="no face 2"):
        faces.embed_probe(photo(TWO_PEOPLE), 2, model=model)
    with pytest.raises(NoFaceError, match="not among"):
        faces.embed_probe(photo(TWO_PEOPLE), faces.Face(0, 0, 10, 10), model=model)
    with pytest.raises(InvalidInputError):
        faces.embed_probe(photo(TWO_PEOPLE), "smallest", model=model)
    assert len(model.embedded) == 3


def test_the_edge_probe_chooses_a_face(deployment: tuple[CaptureEdge, MatchingService]) -> None:
    edge, service = deployment
    service.enrol("biden", edge.enrolment(photo(ENROL["biden"])))
    assert service.verify("biden", edge.probe(photo(TWO_PEOPLE)), PURPOSE) is VerificationOutcome.MATCH
    assert service.verify("biden", edge.probe(photo(TWO_PEOPLE), face=1), PURPOSE) is VerificationOutcome.NO_MATCH


def _jpeg(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG")
    return out.getvalue()


def test_no_face_is_a_typed_error(tmp_path: Path) -> None:
    grey = np.full((240, 320, 3), 128, dtype=np.uint8)
    for photo_ in (grey, _jpeg(grey), grey[:, :, 0]):
        with pytest.raises(NoFaceError, match="no face"):
            faces.embed(photo_)
        with pytest.raises(NoFaceError):
            faces.embed_probe(photo_)


@pytest.mark.parametrize(
    "bad, message",
    [
        (b"", "empty"),
        (b"not an image at all", "not an image"),
        (b"\xff\xd8\xff\xe0" + bytes(64), "not an image|corrupt"),
        ("missing.jpg", "not found"),
        ("directory", "directory"),
        ("text.jpg", "not an image"),
        ("truncated.jpg", "corrupt"),
        ("garbled.png", "corrupt"),
    ],
    ids=["empty", "text-bytes", "jpeg-header-only", "missing", "directory", "text-file", "truncated", "garbled"],
)
def test_unreadable_and_corrupt_photos_are_typed_errors(tmp_path: Path, bad: Any, message: str) -> None:
    (tmp_path / "directory").mkdir()
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "truncated.jpg").write_bytes(photo(ENROL["obama"]).read_bytes()[:4000])
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(png, format="PNG")
    data = bytearray(png.getvalue())
    data[200:260] = bytes(60)  # zeroes inside the compressed pixels
    (tmp_path / "garbled.png").write_bytes(bytes(data))
    target = tmp_path / bad if isinstance(bad, str) else bad
    with pytest.raises(ImageError, match=message):
        faces.embed(target)
    edge = CaptureEdge(HashKey.generate(), faces.DIM, scheme="hash")
    with pytest.raises(ImageError):
        edge.probe(target)


def test_oversized_photo_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faces.images, "MAX_PIXELS", 100 * 100)
    with pytest.raises(ImageError, match="pixels"):
        faces.embed(_jpeg(np.zeros((101, 100, 3), np.uint8)))


def test_photo_input_needs_a_128_d_edge_and_embeddings_keep_their_checks() -> None:
    edge = CaptureEdge(HashKey.generate(), 512, scheme="hash")
    with pytest.raises(InvalidInputError, match="128-D"):
        edge.enrolment(photo(ENROL["obama"]))
    small = CaptureEdge(HashKey.generate(), faces.DIM, scheme="hash")
    with pytest.raises(DtypeError):  # a float64 embedding is not a photo, and is never cast
        small.probe(np.ones(faces.DIM))
    with pytest.raises(InvalidInputError):
        small.probe(np.ones((2, faces.DIM), np.float32))
    with pytest.raises(InvalidInputError, match="128-D"):
        faces.calibration(edge)


def test_calibration_from_labelled_photos(embeddings: dict[str, np.ndarray]) -> None:
    edge = CaptureEdge(HashKey.generate(), faces.DIM, public_context=KeyHolder(limits=OPEN_LIMITS).public_context())
    names = list(LABELLED)
    labels = np.array([sorted(set(LABELLED.values())).index(LABELLED[n]) for n in names])
    from_photos = edge.calibration([photo(n) for n in names], labels, 0.25)
    from_embeddings = edge.calibration(np.stack([embeddings[n] for n in names]), labels, 0.25)
    assert from_photos.threshold == pytest.approx(from_embeddings.threshold)
    assert from_photos.impostor_pairs == 42
