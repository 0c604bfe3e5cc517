"""Typed errors of the photo path: what went wrong with a photo, said so a caller can act on it."""

from __future__ import annotations

from ..errors import ConsentRequiredError, FpmatchError, InvalidInputError


class ImageError(InvalidInputError):
    """A photo cannot be read: missing or unreadable file, not an image, corrupt or truncated data, too large."""


class NoFaceError(InvalidInputError):
    """The photo shows no face the detector can find (or the chosen face is not in it)."""


class MultipleFacesError(ConsentRequiredError):
    """The photo shows more than one face: the others are bystanders who gave no consent to enrolment."""


class FaceModelUnavailableError(FpmatchError, ImportError):
    """The face model is not installed: ``pip install 'fpmatch[faces]'``."""


__all__ = ["FaceModelUnavailableError", "ImageError", "MultipleFacesError", "NoFaceError"]
