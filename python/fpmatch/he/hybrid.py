"""The ``hybrid`` scheme: a Hamming shortlist from keyed hash codes, re-scored under CKKS.

Every subject is stored twice, both protected: as a
:class:`~fpmatch.hashing.CancellableHash` code in a binary index, and
encrypted. A probe is hashed, the index returns the ``shortlist`` nearest
codes, and only those candidates are scored under encryption; the key holder
decides. Decisions are those of plain cosine on the shortlist, up to CKKS
precision, at the speed of a Hamming search.

Encrypted layout. One ciphertext holds ``g = N // d`` templates side by side:
template r of the ciphertext occupies coefficients ``r*d .. r*d + d - 1``. A
probe w becomes the plaintext ``P(X) = sum_i w_i X^-i``; coefficient ``r*d``
of (template polynomial) * P is then the inner product with template r. The
c1 half of that product is one elementwise product in the NTT domain per
candidate ciphertext; of the c0 half only coefficient ``r*d`` is computed, as
d multiply-adds. The key holder so receives one value per candidate and
nothing about the other templates sharing its ciphertext.

The ciphertexts are kept by :class:`~fpmatch.he.rows.CiphertextRows`.
Withdrawal zeroes the subject's d coefficients of c0 (the only ones that
depend on their template) and removes their code from the index.
"""

from __future__ import annotations

import hmac
import json
import os
import struct
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .._validate import as_subject_list, as_template_rows, unit_rows
from ..errors import AuthenticationError, IdConflictError, InvalidInputError, KeyMismatchError
from ..hashing import CancellableHash
from ..gallery import Gallery
from ..index import Index, load_index
from ..keys import HashKey, ensure_outside
from ._encoding import Match, Verification, check_threshold, quantise
from .context import PublicContext
from .encrypted import _write_atomic
from .rows import CiphertextRows
from .keyholder import ScoreDecider
from .scores import EncryptedScores

_MAGIC = b"FPHEHYB2"


