"""Ring arithmetic modulo the single data prime q, over SEAL's own NTT.

Elements of Z_q[X]/(X^N + 1) are int64 numpy arrays. Two representations
are used: coefficients (``coeff``) and SEAL's NTT evaluation order (``ntt``).
Additions and integer-scalar products are the same in both, so scoring works
on either. Every random or secret-dependent step (key generation, encryption,
the NTT tables) is SEAL's; this module only moves numbers in and out.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import tenseal as ts
from tenseal import sealapi
from tenseal.sealapi import util as seal_util

from .. import _core
from ..errors import InvalidInputError
from .errors import CiphertextFormatError, InsecureParametersError
from ._packing import pack
from ._zeros import CiphertextReader, seal_values, zstandard
from .params import MAX_DATA_PRIME_BITS, check_security


class Ring:
    """N, q, and the NTT of the data level of one TenSEAL CKKS context."""

    def __init__(self, context: ts.Context) -> None:
        ten_seal = context.seal_context().data
        key_parms = ten_seal.key_context_data().parms()
        if getattr(key_parms.scheme(), "name", "") != "CKKS":
            raise InvalidInputError(f"the he schemes need a CKKS context, got {key_parms.scheme()}")
        degree = int(key_parms.poly_modulus_degree())
        prime_bits = [m.bit_count() for m in key_parms.coeff_modulus()]
        check_security(degree, prime_bits)
        # A SEAL context of the sealapi module: its NTT tables are reachable from Python.
        self.seal = sealapi.SEALContext(key_parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
        if not self.seal.parameters_set():
            raise InsecureParametersError(f"SEAL rejects these parameters: {self.seal.parameters_error_message()}")
        data = self.seal.first_context_data()
        moduli = data.parms().coeff_modulus()
        if len(moduli) != 1:
            raise InvalidInputError(
                f"scores need exactly one data prime (a context with {len(moduli) + 1} primes was given)"
            )
        self.modulus = moduli[0]
        self.n = degree
        self.q = int(self.modulus.value())
        if self.q.bit_length() > MAX_DATA_PRIME_BITS:
            raise InvalidInputError(f"the data prime may have at most {MAX_DATA_PRIME_BITS} bits")
        self.prime_bits = tuple(prime_bits)
        self.parms_id = self.seal.first_parms_id()
        self._tables = data.small_ntt_tables()
        self._q_inverse = 1.0 / self.q
        self.n_inverse = pow(self.n, -1, self.q)
        self.native_ntt = False  # SEAL's own transform until the core's is shown to agree with it
        self.psi = int(self.monomial_ntt(1)[0])  # SEAL's primitive 2N-th root: value 0 of the NTT of X
        self.native_ntt = self._native_ntt_agrees()

    # -- representations ---------------------------------------------------------

    def reduce(self, a: np.ndarray) -> np.ndarray:
        """Values mod q in [0, q)."""
        return np.mod(a, self.q)

    def centre(self, a: np.ndarray) -> np.ndarray:
        """Values mod q in (-q/2, q/2], in place on a fresh int64 array."""
        out = np.mod(a, self.q)
        out[out > self.q // 2] -= self.q
        return out

    def ntt(self, coeff: np.ndarray) -> np.ndarray:
        """Coefficients (any representatives) -> NTT values in [0, q): the core's transform where it
        agrees with SEAL's, else SEAL's."""
        if self.native_ntt:
            return _core.ntt_forward(self.reduce(coeff).reshape(1, self.n), self.q, self.psi)[0]
        return self.seal_ntt(coeff)

    def seal_ntt(self, coeff: np.ndarray) -> np.ndarray:
        """Coefficients (any representatives) -> NTT values in [0, q), by SEAL's own transform."""
        values = seal_util.ntt_negacyclic_harvey(self.reduce(coeff).tolist(), self._tables)
        return np.fromiter(values, dtype=np.int64, count=self.n)

    def intt(self, values: np.ndarray) -> np.ndarray:
        """NTT values (any representatives) -> coefficients in [0, q)."""
        coeff = seal_util.inverse_ntt_negacyclic_harvey(self.reduce(values).tolist(), self._tables)
        return np.fromiter(coeff, dtype=np.int64, count=self.n)

    def mulmod(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Elementwise a*b mod q for values in [0, q), q < 2**50.

        The quotient is estimated in float64 (off by at most one), and the
        remainder is computed in wrapping int64 arithmetic, which is exact
        because the true remainder lies in (-q, 2q).
        """
        quotient = np.floor(a.astype(np.float64) * b.astype(np.float64) * self._q_inverse).astype(np.int64)
        with np.errstate(over="ignore"):
            remainder = a * b - quotient * self.q
        return np.mod(remainder, self.q)

    def monomial_ntt(self, power: int) -> np.ndarray:
        """NTT values of X**power (power may be negative), in [0, q)."""
        coeff = np.zeros(self.n, dtype=np.int64)
        power %= 2 * self.n
        coeff[power % self.n] = 1 if power < self.n else self.q - 1
        return self.ntt(coeff)

    def _native_ntt_agrees(self) -> bool:
        """Whether the core's forward NTT gives SEAL's values (checked on X and on spread values)."""
        polys = np.zeros((2, self.n), dtype=np.int64)
        polys[0, 1] = 1
        polys[1] = np.random.default_rng(0).integers(0, self.q, self.n)
        try:
            native = _core.ntt_forward(polys, self.q, self.psi)
        except InvalidInputError:
            return False
        return all(np.array_equal(native[i], self.seal_ntt(polys[i])) for i in range(2))

    # -- SEAL objects --------------------------------------------------------------

    def public_key(self, context: ts.Context) -> tuple[sealapi.PublicKey, str]:
        """The context's public key as a sealapi object (SEAL validates it on load), and its
        fingerprint: a public 16-hex-digit name for the key pair, from the public key's numbers."""
        with tempfile.TemporaryDirectory(prefix="fpmatch-pk-") as folder:
            path = str(Path(folder) / "public.key")
            context.public_key().data.save(path)
            key = sealapi.PublicKey()
            key.load(self.seal, path)
            array = key.data().dyn_array()
            if zstandard is not None:  # the whole key in one read of what SEAL wrote
                with open(path, "rb") as f:
                    values = seal_values(f.read(), array.size(), zstandard.ZstdDecompressor(), array)
            else:
                values = np.fromiter(map(array.at, range(array.size())), dtype=np.uint64, count=array.size())
        digest = hashlib.sha256(b"fpmatch.he.key-id.v1")
        digest.update(np.array([self.n, *self.prime_bits, self.q], dtype=np.int64).tobytes())
        digest.update(values.astype(np.uint64, copy=False).tobytes())
        return key, digest.hexdigest()[:16]


class ZeroEncryptor:
    """Fresh public-key encryptions of zero, split into (c0 coefficients, c1 NTT values)."""

    def __init__(self, ring: Ring, public_key: sealapi.PublicKey) -> None:
        self._ring = ring
        self._encryptor = sealapi.Encryptor(ring.seal, public_key)
        self._evaluator = sealapi.Evaluator(ring.seal)
        self._reader = CiphertextReader(ring.n)
        self._native_intt = self._native_intt_agrees()

    def encrypt(self, count: int, packed: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``count`` encryptions of 0: c0 as centred coefficients, c1 as centred NTT values.

        ``packed``: both in the packed form of :mod:`fpmatch.he._packing` ((count, 6N) uint8).
        """
        n = self._ring.n
        c0 = np.empty((count, n), dtype=np.int64)
        c1 = np.empty((count, n), dtype=np.int64)
        ciphertext = sealapi.Ciphertext(self._ring.seal)
        for i in range(count):
            self._encryptor.encrypt_zero(ciphertext)
            if ciphertext.coeff_modulus_size() != 1 or ciphertext.size() != 2 or not ciphertext.is_ntt_form():
                raise CiphertextFormatError("SEAL produced a ciphertext of an unexpected shape")
            c0[i], c1[i] = self._reader.read(ciphertext)
            if not self._native_intt:
                self._evaluator.transform_from_ntt_inplace(ciphertext)
                c0[i] = self._reader.read(ciphertext)[0]
        if self._native_intt and count:
            c0 = _core.ntt_inverse(c0, self._ring.q, self._ring.psi)  # SEAL left c0 in NTT form too
        if packed:
            return pack(c0, self._ring.q), pack(c1, self._ring.q)
        return self._ring.centre(c0), self._ring.centre(c1)


    def _native_intt_agrees(self) -> bool:
        """Whether the core's inverse NTT gives SEAL's own coefficients (checked on one ciphertext)."""
        ciphertext = sealapi.Ciphertext(self._ring.seal)
        self._encryptor.encrypt_zero(ciphertext)
        in_ntt = self._reader.read(ciphertext)[:1]
        self._evaluator.transform_from_ntt_inplace(ciphertext)
        try:
            return bool(np.array_equal(_core.ntt_inverse(in_ntt, self._ring.q, self._ring.psi), self._reader.read(ciphertext)[:1]))
        except InvalidInputError:
            return False


def secret_ntt(context: ts.Context, ring: Ring) -> np.ndarray:
    """The secret key's NTT values at the data prime (SEAL keeps it in NTT form)."""
    plain = context.secret_key().data.data()
    if not plain.is_ntt_form() or plain.coeff_count() < ring.n:
        raise InvalidInputError("the secret key has an unexpected layout")
    return np.fromiter(map(plain.data, range(ring.n)), dtype=np.int64, count=ring.n)
