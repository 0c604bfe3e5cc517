"""Photos in, at the capture edge: detect, align and embed a face with a model shipped in the package.

``pip install 'fpmatch[faces]'`` adds dlib's face-recognition ResNet (128-D
embeddings; weights in the ``face-recognition-models`` package, nothing is
downloaded) and Pillow to read photos.

Consent reaches the camera:

* :func:`embed` (enrolment) takes a photo of exactly one person. A photo with
  more than one face enrols nobody (:class:`MultipleFacesError`): the others
  are bystanders who gave no consent.
* :func:`embed_probe` (matching) embeds only the chosen face (the largest by
  default); the other faces are detected as boxes and never embedded.
* No face (:class:`NoFaceError`), an unreadable file or corrupt image data
  (:class:`ImageError`) are typed errors.

The embeddings exist only at the capture edge, for the moment of capture:
:class:`fpmatch.CaptureEdge` accepts a photo wherever it accepts an embedding.
"""

from __future__ import annotations

from typing import Union

import numpy as np

from ..edge import Calibration, CaptureEdge
from ..errors import InvalidInputError
from .errors import FaceModelUnavailableError, ImageError, MultipleFacesError, NoFaceError
from .images import Photo, describe, is_photo, read_image
from .model import DIM, Face, FaceModel, default_model, model_directory

#: Decision threshold (cosine of unit-normalised embeddings) for this model: dlib's own rule,
#: descriptor distance below 0.6, at the descriptors' typical length of about 1.4.
MODEL_THRESHOLD = 0.91
#: The false-match rate recorded with :data:`MODEL_THRESHOLD`: the order dlib reports for its
#: rule (99.38% accuracy on LFW), not measured by fpmatch; calibrate on your own labelled photos.
MODEL_FMR = 1e-2

Choice = Union[str, int, Face]


def detect(photo: Photo, *, model: FaceModel | None = None) -> list[Face]:
    """The faces in a photo as boxes, largest first; nothing is embedded."""
    return (model or default_model()).detect(read_image(photo))


def embed(photo: Photo, *, model: FaceModel | None = None) -> np.ndarray:
    """The (128,) float32 embedding of the one face in an enrolment photo.

    Refuses a photo with no face (:class:`NoFaceError`) or more than one
    (:class:`MultipleFacesError`): nobody is embedded then.
    """
    model = model or default_model()
    image = read_image(photo)
    faces = model.detect(image)
    if not faces:
        raise NoFaceError(f"{describe(photo)}: no face found (a frontal, well-lit face at least 40 pixels wide)")
    if len(faces) > 1:
        raise MultipleFacesError(
            f"{describe(photo)} shows {len(faces)} faces; an enrolment photo must show only the consenting "
            "person (nobody was enrolled or embedded)"
        )
    return model.embed_face(image, faces[0])


def embed_probe(photo: Photo, face: Choice = "largest", *, model: FaceModel | None = None) -> np.ndarray:
    """The (128,) float32 embedding of the chosen face of a probe photo; other faces are never embedded.

    ``face``: ``"largest"`` (the person nearest the camera), an index into
    :func:`detect`'s list, or a :class:`Face` box from it.
    """
    model = model or default_model()
    image = read_image(photo)
    faces = model.detect(image)
    if not faces:
        raise NoFaceError(f"{describe(photo)}: no face found (a frontal, well-lit face at least 40 pixels wide)")
    if isinstance(face, Face):
        if face not in faces:
            raise NoFaceError(f"{describe(photo)}: the chosen face {face} is not among the faces detected")
        chosen = face
    elif face == "largest":
        chosen = faces[0]
    elif isinstance(face, int) and not isinstance(face, bool):
        if not 0 <= face < len(faces):
            raise NoFaceError(f"{describe(photo)} shows {len(faces)} face(s); there is no face {face}")
        chosen = faces[face]
    else:
        raise InvalidInputError(f"face must be 'largest', an index or a Face box, got {face!r}")
    return model.embed_face(image, chosen)


def calibration(edge: CaptureEdge) -> Calibration:
    """The threshold :data:`MODEL_THRESHOLD` as a calibration for ``edge``'s service.

    For the encrypted schemes (cosines) and for ``hash`` without an offset
    (whose scores estimate cosines). Where labelled photos of enough people
    are at hand, prefer ``edge.calibration(photos, labels, target_fmr)``.
    """
    if edge.dim != DIM:
        raise InvalidInputError(f"this capture edge takes {edge.dim}-D templates; the face model gives {DIM}-D")
    if edge.profile.narrow_cone:
        raise InvalidInputError("an edge that removes an offset scores in other units; calibrate it with labelled photos")
    return Calibration(edge.profile.profile_id, MODEL_FMR, MODEL_THRESHOLD, 0)


__all__ = [
    "DIM",
    "MODEL_FMR",
    "MODEL_THRESHOLD",
    "Face",
    "FaceModel",
    "FaceModelUnavailableError",
    "ImageError",
    "MultipleFacesError",
    "NoFaceError",
    "calibration",
    "default_model",
    "detect",
    "embed",
    "embed_probe",
    "is_photo",
    "model_directory",
    "read_image",
]