class HybridGallery:
    """Hash-code shortlist plus encrypted re-scoring; decisions come from a key holder."""

    def __init__(
        self,
        scheme: CancellableHash,
        context: PublicContext | bytes,
        *,
        index: str | Index = "flat",
        shortlist: int = 32,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
    ) -> None:
        self.scheme = scheme
        self.context = context if isinstance(context, PublicContext) else PublicContext(context)
        self.dim = scheme.dim
        self.probe_scale_bits = self.context.params.probe_scale_bits_for(self.dim)
        if isinstance(shortlist, bool) or not isinstance(shortlist, int) or shortlist < 1:
            raise InvalidInputError(f"shortlist must be a positive integer, got {shortlist!r}")
        self.shortlist = shortlist
        # The hash part: codes, subject names and ids, the shortlist search.
        self._hash = Gallery(scheme, index, hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search)
        self._rows = CiphertextRows(self.context, self.dim)
        self.group = self._rows.group
        self._slot: dict[int, int] = {}  # id -> slot
        self._next_id = 0

    # -- membership --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._hash)

    def __contains__(self, subject: object) -> bool:
        return subject in self._hash

    def subjects(self) -> list[str]:
        return self._hash.subjects()

    @property
    def index(self) -> Index:
        return self._hash.index

    @property
    def key_id(self) -> str:
        return self.context.key_id

    @property
    def rows(self) -> int:
        """Ciphertexts in use."""
        return self._rows.count

    @property
    def bytes_per_template(self) -> int:
        """Ciphertext bytes per template in a full row, plus its hash code."""
        return self._rows.row_bytes // self.group + self.scheme.code_size

    def enrol(self, subjects: str | Sequence[str], templates: np.ndarray) -> None:
        """Hash, encrypt and store one template per subject. All or nothing."""
        rows = as_template_rows(templates, self.dim)
        values = quantise(unit_rows(rows, self.dim), self.context.params.template_scale_bits)
        names = as_subject_list(subjects, len(values))
        taken = [name for name in names if name in self._hash]
        if taken:
            raise IdConflictError(f"already enrolled: {', '.join(taken[:5])}")
        codes = self.scheme.protect(rows)
        staged = self._rows.stage(values)
        ids = np.arange(self._next_id, self._next_id + len(names), dtype=np.int64)
        self._hash.add_codes(names, codes, ids)  # the first change to the gallery; all checks are done
        self._rows.apply(staged)
        self._slot.update(zip(ids.tolist(), staged.slots))
        self._next_id += len(names)

    def withdraw(self, subject: str) -> None:
        """Erase the subject: remove their code, zero the coefficients that encrypt their template."""
        id_ = self._hash.id_of(subject)
        self._hash.remove(subject)
        self._rows.erase(self._slot.pop(id_))

    # -- matching ---------------------------------------------------------------------

    def scores_for(self, subjects: Sequence[str], probe: np.ndarray) -> EncryptedScores:
        """Encrypted scores of ``probe`` against the named subjects, in that order."""
        slots = np.array([self._slot[self._hash.id_of(name)] for name in subjects], dtype=np.int64)
        unit = unit_rows(probe, self.dim, "probe")
        if len(unit) != 1:
            raise InvalidInputError("one probe at a time")
        return self._rows.request(slots, quantise(unit[0], self.probe_scale_bits))

    def verify(
        self, subject: str, probe: np.ndarray, decider: ScoreDecider, threshold: float, *, caller: str
    ) -> Verification:
        """1:1: is the probe's cosine with the subject's template at least ``threshold``?"""
        threshold = check_threshold(threshold)
        request = self.scores_for([subject], probe)
        (verified,) = decider.decide(request.to_bytes(), threshold, caller=caller)
        return Verification(subject, bool(verified), threshold)

    def shortlist_for(self, probe: np.ndarray) -> list[str]:
        """The subjects whose codes are nearest the probe's, nearest first."""
        rows = as_template_rows(probe, self.dim, "probe")
        if len(rows) != 1:
            raise InvalidInputError("one probe at a time")
        return [c.subject for c in self._hash.identify(rows, k=self.shortlist, threshold=-1.0)]

    def identify(
        self, probe: np.ndarray, decider: ScoreDecider, threshold: float, k: int = 5, *, caller: str
    ) -> list[Match]:
        """1:N: up to ``k`` shortlisted subjects scoring at least ``threshold``, best first."""
        threshold = check_threshold(threshold)
        candidates = self.shortlist_for(probe)
        if not candidates:
            return []
        request = self.scores_for(candidates, probe)
        positions = decider.best(request.to_bytes(), threshold, min(k, len(candidates)), caller=caller)
        return [Match(candidates[p], rank) for rank, p in enumerate(positions, start=1)]

    def location(self, subject: str) -> tuple[int, int]:
        """(row, position): ciphertext ``row`` holds the subject at coefficients ``position * dim`` onwards."""
        row, position = divmod(self._slot[self._hash.id_of(subject)], self.group)
        return row, position

    def ciphertexts(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every ciphertext the gallery keeps, as (c0 coefficients, c1 NTT values)."""
        yield from self._rows.ciphertexts()

    # -- persistence ----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write codes, ciphertexts and the subject table, authenticated under the hash key.

        The file holds the public context only; the hash key must live elsewhere.
        """
        target = Path(path)
        key = self.scheme.key
        ensure_outside(key, target.parent)
        meta = json.dumps(
            {
                "format": 2,
                "dim": self.dim,
                "bits": self.scheme.bits,
                "offset": None if self.scheme.offset is None else np.asarray(self.scheme.offset).tolist(),
                "offset_removal": self.scheme.offset_removal,
                "key_id": key.key_id,
                "he_key_id": self.key_id,
                "n": self.context.ring.n,
                "shortlist": self.shortlist,
                "used": self._rows.used,
                "refreshes": self._rows.refreshes,
                "next_id": self._next_id,
                "subjects": {name: [self._hash.id_of(name), self._slot[self._hash.id_of(name)]] for name in self.subjects()},
            }
        ).encode()
        public = self.context.to_bytes()
        index = self._hash.index.serialize(key.subkey("index-mac"))
        rows = [self._rows.to_bytes(r) for r in range(self._rows.count)]
        body = b"".join([_MAGIC, struct.pack("<QQQ", len(meta), len(public), len(index)), meta, public, index, *rows])
        tag = hmac.new(key.subkey("hybrid-gallery-mac"), body, "sha256").digest()
        _write_atomic(target, body + tag)

    @classmethod
    def load(cls, path: str | os.PathLike[str], key: HashKey, n_threads: int = 0) -> "HybridGallery":
        """Authenticate and load a gallery written by :meth:`save`."""
        source = Path(path)
        ensure_outside(key, source.parent)
        data = source.read_bytes()
        head = len(_MAGIC) + 24
        if len(data) < head + 32 or not data.startswith(_MAGIC):
            raise AuthenticationError(f"{source} is not an fpmatch hybrid gallery (or is truncated)")
        body, tag = data[:-32], data[-32:]
        if not hmac.compare_digest(hmac.new(key.subkey("hybrid-gallery-mac"), body, "sha256").digest(), tag):
            raise AuthenticationError(f"{source} failed authentication: modified, truncated, or another key")
        meta_len, public_len, index_len = struct.unpack_from("<QQQ", body, len(_MAGIC))
        meta = json.loads(body[head : head + meta_len])
        if meta["key_id"] != key.key_id:
            raise KeyMismatchError("the gallery was saved under a different hash key")
        start = head + meta_len
        public = body[start : start + public_len]
        offset = None if meta["offset"] is None else np.asarray(meta["offset"], dtype=np.float32)
        scheme = CancellableHash(
            key, int(meta["dim"]), int(meta["bits"]), offset, n_threads, float(meta["offset_removal"])
        )
        gallery = cls(scheme, public, shortlist=int(meta["shortlist"]))
        if gallery.key_id != meta["he_key_id"] or gallery.context.ring.n != meta["n"]:
            raise KeyMismatchError(f"{source}: its ciphertexts and its public context disagree")
        start += public_len
        stored_index = load_index(body[start : start + index_len], key.subkey("index-mac"))
        start += index_len
        size = gallery._rows.row_bytes
        used, refreshes = meta["used"], meta["refreshes"]
        if len(body) != start + size * len(used) or len(refreshes) != len(used):
            raise AuthenticationError(f"{source}: ciphertext section has the wrong size")
        slots = {int(id_): int(slot) for id_, slot in meta["subjects"].values()}
        gallery._rows.load(
            [(body[start + r * size : start + (r + 1) * size], int(used[r]), int(refreshes[r])) for r in range(len(used))],
            set(slots.values()),
        )
        gallery._next_id = int(meta["next_id"])
        subjects = {str(name): int(id_) for name, (id_, _) in meta["subjects"].items()}
        try:
            gallery._hash = Gallery.from_index(scheme, stored_index, subjects)
        except InvalidInputError:
            raise AuthenticationError(f"{source}: subject table and index disagree") from None
        gallery._slot = slots
        return gallery
