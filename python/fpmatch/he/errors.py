"""Errors raised only by the ``he`` and ``hybrid`` schemes.

Each derives from :class:`fpmatch.errors.FpmatchError` and from the built-in
exception a caller would catch for the same problem.
"""

from __future__ import annotations

from ..errors import FpmatchError


class InsecureParametersError(FpmatchError, ValueError):
    """Encryption parameters below 128-bit security, or unusable for scoring."""


class SecretMaterialError(FpmatchError, ValueError):
    """A context handed to the matching side carries a secret key."""


class CiphertextFormatError(FpmatchError, ValueError):
    """Ciphertext bytes are malformed, truncated, or made for other parameters."""


class CiphertextIntegrityError(CiphertextFormatError):
    """Well-formed ciphertexts that do not decrypt to scores: tampered, or another key."""


class DecryptionRefusedError(FpmatchError, PermissionError):
    """The key holder refuses: raw decryption, too little noise, or too large a request."""


class RateLimitExceededError(DecryptionRefusedError):
    """The caller has used up its request budget; retry after the stated time."""


class KeyHolderUnavailable(FpmatchError, ConnectionError):
    """The key holder could not be reached (down, unreachable or too slow); nothing was decided."""
