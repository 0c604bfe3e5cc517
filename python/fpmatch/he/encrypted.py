"""The ``he`` scheme: templates stored encrypted in packed blocks, scored under encryption.

Layout. A block holds up to N templates (N, the ring degree, is 4096 by
default). For each dimension j it keeps one ciphertext whose coefficient t
encrypts dimension j of the template in slot t. A probe scores a whole block
with d integer-scalar multiply-adds of ciphertexts - no rotations, no
relinearisation - and the result's coefficient t is the score of slot t.
The c0 half of each ciphertext is stored as coefficients and the c1 half as
NTT values; a block is one int64 array of shape (d, 2N), centred mod q.

Matching. The gallery holds only the public context. 1:N sends one
ring element per block plus the c0 coefficient of every live slot to the key
holder, which returns the best k positions above the threshold. 1:1 takes the
same product over the subject's block but sends the c0 coefficient of that
slot only, so the key holder decrypts exactly one value.

Enrolment. A batch fills the last block's free slots and then new blocks.
Every block it touches first gets a fresh encryption of zero added to each of
its ciphertexts: without that, two copies of the store taken before and after
would differ by the plain template values.

Withdrawal. Slot t's plaintext lives only in the c0 coefficient t of the
block's d ciphertexts (c1 and the other coefficients carry no information on
it). Withdrawal overwrites those coefficients with zeros, so no ciphertext the
gallery keeps decrypts to the template, even with the secret key. Withdrawn
slots are never reused and never sent to the key holder.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .._validate import as_subject_list, unit_rows
from ..errors import AuthenticationError, IdConflictError, InvalidInputError, KeyMismatchError, UnknownSubjectError
from ._encoding import Match, Verification, check_threshold, quantise
from ._kernel import combine
from .context import PublicContext
from .keyholder import ScoreDecider
from .scores import EncryptedScores

#: Fresh encryptions of zero a block may absorb before it is closed: each adds
#: one unit of fresh noise (std about 15 at N=4096) to every coefficient.
MAX_REFRESHES = 256
_MAGIC = b"FPHEGAL1"


@dataclass
class _Block:
    data: np.ndarray  # (dim, 2n) int64, centred: c0 coefficients | c1 NTT values
    names: list  # subject per filled slot; None once withdrawn
    refreshes: int = 0
    live: np.ndarray = field(init=False)  # slots holding a subject, ascending

    def __post_init__(self) -> None:
        self.live = np.array([t for t, name in enumerate(self.names) if name is not None], dtype=np.int64)

    def drop(self, t: int) -> None:
        self.names[t] = None
        self.live = self.live[self.live != t]


class EncryptedGallery:
    """Encrypted templates of enrolled subjects; decisions come from a key holder.

    Scoring runs on ``n_threads`` threads (0: every core).
    """

    def __init__(self, context: PublicContext | bytes, dim: int, *, n_threads: int = 1) -> None:
        self.context = context if isinstance(context, PublicContext) else PublicContext(context)
        self.probe_scale_bits = self.context.params.probe_scale_bits_for(dim)
        self.dim = dim
        self.n_threads = max(0, int(n_threads))
        self._blocks: list[_Block] = []
        self._where: dict[str, tuple[int, int]] = {}

    # -- membership --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, subject: object) -> bool:
        return subject in self._where

    def subjects(self) -> list[str]:
        return list(self._where)

    @property
    def key_id(self) -> str:
        return self.context.key_id

    @property
    def block_size(self) -> int:
        """Templates per block (the ring degree N)."""
        return self.context.ring.n

    @property
    def bytes_per_template(self) -> int:
        """Stored ciphertext bytes per template slot of a full block."""
        return 2 * self.dim * 8

    def stored_bytes(self) -> int:
        """Ciphertext bytes held now (all blocks, live or not)."""
        return sum(block.data.nbytes for block in self._blocks)

    def enrol(self, subjects: str | Sequence[str], templates: np.ndarray) -> None:
        """Encrypt and store one template per subject. All or nothing."""
        values = quantise(unit_rows(templates, self.dim), self.context.params.template_scale_bits)
        names = as_subject_list(subjects, len(values))
        taken = [name for name in names if name in self._where]
        if taken:
            raise IdConflictError(f"already enrolled: {', '.join(taken[:5])}")
        n = self.block_size
        ring = self.context.ring
        staged: dict[int, _Block] = {}
        done = 0
        last = self._blocks[-1] if self._blocks else None
        if last is not None and len(last.names) < n and last.refreshes < MAX_REFRESHES:
            start = len(last.names)
            done = min(n - start, len(names))
            data = self._refreshed(last.data)
            data[:, start : start + done] += values[:done].T
            staged[len(self._blocks) - 1] = _Block(ring.centre(data), last.names + names[:done], last.refreshes + 1)
        position = len(self._blocks)
        while done < len(names):
            take = min(n, len(names) - done)
            data = self._refreshed(None)
            data[:, :take] += values[done : done + take].T
            staged[position] = _Block(ring.centre(data), names[done : done + take], 1)
            position += 1
            done += take
        for position, block in sorted(staged.items()):
            if position < len(self._blocks):
                # The replaced copy encrypts the same templates: do not leave it in freed memory.
                self._blocks[position].data.fill(0)
                self._blocks[position] = block
            else:
                self._blocks.append(block)
            for t, name in enumerate(block.names):
                if name is not None:
                    self._where[name] = (position, t)

    def withdraw(self, subject: str) -> None:
        """Erase the subject: zero the only coefficients that encrypt their template."""
        b, t = self._locate(subject)
        block = self._blocks[b]
        block.data[:, t] = 0
        block.drop(t)
        del self._where[subject]

    # -- matching ---------------------------------------------------------------------

    def verification_request(self, subject: str, probe: np.ndarray) -> EncryptedScores:
        """The encrypted score of ``probe`` against ``subject`` (the probe is not kept)."""
        b, t = self._locate(subject)
        weights = self._probe_weights(probe)
        block = self._blocks[b].data
        q, n = self.context.ring.q, self.context.ring.n
        beta = combine([block[:, t : t + 1]], weights, q)[0, 0]
        alpha = combine([block[:, n:]], weights, q, n_threads=self.n_threads)[0]
        return self._scores(alpha[None, :], np.array([beta]), np.array([t]), np.zeros(1, dtype=np.int64))

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
        chosen = [b for b, block in enumerate(self._blocks) if block.live.size]
        if not chosen:
            raise UnknownSubjectError("the gallery is empty")
        n = self.context.ring.n
        product = combine([self._blocks[b].data for b in chosen], weights, self.context.ring.q, n_threads=self.n_threads)
        live = [self._blocks[b].live for b in chosen]
        alpha = np.ascontiguousarray(product[:, n:])
        beta = np.concatenate([product[i, slots] for i, slots in enumerate(live)])
        index = np.concatenate(live)
        row = np.repeat(np.arange(len(chosen), dtype=np.int64), [len(slots) for slots in live])
        slots = index + n * np.repeat(np.array(chosen, dtype=np.int64), [len(slots) for slots in live])
        return self._scores(alpha, beta, index, row), slots

    def subject_at(self, slot: int) -> str:
        """The subject in a slot numbered as by :meth:`identification_request`."""
        b, t = divmod(int(slot), self.block_size)
        name = self._blocks[b].names[t] if b < len(self._blocks) and t < len(self._blocks[b].names) else None
        if name is None:
            raise UnknownSubjectError(f"slot {slot} holds no subject")
        return name

    def identify(
        self, probe: np.ndarray, decider: ScoreDecider, threshold: float, k: int = 5, *, caller: str
    ) -> list[Match]:
        """1:N: up to ``k`` subjects scoring at least ``threshold``, best first; empty if none."""
        threshold = check_threshold(threshold)
        request, slots = self.identification_request(probe)
        positions = decider.best(request.to_bytes(), threshold, k, caller=caller)
        return [Match(self.subject_at(slots[p]), rank) for rank, p in enumerate(positions, start=1)]

    # -- audit and persistence --------------------------------------------------------------

    def location(self, subject: str) -> tuple[int, int]:
        """(block, slot) of an enrolled subject: ciphertexts ``block * dim + j`` hold it at coefficient ``slot``."""
        return self._locate(subject)

    def ciphertexts(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every ciphertext the gallery keeps, block by block, as (c0 coefficients, c1 NTT values)."""
        n = self.block_size
        for block in self._blocks:
            for j in range(self.dim):
                yield block.data[j, :n], block.data[j, n:]

    def save(self, path: str | os.PathLike[str], mac_key: bytes | None = None) -> None:
        """Write the gallery: public context, subject table and ciphertexts.

        With ``mac_key`` the file is authenticated (HMAC-SHA256); without it, a
        SHA-256 checksum only detects accidental damage.
        """
        ring = self.context.ring
        meta = json.dumps(
            {
                "format": 1,
                "dim": self.dim,
                "key_id": self.key_id,
                "n": ring.n,
                "q": ring.q,
                "blocks": [{"names": block.names, "refreshes": block.refreshes} for block in self._blocks],
            }
        ).encode()
        public = self.context.to_bytes()
        parts = [_MAGIC, struct.pack("<QQ", len(meta), len(public)), meta, public]
        parts += [np.ascontiguousarray(block.data, dtype="<i8").tobytes() for block in self._blocks]
        body = b"".join(parts)
        _write_atomic(Path(path), body + _tag(body, mac_key))

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], mac_key: bytes | None = None, *, n_threads: int = 1
    ) -> "EncryptedGallery":
        """Check and load a gallery written by :meth:`save`."""
        body, meta, public, offset = _read_checked(Path(path), mac_key)
        gallery = cls(public, int(meta["dim"]), n_threads=n_threads)
        ring = gallery.context.ring
        if meta["key_id"] != gallery.key_id or meta["n"] != ring.n or meta["q"] != ring.q:
            raise KeyMismatchError(f"{path}: its ciphertexts and its public context disagree")
        shape = (gallery.dim, 2 * ring.n)
        size = 8 * shape[0] * shape[1]
        for entry in meta["blocks"]:
            names = [None if name is None else str(name) for name in entry["names"]]
            if offset + size > len(body) or len(names) > ring.n:
                raise AuthenticationError(f"{path} is truncated")
            data = np.frombuffer(body, dtype="<i8", count=shape[0] * shape[1], offset=offset).astype(np.int64)
            offset += size
            if (np.abs(data) > ring.q // 2).any():
                raise AuthenticationError(f"{path}: ciphertext values out of range")
            gallery._blocks.append(_Block(data.reshape(shape), names, int(entry["refreshes"])))
        if offset != len(body):
            raise AuthenticationError(f"{path} has trailing bytes")
        for b, block in enumerate(gallery._blocks):
            for t, name in enumerate(block.names):
                if name is not None:
                    if name in gallery._where:
                        raise AuthenticationError(f"{path}: subject {name!r} appears twice")
                    gallery._where[name] = (b, t)
        return gallery

    # -- internals ---------------------------------------------------------------------

    def _locate(self, subject: str) -> tuple[int, int]:
        try:
            return self._where[subject]
        except (KeyError, TypeError):
            raise UnknownSubjectError(f"not enrolled: {subject!r}") from None

    def _probe_weights(self, probe: np.ndarray) -> np.ndarray:
        unit = unit_rows(probe, self.dim, "probe")
        if len(unit) != 1:
            raise InvalidInputError("one probe at a time")
        return quantise(unit[0], self.probe_scale_bits)

    def _refreshed(self, data: np.ndarray | None) -> np.ndarray:
        """``data`` plus fresh encryptions of zero (one per dimension), or fresh ones alone."""
        c0, c1 = self.context.encrypt_zeros(self.dim)
        fresh = np.concatenate([c0, c1], axis=1)
        return fresh if data is None else fresh + data

    def _scores(self, alpha: np.ndarray, beta: np.ndarray, index: np.ndarray, row: np.ndarray) -> EncryptedScores:
        return EncryptedScores(
            key_id=self.key_id,
            scale_bits=self.context.params.template_scale_bits + self.probe_scale_bits,
            q=self.context.ring.q,
            a=alpha,
            b=np.asarray(beta, dtype=np.int64),
            index=np.asarray(index, dtype=np.int64),
            row=np.asarray(row, dtype=np.int64),
        )


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


def _read_checked(source: Path, mac_key: bytes | None) -> tuple[bytes, dict, bytes, int]:
    """(body, meta, public context bytes, offset of the arrays) of a checked gallery file."""
    data = source.read_bytes()
    if len(data) < len(_MAGIC) + 16 + 32 or not data.startswith(_MAGIC):
        raise AuthenticationError(f"{source} is not an fpmatch encrypted gallery (or is truncated)")
    body, tag = data[:-32], data[-32:]
    if not hmac.compare_digest(_tag(body, mac_key), tag):
        raise AuthenticationError(f"{source} failed its integrity check: modified, truncated, or another key")
    meta_len, public_len = struct.unpack_from("<QQ", body, len(_MAGIC))
    start = len(_MAGIC) + 16
    if start + meta_len + public_len > len(body):
        raise AuthenticationError(f"{source} is truncated")
    meta = json.loads(body[start : start + meta_len])
    public = body[start + meta_len : start + meta_len + public_len]
    return body, meta, public, start + meta_len + public_len
