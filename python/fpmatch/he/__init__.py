"""The ``he`` and ``hybrid`` schemes: templates encrypted under CKKS (TenSEAL/SEAL).

Two parties: a :class:`KeyHolder` owns the secret key and only ever returns
decisions (or coarse, noise-flooded scores); the matching side keeps a
:class:`PublicContext` and galleries of ciphertexts that nothing it holds can
decrypt. See :mod:`fpmatch.he.params` for parameters and security levels.
"""

from __future__ import annotations

try:
    import tenseal as _tenseal  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("fpmatch.he needs TenSEAL: pip install tenseal") from exc

from ._encoding import Match, Verification
from .context import PublicContext
from .encrypted import EncryptedGallery
from .errors import (
    CiphertextFormatError,
    CiphertextIntegrityError,
    DecryptionRefusedError,
    InsecureParametersError,
    KeyHolderUnavailable,
    RateLimitExceededError,
    SecretMaterialError,
)
from .hybrid import HybridGallery
from .keyholder import KeyHolder, RateLimit, ScoreDecider, Usage
from .params import DEFAULT_PARAMS, HE_STANDARD_128, HEParams, check_security
from .client import ClientCredentials, RemoteKeyHolder
from .remote import serve
from .scores import EncryptedScores

__all__ = [
    "CiphertextFormatError",
    "ClientCredentials",
    "CiphertextIntegrityError",
    "DEFAULT_PARAMS",
    "DecryptionRefusedError",
    "EncryptedGallery",
    "EncryptedScores",
    "HEParams",
    "HE_STANDARD_128",
    "HybridGallery",
    "InsecureParametersError",
    "KeyHolder",
    "KeyHolderUnavailable",
    "Match",
    "PublicContext",
    "RateLimit",
    "RateLimitExceededError",
    "RemoteKeyHolder",
    "ScoreDecider",
    "SecretMaterialError",
    "Usage",
    "Verification",
    "check_security",
    "serve",
]
