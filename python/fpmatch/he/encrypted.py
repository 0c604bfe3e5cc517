"""The ``he`` scheme for a single party: every template encrypted, every one scored on each search.

:class:`EncryptedGallery` is the ``he`` scheme's gallery
(:class:`~fpmatch.galleries.EncryptedSchemeGallery`, which the matching service
runs) for a party that encrypts float templates itself, without a capture
edge's rotation. It keeps the service's layout (:mod:`fpmatch.he.blocks`): a
block holds up to N templates (N, the ring degree, is 4096 by default), one
ciphertext per dimension j whose coefficient t encrypts dimension j of the
template in slot t; a probe scores a whole block with d integer-scalar
multiply-adds (the native kernel, every core).

Matching. The gallery holds only the public context. 1:N sends one ring
element per block plus the c0 coefficient of every live slot to the key
holder, which returns the best k positions above the threshold. 1:1 sends the
c0 coefficient of the subject's slot only, so the key holder decrypts one value.

Storage. Enrolment fills known-empty slots in memory; empty slots' columns
are never saved, so two files saved before and after an enrolment do not
differ by the plain template. A loaded gallery therefore opens a new block for
its next enrolment. Withdrawal zeroes the only coefficients that encrypt the
template (its c0 column); withdrawn slots are not reused here (the service
reclaims them through its key holder).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .._validate import as_subject_list, read_regular_file, unit_rows
from ..edge import EdgeProfile, EnrolmentRecord
from ..errors import AuthenticationError, IdConflictError, InvalidInputError, KeyMismatchError, UnknownSubjectError
from ..galleries.base import StoredTemplate
from ..galleries.encrypted import EncryptedSchemeGallery
from ._encoding import Match, Verification, check_threshold, quantise
from ._packing import PACKED_BYTES
from .context import PublicContext
from .keyholder import ScoreDecider
from .params import MAX_REFRESHES
from .scores import EncryptedScores

_MAGIC = b"FPHEGAL3"  # values packed in 6 bytes
_V2_MAGIC = b"FPHEGAL2"  # the same sections with int64 values: still read
_V1_MAGIC = b"FPHEGAL1"  # whole int64 blocks, empty columns included: still read
#: The transform-key id of a single party's profile: its templates are encrypted as they are.
NO_TRANSFORM = "0" * 16

__all__ = ["EncryptedGallery", "MAX_REFRESHES"]


class EncryptedGallery(EncryptedSchemeGallery):
    """Encrypted templates of enrolled subjects; decisions come from a key holder.

    Scoring runs on ``n_threads`` threads (0: every core; one by default, as the
    evaluation's one-thread figures assume).
    """

    def __init__(self, context: PublicContext | bytes, dim: int, *, n_threads: int = 1) -> None:
        context = context if isinstance(context, PublicContext) else PublicContext(context)
        probe_bits = context.params.probe_scale_bits_for(dim)  # checks dim
        profile = EdgeProfile(
            scheme="he",
            dim=dim,
            edge_key_id=NO_TRANSFORM,
            he_key_id=context.key_id,
            he_context=context.to_bytes(),
            template_scale_bits=context.params.template_scale_bits,
            probe_scale_bits=probe_bits,
        )
        super().__init__(profile, decider=None, caller="", context=context)
        self.context = context
        self.probe_scale_bits = probe_bits
        self.dim = dim
        self.n_threads = n_threads
        self._next_id = 0

    @property
    def n_threads(self) -> int:
        return self.blocks.n_threads

    @n_threads.setter
    def n_threads(self, value: int) -> None:
        self.blocks.n_threads = max(0, int(value))

    @property
    def key_id(self) -> str:
        return self.context.key_id

    @property
    def block_size(self) -> int:
        """Templates per block (the ring degree N)."""
        return self.blocks.n

    @property
    def bytes_per_template(self) -> int:
        """Ciphertext bytes per template slot of a full block (in memory and stored): 2d packed values."""
        return 2 * self.dim * PACKED_BYTES

    def stored_bytes(self) -> int:
        """Ciphertext bytes held now (all blocks, live or not)."""
        return self.blocks.nbytes

    def enrol(self, subjects: str | Sequence[str], templates: np.ndarray) -> None:
        """Encrypt and store one template per subject. All or nothing."""
        values = quantise(unit_rows(templates, self.dim), self.context.params.template_scale_bits)
        names = as_subject_list(subjects, len(values))
        taken = [name for name in names if name in self]
        if taken:
            raise IdConflictError(f"already enrolled: {', '.join(taken[:5])}")
        pid = self.profile.profile_id
        staged = self.stage_add(names, [EnrolmentRecord(pid, None, None, v) for v in values])
        staged.apply(range(self._next_id, self._next_id + len(names)))
        self._next_id += len(names)

    def withdraw(self, subject: str) -> None:
        """Erase the subject: zero the only coefficients that encrypt their template."""
        self.stage_remove([subject]).apply([])

    # -- matching ---------------------------------------------------------------------

    def verification_request(self, subject: str, probe: np.ndarray) -> EncryptedScores:
        """The encrypted score of ``probe`` against ``subject`` (the probe is not kept)."""
        slot = self._slot[self.id_of(subject)]
        return self.blocks.request(np.array([slot]), self._probe_weights(probe))

    def verify(
        self, subject: str, probe: np.ndarray, decider: ScoreDecider, threshold: float, *, caller: str
    ) -> Verification:
        """1:1: is the probe's cosine with the subject's template at least ``threshold``?"""
        threshold = check_threshold(threshold)
        request = self.verification_request(subject, probe)
        (verified,) = decider.decide(request.to_bytes(), threshold, caller=caller)
        return Verification(subject, bool(verified), threshold)

    def identification_request(self, probe: np.ndarray) -> tuple[EncryptedScores, np.ndarray]:
        """Encrypted scores of ``probe`` against every live slot, and the slot of each score.

        Slots are numbered ``block * N + t``; :meth:`subject_at` names them.
        """
        weights = self._probe_weights(probe)
        if not self._slot:
            raise UnknownSubjectError("the gallery is empty")
        return self._request_for(sorted(self._slot.values()), weights)

    def identification_requests(self, probes: np.ndarray) -> tuple[list[EncryptedScores], np.ndarray]:
        """:meth:`identification_request` for a batch of probes (m, d), scored in one sweep.

        The gallery's ciphertexts are read once for the whole batch, so a batch costs little more
        than one probe until arithmetic, not memory, bounds the kernel.
        """
        weights = self._probe_batch(probes)
        if not self._slot:
            raise UnknownSubjectError("the gallery is empty")
        return self._requests_for(sorted(self._slot.values()), weights)

    def subject_at(self, slot: int) -> str:
        """The subject in a slot numbered as by :meth:`identification_request`."""
        id_ = self._ids_at.get(int(slot))
        if id_ is None:
            raise UnknownSubjectError(f"slot {slot} holds no subject")
        return self._names[id_]

    def identify(
        self, probe: np.ndarray, decider: ScoreDecider, threshold: float, k: int = 5, *, caller: str
    ) -> list[Match]:
        """1:N: up to ``k`` subjects scoring at least ``threshold``, best first; empty if none."""
        threshold = check_threshold(threshold)
        request, slots = self.identification_request(probe)
        positions = decider.best(request.to_bytes(), threshold, k, caller=caller)
        return [Match(self.subject_at(slots[p]), rank) for rank, p in enumerate(positions, start=1)]

    def identify_batch(
        self, probes: np.ndarray, decider: ScoreDecider, threshold: float, k: int = 5, *, caller: str
    ) -> list[list[Match]]:
        """:meth:`identify` for each probe of a batch (m, d): one sweep over the gallery, one key
        holder decision per probe."""
        threshold = check_threshold(threshold)
        requests, slots = self.identification_requests(probes)
        return [
            [Match(self.subject_at(slots[p]), rank) for rank, p in enumerate(decider.best(r.to_bytes(), threshold, k, caller=caller), start=1)]
            for r in requests
        ]

    # -- audit and persistence --------------------------------------------------------------

    def location(self, subject: str) -> tuple[int, int]:
        """(block, slot) of an enrolled subject: ciphertexts ``block * dim + j`` hold it at coefficient ``slot``."""
        b, t = divmod(self._slot[self.id_of(subject)], self.block_size)
        return b, t

    def ciphertexts(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every ciphertext the gallery keeps, block by block, as (c0 coefficients, c1 NTT values)."""
        yield from self.blocks.ciphertexts()

    def save(self, path: str | os.PathLike[str], mac_key: bytes | None = None) -> None:
        """Write the gallery: public context, subject table, each block's c1 halves and each subject's column.

        With ``mac_key`` the file is authenticated (HMAC-SHA256); without it, a
        SHA-256 checksum only detects accidental damage.
        """
        ring = self.context.ring
        subjects = {name: self._slot[id_] for name, id_ in self._ids.items()}
        meta = json.dumps(
            {
                "format": 3,
                "dim": self.dim,
                "key_id": self.key_id,
                "n": ring.n,
                "q": ring.q,
                "blocks": [{"used": u, "refreshes": r} for u, r in zip(self.blocks.used, self.blocks.refreshes)],
                "subjects": subjects,
            }
        ).encode()
        public = self.context.to_bytes()
        parts = [_MAGIC, struct.pack("<QQ", len(meta), len(public)), meta, public]
        parts += [self.blocks.c1_bytes(b) for b in range(self.blocks.count)]
        parts += [self.blocks.column(slot) for slot in subjects.values()]
        body = b"".join(parts)
        _write_atomic(Path(path), body + _tag(body, mac_key))

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], mac_key: bytes | None = None, *, n_threads: int = 1
    ) -> "EncryptedGallery":
        """Check and load a gallery written by :meth:`save` (or by the format before it)."""
        body, meta, public, offset, magic = _read_checked(Path(path), mac_key)
        try:
            gallery = cls(public, int(meta["dim"]), n_threads=n_threads)
            ring = gallery.context.ring
            if meta["key_id"] != gallery.key_id or meta["n"] != ring.n or meta["q"] != ring.q:
                raise KeyMismatchError(f"{path}: its ciphertexts and its public context disagree")
            if magic == _V1_MAGIC:
                blocks, subjects = _read_v1(body, meta, offset, gallery.dim, ring.n)
            else:
                width = PACKED_BYTES if magic == _MAGIC else 8
                blocks, subjects = _read_sections(body, meta, offset, gallery.dim, ring.n, width)
        except KeyMismatchError:
            raise
        except (KeyError, TypeError, ValueError) as exc:  # typed errors of ours are ValueErrors too
            raise AuthenticationError(f"{path}: damaged gallery file ({exc})") from exc
        stored = [StoredTemplate(name, i, None, slot, column) for i, (name, (slot, column)) in enumerate(subjects.items())]
        gallery.restore(stored, blocks, None)
        gallery._next_id = len(stored)
        return gallery

    # -- internals ---------------------------------------------------------------------

    def _probe_weights(self, probe: np.ndarray) -> np.ndarray:
        unit = unit_rows(probe, self.dim, "probe")
        if len(unit) != 1:
            raise InvalidInputError("one probe at a time")
        return quantise(unit[0], self.probe_scale_bits)

    def _probe_batch(self, probes: np.ndarray) -> np.ndarray:
        unit = unit_rows(probes, self.dim, "probes")
        if len(unit) == 0:
            raise InvalidInputError("a batch needs at least one probe")
        return quantise(unit, self.probe_scale_bits)


