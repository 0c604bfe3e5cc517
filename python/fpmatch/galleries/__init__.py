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
        return HashSchemeGallery(profile, index, **_without(options, "decider", "caller", "candidates"))
    if profile.scheme == "hybrid":
        from .hybrid import HybridSchemeGallery

        return HybridSchemeGallery(profile, index, **options)
    from .encrypted import EncryptedSchemeGallery

    return EncryptedSchemeGallery(profile, index, **_without(options, "shortlist", "candidates", "ivf_train_at"))


def _without(options: dict[str, Any], *names: str) -> dict[str, Any]:
    """Options of other schemes dropped (a service opened with them runs another scheme)."""
    return {name: value for name, value in options.items() if name not in names}


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
