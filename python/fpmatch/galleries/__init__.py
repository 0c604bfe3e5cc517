"""The protected galleries a matching service holds, one per scheme, behind one interface."""

from __future__ import annotations

from typing import Any

from ..edge import EdgeProfile
from .base import ProtectedGallery, Staged, StoredRow, StoredTemplate
from .codes import INDEX_KINDS, IVF_TRAIN_AT
from .hashed import HashSchemeGallery


def open_gallery(profile: EdgeProfile, index: str, **options: Any) -> ProtectedGallery:
    """An empty gallery of the profile's scheme (the encrypted ones need ``decider`` and ``caller``)."""
    if profile.scheme == "hash":
        options.pop("decider", None), options.pop("caller", None), options.pop("candidates", None)
        return HashSchemeGallery(profile, index, **options)
    if profile.scheme == "hybrid":
        from .hybrid import HybridSchemeGallery

        return HybridSchemeGallery(profile, index, **options)
    from .encrypted import EncryptedSchemeGallery

    options.pop("shortlist", None), options.pop("candidates", None), options.pop("ivf_train_at", None)
    return EncryptedSchemeGallery(profile, index, **options)


__all__ = [
    "HashSchemeGallery",
    "INDEX_KINDS",
    "IVF_TRAIN_AT",
    "ProtectedGallery",
    "Staged",
    "StoredRow",
    "StoredTemplate",
    "open_gallery",
]