def _read_sections(
    body: bytes, meta: dict, offset: int, dim: int, n: int, width: int
) -> tuple[list[tuple[bytes, int, int]], dict[str, tuple[int, bytes]]]:
    """Blocks' c1 halves, then subjects' columns, ``width`` bytes a value (6 packed, 8 int64 in v2)."""
    c1_size, column_size = width * dim * n, width * dim
    blocks = []
    for entry in meta["blocks"]:
        blocks.append((body[offset : offset + c1_size], int(entry["used"]), int(entry["refreshes"])))
        offset += c1_size
    subjects = {}
    for name, slot in meta["subjects"].items():
        subjects[str(name)] = (int(slot), body[offset : offset + column_size])
        offset += column_size
    if offset != len(body):
        raise ValueError("its sections do not add up to its length")
    return blocks, subjects


def _read_v1(
    body: bytes, meta: dict, offset: int, dim: int, n: int
) -> tuple[list[tuple[bytes, int, int]], dict[str, tuple[int, bytes]]]:
    size = 8 * dim * 2 * n
    blocks, subjects = [], {}
    for b, entry in enumerate(meta["blocks"]):
        if offset + size > len(body) or len(entry["names"]) > n:
            raise ValueError("it is truncated")
        data = np.frombuffer(body, dtype="<i8", count=dim * 2 * n, offset=offset).reshape(dim, 2 * n)
        offset += size
        blocks.append((np.ascontiguousarray(data[:, n:]).tobytes(), len(entry["names"]), max(1, int(entry["refreshes"]))))
        for t, name in enumerate(entry["names"]):
            if name is not None:
                if str(name) in subjects:
                    raise ValueError(f"subject {name!r} appears twice")
                subjects[str(name)] = (b * n + t, np.ascontiguousarray(data[:, t]).tobytes())
    if offset != len(body):
        raise ValueError("it has trailing bytes")
    return blocks, subjects


