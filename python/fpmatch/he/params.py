"""Encryption parameters of the ``he`` and ``hybrid`` schemes, and their checks.

Templates are encrypted with CKKS keys made by TenSEAL (Microsoft SEAL), used
with *coefficient encoding*: a template value ``x`` is stored as the integer
``round(x * 2**template_scale_bits)`` in one coefficient of a ring element,
and a probe value ``p`` multiplies ciphertexts as the integer
``round(p * 2**probe_scale_bits)``. Scoring is then integer-linear: no
rotations, no rescaling, no relinearisation, so a ciphertext needs only one
prime ``q`` at its data level, and every product is exact modulo ``q``.

Security. A parameter set is ``(N, bit sizes of the coefficient-modulus
primes)``. The last prime is SEAL's special prime, used only while encrypting
(it divides the fresh noise down); the others form the data level, which must
be exactly one prime here. The total number of modulus bits may not exceed the
HomomorphicEncryption.org standard's bound for 128-bit classical security
(ternary secrets): N=4096: 109, N=8192: 218, N=16384: 438 (and 1024: 27,
2048: 54, 32768: 881). Anything above is refused with
:class:`InsecureParametersError`; a smaller total is *more* secure and allowed.

Precision. A decrypted score is ``cos + e``. Rounding the probe to
``probe_scale_bits`` dominates ``e`` (standard deviation about
``0.3 * 2**-probe_scale_bits``: 1.8e-5 with the defaults); fresh encryption
noise adds about ``15 * 2**-template_scale_bits`` (1.8e-6). Measured with the
defaults on 2,010,000 synthetic pairs per profile: largest ``|e|`` 8.6e-5
(512-D, centred) and 9.1e-5 (128-D, dlib-like offset); over 1.2e8 scores
(benchmarks/bench_eval.py) 1.004e-4. Decisions equal plain cosine except for
scores within about 1e-4 of the threshold. (TenSEAL's slot-encoded
dot product at the same ring size, primes [40, 20, 40], was measured with
errors near 0.1.)

Defaults, measured (2-core AMD EPYC, 512-D, gallery of 16,384, other jobs
running): N=4096 against N=8192, both with primes of 44 and 60 bits, gave
2,150 against 1,890 enrolments per second, 1.12M against 0.86M templates
scored per second on one core, 2.8 against 6.7 ms per 1:1 verification, and
the same precision. N=4096 is also the smallest ring the standard allows a
44-bit data prime plus a special prime in (104 of the 109 bits allowed). The
44-bit data prime leaves a factor of 64 between the largest honest score and
q/2, which the key holder uses to detect ciphertexts that were tampered with
or made under another key, while keeping every weighted sum of up to 2048
terms exact in 64-bit integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..errors import InvalidInputError
from .errors import InsecureParametersError

#: Largest total coefficient-modulus size (bits) with 128-bit classical security
#: for a ternary secret, per the HomomorphicEncryption.org standard (Nov 2018).
HE_STANDARD_128: Mapping[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}

#: SEAL accepts primes of at most 60 bits.
MAX_PRIME_BITS = 60
#: Ciphertext values are stored in 6 bytes (:mod:`fpmatch.he._packing`), so the data prime is
#: below 2**48 (the float64 modular product in :mod:`fpmatch.he._ring` would allow 2**50).
MAX_DATA_PRIME_BITS = 48
#: Headroom (bits) between the largest honest score and q/2; see the module notes.
RANGE_HEADROOM_BITS = 3


def check_security(poly_modulus_degree: int, prime_bits: Sequence[int]) -> None:
    """Refuse a ring degree and modulus primes weaker than 128-bit security."""
    n = poly_modulus_degree
    if isinstance(n, bool) or not isinstance(n, int) or n not in HE_STANDARD_128:
        known = ", ".join(str(k) for k in HE_STANDARD_128)
        raise InsecureParametersError(
            f"poly_modulus_degree must be one of {known} (the degrees with a 128-bit security "
            f"bound in the HomomorphicEncryption.org standard), got {n!r}"
        )
    total = sum(int(b) for b in prime_bits)
    limit = HE_STANDARD_128[n]
    if total > limit:
        raise InsecureParametersError(
            f"N={n} with a {total}-bit coefficient modulus is below 128-bit security: the "
            f"HomomorphicEncryption.org standard allows at most {limit} bits at N={n}; "
            "use fewer or smaller primes, or a larger N"
        )


@dataclass(frozen=True)
class HEParams:
    """A CKKS parameter set and the fixed-point scales used for scores.

    ``coeff_mod_bit_sizes`` is ``(data prime, special prime)``. Scores are
    integers at scale ``2**(template_scale_bits + probe_scale_bits)``.
    """

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (44, 60)
    template_scale_bits: int = 23
    probe_scale_bits: int = 14

    def __post_init__(self) -> None:
        bits = tuple(self.coeff_mod_bit_sizes)
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in bits):
            raise InvalidInputError(f"coeff_mod_bit_sizes must be integers, got {self.coeff_mod_bit_sizes!r}")
        object.__setattr__(self, "coeff_mod_bit_sizes", bits)
        check_security(self.poly_modulus_degree, bits)
        if len(bits) != 2:
            raise InvalidInputError(
                "coeff_mod_bit_sizes must be (data prime bits, special prime bits): scores need "
                f"exactly one data prime, and SEAL needs a special prime to encrypt; got {bits}"
            )
        if any(not 20 <= b <= MAX_PRIME_BITS for b in bits):
            raise InvalidInputError(f"each prime must have 20 to {MAX_PRIME_BITS} bits, got {bits}")
        for name, value, low, high in (
            ("template_scale_bits", self.template_scale_bits, 16, 30),
            ("probe_scale_bits", self.probe_scale_bits, 8, 20),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidInputError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        need = self.scale_bits + 1 + RANGE_HEADROOM_BITS
        if not need <= bits[0] <= MAX_DATA_PRIME_BITS:
            raise InvalidInputError(
                f"the data prime must have {need} to {MAX_DATA_PRIME_BITS} bits for scores at "
                f"scale 2**{self.scale_bits}, got {bits[0]}"
            )

    @property
    def scale_bits(self) -> int:
        """log2 of the fixed-point scale of a decrypted score (at full probe scale)."""
        return self.template_scale_bits + self.probe_scale_bits

    @property
    def data_prime_bits(self) -> int:
        return self.coeff_mod_bit_sizes[0]

    def probe_scale_bits_for(self, dim: int) -> int:
        """The probe scale for ``dim``-D templates that keeps every sum exact in int64.

        A weighted sum of ``dim`` values below q/2 with weights summing to at most
        ``2**bits * sqrt(dim) + dim`` must stay below 2**63.
        """
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= self.poly_modulus_degree:
            raise InvalidInputError(
                f"template dimension must be an integer in [1, {self.poly_modulus_degree}] "
                f"for N={self.poly_modulus_degree}, got {dim!r}"
            )
        budget = 2.0 ** (63 - (self.data_prime_bits - 1)) - dim
        bits = min(self.probe_scale_bits, int(math.floor(math.log2(budget / math.sqrt(dim)))) if budget > 0 else 0)
        if bits < 8:
            raise InvalidInputError(
                f"{dim}-D templates are too long for a {self.data_prime_bits}-bit data prime; "
                "use a smaller data prime"
            )
        return bits


#: The parameters fpmatch uses unless told otherwise (see the module notes).
DEFAULT_PARAMS = HEParams()
#: Fresh encryptions a packed ciphertext may absorb (re-randomisations, reclaims) before it
#: takes no more templates: each adds one unit of fresh noise (std about 15 at N=4096) to
#: every coefficient.
MAX_REFRESHES = 256
