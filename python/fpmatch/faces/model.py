"""The face model: dlib's frontal face detector, 5-point landmarks and face-recognition ResNet (128-D).

The weights ship inside the ``face-recognition-models`` package and dlib
itself inside ``dlib-bin``; nothing is downloaded at run time. Detection finds
every face's box; landmarks (alignment) and the embedding are computed only
for the face that is used, so a bystander's face is never embedded.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FaceModelUnavailableError

#: Dimension of the embeddings the model gives.
DIM = 128
MODEL_PACKAGE = "face_recognition_models"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"


@dataclass(frozen=True)
class Face:
    """A detected face's box in the photo as read (pixels; right and bottom exclusive)."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def area(self) -> int:
        return max(0, self.right - self.left) * max(0, self.bottom - self.top)


def model_directory() -> Path:
    """Where the model package keeps its weight files, found without importing it
    (its ``__init__`` needs setuptools' ``pkg_resources``, which new environments lack)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelUnavailableError(
            "the face model's weights are not installed: pip install 'fpmatch[faces]' (face-recognition-models)"
        )
    directory = Path(next(iter(spec.submodule_search_locations))) / "models"
    for name in (LANDMARKS_FILE, RESNET_FILE):
        if not (directory / name).is_file():
            raise FaceModelUnavailableError(f"the face model package lacks {name} (looked in {directory})")
    return directory


class FaceModel:
    """Detects, aligns and embeds faces. One instance is safe to share between threads.

    ``upsample``: times the detector doubles the photo first (1 finds faces down to
    about 40 pixels wide). ``jitters``: extra randomly shifted crops averaged into the
    embedding (0 is dlib's single pass; more is slower and slightly more stable).
    """

    def __init__(self, *, upsample: int = 1, jitters: int = 0) -> None:
        try:
            import dlib
        except ImportError:
            raise FaceModelUnavailableError("the face model needs dlib: pip install 'fpmatch[faces]' (dlib-bin)") from None
        directory = model_directory()
        self.upsample = int(upsample)
        self.jitters = int(jitters)
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(str(directory / LANDMARKS_FILE))
        self._resnet = dlib.face_recognition_model_v1(str(directory / RESNET_FILE))
        self._lock = threading.Lock()  # dlib's objects keep scratch buffers: one call at a time

    def detect(self, image: np.ndarray) -> list[Face]:
        """Boxes of the faces in an RGB uint8 image, largest first (then left to right)."""
        with self._lock:
            found = self._detector(image, self.upsample)
        faces = [Face(r.left(), r.top(), r.right() + 1, r.bottom() + 1) for r in found]
        return sorted(faces, key=lambda f: (-f.area, f.left, f.top))

    def embed_face(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The (128,) float32 embedding of one face: landmarks, a 150x150 aligned crop, the ResNet."""
        box = self._dlib.rectangle(face.left, face.top, face.right - 1, face.bottom - 1)
        with self._lock:
            shape = self._landmarks(image, box)
            vector = self._resnet.compute_face_descriptor(image, shape, self.jitters)
        return np.asarray(vector, dtype=np.float32)


_default: FaceModel | None = None
_default_lock = threading.Lock()


def default_model() -> FaceModel:
    """The process-wide model, loaded on first use (about half a second)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = FaceModel()
        return _default


__all__ = ["DIM", "Face", "FaceModel", "default_model", "model_directory"]
