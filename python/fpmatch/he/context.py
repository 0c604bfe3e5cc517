"""The matching side's key material: a public TenSEAL context, never a secret key."""

from __future__ import annotations

import json
import struct
from typing import Callable

import numpy as np
import tenseal as ts

from ..errors import InvalidInputError, KeyMismatchError
from ._isolated import context_from, trust
from ._ring import Ring, ZeroEncryptor
from ._zeros import encrypt_shared, encrypt_units
from .errors import CiphertextFormatError, SecretMaterialError
from .params import HEParams

_MAGIC = b"FPHEPUB1"
#: Largest public context accepted (the largest parameter set's public key is a few megabytes).
MAX_CONTEXT_BYTES = 1 << 26


def frame(magic: bytes, header: bytes, serialised: bytes) -> bytes:
    """``magic``, the header's length (<I), the header, then the serialised context."""
    return magic + struct.pack("<I", len(header)) + header + serialised


def unframe(data: bytes, magic: bytes) -> tuple[bytes, bytes]:
    """(header JSON, serialised TenSEAL context) of :func:`frame` output (public contexts here, key
    holder key files): the magic is the caller's to check."""
    (meta_len,) = struct.unpack_from("<I", data, len(magic))
    start = len(magic) + 4
    return data[start : start + meta_len], data[start + meta_len :]


def serialize_public(context: ts.Context) -> bytes:
    """A TenSEAL context's public part only: no secret key, no Galois or relinearisation keys."""
    return context.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )


def pack_public_context(context: ts.Context, params: HEParams, key_id: str) -> bytes:
    """The bytes a key holder publishes: scales, key id and the public TenSEAL context."""
    meta = json.dumps(
        {
            "key_id": key_id,
            "template_scale_bits": params.template_scale_bits,
            "probe_scale_bits": params.probe_scale_bits,
        },
        sort_keys=True,
    ).encode()
    public = serialize_public(context)
    trust(public)  # made here: reading it back needs no separate process
    return frame(_MAGIC, meta, public)


class PublicContext:
    """What the matching side holds: the public key and the score scales.

    It can encrypt (enrol templates) and compute on ciphertexts, and nothing it
    holds can decrypt. Bytes that carry a secret key are refused.
    """

    @classmethod
    def _from_parent(cls, data: bytes) -> "PublicContext":
        """Bytes the parent process read already and sends its worker: no child reads them again."""
        trust(unframe(data, _MAGIC)[1])
        return cls(data)

    def __init__(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray)):
            raise InvalidInputError(f"a public context must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) > MAX_CONTEXT_BYTES:
            raise CiphertextFormatError(f"a public context of {len(data)} bytes is larger than any fpmatch makes")
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 4:
            raise CiphertextFormatError("not an fpmatch public context (bad magic)")
        header, serialised = unframe(data, _MAGIC)
        try:
            meta = json.loads(header)
            key_id = str(meta["key_id"])
            template_bits = int(meta["template_scale_bits"])
            probe_bits = int(meta["probe_scale_bits"])
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # deep JSON nesting: RecursionError
            raise CiphertextFormatError(f"damaged public context header: {exc!r}") from None
        try:
            context = context_from(serialised)
        except CiphertextFormatError:
            raise
        except Exception as exc:  # TenSEAL reports bad bytes with assorted exception types
            raise CiphertextFormatError(f"not a serialised TenSEAL context: {exc}") from exc
        if context.has_secret_key() or context.is_private():
            raise SecretMaterialError(
                "this context carries a secret key; the matching side may only hold the public "
                "context (KeyHolder.public_context())"
            )
        if not context.has_public_key():
            raise CiphertextFormatError("this context has no public key")
        ring = Ring(context)
        self.params = HEParams(
            ring.n, tuple(ring.prime_bits), template_scale_bits=template_bits, probe_scale_bits=probe_bits
        )
        public_key, self.key_id = ring.public_key(context)
        if self.key_id != key_id:
            raise KeyMismatchError(f"the public key does not match its key id ({key_id} != {self.key_id})")
        self.ring = ring
        self._context = context
        self._zero = ZeroEncryptor(ring, public_key)
        self._public: bytes | None = None  # to_bytes(), once needed

    def to_bytes(self) -> bytes:
        """The same public bytes this context was built from (secret-free by construction)."""
        return pack_public_context(self._context, self.params, self.key_id)

    @property
    def tenseal_context(self) -> ts.Context:
        """The public TenSEAL context itself."""
        return self._context

    def encrypt_zeros(self, count: int, *, packed: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``count`` fresh encryptions of zero as (c0 coefficients, c1 NTT values), centred int64
        (packed: (count, 6N) uint8, :mod:`fpmatch.he._packing`).

        SEAL makes every one; large requests are shared with worker processes
        (:mod:`fpmatch.he._zeros`).
        """
        if self._public is None:
            self._public = self.to_bytes()
        return encrypt_shared(self._public, self.ring.n, count, packed, self._zero.encrypt)

    def encrypt_zero_batches(self, count: int, batches: int, use: Callable[[np.ndarray, np.ndarray], None]) -> None:
        """``batches`` batches of ``count`` fresh encryptions of zero, packed, each handed to
        ``use(c0, c1)`` as soon as it is ready (worker processes make them while ``use`` runs)."""
        if self._public is None:
            self._public = self.to_bytes()
        encrypt_units(self._public, self.ring.n, count, batches, True, self._zero.encrypt, use)

    def encrypt_zeros_here(self, count: int, packed: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`encrypt_zeros` in this process only."""
        return self._zero.encrypt(count, packed)
