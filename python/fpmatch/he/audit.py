"""Security audits with the secret key in hand: for tests, benchmarks and reviewers.

An attacker who steals the key file can do all of this; the point is to check
what such an attacker would get (exact scores, every plaintext a gallery
still holds). Serving code never imports this module, and the key holder never
exposes what it computes.
"""

from __future__ import annotations

import os

import numpy as np

from .keyholder import KeyHolder
from .scores import EncryptedScores


class SecretKeyAudit:
    """Raw decryptions under a key file written by :meth:`KeyHolder.save`."""

    def __init__(self, key_file: str | os.PathLike[str]) -> None:
        self._holder = KeyHolder.load(key_file)
        self.key_id = self._holder.key_id
        self.template_scale = float(1 << self._holder.params.template_scale_bits)

    def scores(self, request: EncryptedScores | bytes) -> np.ndarray:
        """The exact decrypted scores (cosine units) of a request, noise included."""
        ring = self._holder._ring
        if not isinstance(request, EncryptedScores):
            request = EncryptedScores.from_bytes(request, key_id=self.key_id, n=ring.n, q=ring.q)
        return self._holder._decrypt(request)

    def decrypt(self, c0: np.ndarray, c1_hat: np.ndarray) -> np.ndarray:
        """All N plaintext coefficients of a stored ciphertext, centred, as int64."""
        ring = self._holder._ring
        product = ring.intt(ring.mulmod(ring.reduce(np.asarray(c1_hat, dtype=np.int64)), self._holder._s_hat))
        return ring.centre(product + np.asarray(c0, dtype=np.int64))