def _tag(body: bytes, mac_key: bytes | None) -> bytes:
    if mac_key is None:
        return hashlib.sha256(body).digest()
    if not isinstance(mac_key, bytes) or len(mac_key) < 16:
        raise InvalidInputError("mac_key must be at least 16 bytes")
    return hmac.new(mac_key, body, "sha256").digest()


def _write_atomic(target: Path, data: bytes) -> None:
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _read_checked(source: Path, mac_key: bytes | None) -> tuple[bytes, dict, bytes, int, bytes]:
    """(body, meta, public context bytes, offset of the arrays, magic) of a checked gallery file."""
    data = read_regular_file(source, "an fpmatch encrypted gallery")
    if len(data) < len(_MAGIC) + 16 + 32 or data[: len(_MAGIC)] not in (_MAGIC, _V2_MAGIC, _V1_MAGIC):
        raise AuthenticationError(f"{source} is not an fpmatch encrypted gallery (or is truncated)")
    body, tag = data[:-32], data[-32:]
    if not hmac.compare_digest(_tag(body, mac_key), tag):
        raise AuthenticationError(f"{source} failed its integrity check: modified, truncated, or another key")
    meta_len, public_len = struct.unpack_from("<QQ", body, len(_MAGIC))
    start = len(_MAGIC) + 16
    if start + meta_len + public_len > len(body):
        raise AuthenticationError(f"{source} is truncated")
    try:
        meta = json.loads(body[start : start + meta_len])
    except ValueError as exc:
        raise AuthenticationError(f"{source}: damaged header ({exc})") from exc
    if not isinstance(meta, dict):
        raise AuthenticationError(f"{source}: damaged header")
    public = body[start + meta_len : start + meta_len + public_len]
    return body, meta, public, start + meta_len + public_len, data[: len(_MAGIC)]
