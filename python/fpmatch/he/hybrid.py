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

from .._validate import as_subject_list, as_template_rows
from ..errors import AuthenticationError, IdConflictError, InvalidInputError, KeyMismatchError
from ..hashing import CancellableHash
from ..gallery import Gallery
from ..index import Index, load_index
from ..keys import HashKey, ensure_outside
from ._encoding import Match, Verification, check_threshold, quantise, unit_rows
from .context import PublicContext
from .encrypted import MAX_REFRESHES, _write_atomic
from .keyholder import ScoreDecider
from .scores import EncryptedScores

_MAGIC = b"FPHEHYB1"


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
        n = self.context.ring.n
        self.group = n // self.dim
        self._c0 = np.zeros((0, n), dtype=np.int64)  # coefficients, centred
        self._c1 = np.zeros((0, n), dtype=np.int64)  # NTT values, centred
        self._rows = 0
        self._used: list[int] = []  # templates placed in each row (withdrawn ones included)
        self._refreshes: list[int] = []
        self._slot: dict[int, tuple[int, int]] = {}  # id -> (row, position in row)
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
    def bytes_per_template(self) -> int:
        """Ciphertext bytes per template in a full row, plus its hash code."""
        return (2 * self.context.ring.n * 8) // self.group + self.scheme.code_size

    def enrol(self, subjects: str | Sequence[str], templates: np.ndarray) -> None:
        """Hash, encrypt and store one template per subject. All or nothing."""
        rows = as_template_rows(templates, self.dim)
        values = quantise(unit_rows(rows, self.dim), self.context.params.template_scale_bits)
        names = as_subject_list(subjects, len(values))
        taken = [name for name in names if name in self._hash]
        if taken:
            raise IdConflictError(f"already enrolled: {', '.join(taken[:5])}")
        codes = self.scheme.protect(rows)
        ring = self.context.ring
        d, g = self.dim, self.group
        # Place templates: first into the last row's free positions, then new rows.
        places: list[tuple[int, int]] = []
        reopen = self._rows > 0 and self._used[-1] < g and self._refreshes[-1] < MAX_REFRESHES
        if reopen:
            places += [(self._rows - 1, p) for p in range(self._used[-1], min(g, self._used[-1] + len(names)))]
        new_rows = -(-(len(names) - len(places)) // g)
        for r in range(new_rows):
            for p in range(g):
                if len(places) < len(names):
                    places.append((self._rows + r, p))
        # A reopened row gets a fresh encryption of zero too, so that copies of the
        # store taken before and after do not differ by the plain template values.
        c0, c1 = self.context.encrypt_zeros(new_rows + (1 if reopen else 0))
        first = self._rows - 1 if reopen else self._rows
        if reopen:
            c0[0] += self._c0[first]
            c1[0] += self._c1[first]
        for (row, p), value in zip(places, values):
            c0[row - first, p * d : (p + 1) * d] += value
        c0 = ring.centre(c0)
        c1 = ring.centre(c1)
        ids = np.arange(self._next_id, self._next_id + len(names), dtype=np.int64)
        self._hash.add_codes(names, codes, ids)  # the first change to the gallery; all checks are done
        self._ensure_capacity(first + len(c0))
        self._c0[first : first + len(c0)] = c0
        self._c1[first : first + len(c1)] = c1
        if reopen:
            self._refreshes[-1] += 1
        self._used += [0] * new_rows
        self._refreshes += [1] * new_rows
        self._rows = first + len(c0)
        for id_, (row, p) in zip(ids.tolist(), places):
            self._slot[id_] = (row, p)
            self._used[row] = max(self._used[row], p + 1)
        self._next_id += len(names)

    def withdraw(self, subject: str) -> None:
        """Erase the subject: remove their code, zero the coefficients that encrypt their template."""
        id_ = self._hash.id_of(subject)
        self._hash.remove(subject)
        row, p = self._slot.pop(id_)
        self._c0[row, p * self.dim : (p + 1) * self.dim] = 0

    # -- matching ---------------------------------------------------------------------

    def scores_for(self, subjects: Sequence[str], probe: np.ndarray) -> EncryptedScores:
        """Encrypted scores of ``probe`` against the named subjects, in that order."""
        ids = [self._hash.id_of(name) for name in subjects]
        return self._request(ids, probe)

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
        return self._slot[self._hash.id_of(subject)]

    def ciphertexts(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every ciphertext the gallery keeps, as (c0 coefficients, c1 NTT values)."""
        for row in range(self._rows):
            yield self._c0[row], self._c1[row]

    # -- persistence ----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write codes, ciphertexts and the subject table, authenticated under the hash key.

        The file holds the public context only; the hash key must live elsewhere.
        """
        target = Path(path)
        key = self.scheme.key
        ensure_outside(key, target.parent)
        ring = self.context.ring
        meta = json.dumps(
            {
                "format": 1,
                "dim": self.dim,
                "bits": self.scheme.bits,
                "offset": None if self.scheme.offset is None else np.asarray(self.scheme.offset).tolist(),
                "offset_removal": self.scheme.offset_removal,
                "key_id": key.key_id,
                "he_key_id": self.key_id,
                "n": ring.n,
                "shortlist": self.shortlist,
                "rows": self._rows,
                "used": self._used,
                "refreshes": self._refreshes,
                "next_id": self._next_id,
                "subjects": {name: [self._hash.id_of(name), *self._slot[self._hash.id_of(name)]] for name in self.subjects()},
            }
        ).encode()
        public = self.context.to_bytes()
        index = self._hash.index.serialize(key.subkey("index-mac"))
        arrays = [np.ascontiguousarray(a[: self._rows], dtype="<i8").tobytes() for a in (self._c0, self._c1)]
        body = b"".join(
            [_MAGIC, struct.pack("<QQQ", len(meta), len(public), len(index)), meta, public, index, *arrays]
        )
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
        rows, n = int(meta["rows"]), gallery.context.ring.n
        if len(body) != start + 2 * 8 * rows * n:
            raise AuthenticationError(f"{source}: ciphertext section has the wrong size")
        gallery._ensure_capacity(rows)
        for name in ("_c0", "_c1"):
            values = np.frombuffer(body, dtype="<i8", count=rows * n, offset=start).reshape(rows, n)
            if (np.abs(values) > gallery.context.ring.q // 2).any():
                raise AuthenticationError(f"{source}: ciphertext values out of range")
            getattr(gallery, name)[:rows] = values
            start += 8 * rows * n
        gallery._rows = rows
        gallery._used = [int(v) for v in meta["used"]]
        gallery._refreshes = [int(v) for v in meta["refreshes"]]
        gallery._next_id = int(meta["next_id"])
        subjects = {str(name): int(id_) for name, (id_, _, _) in meta["subjects"].items()}
        try:
            gallery._hash = Gallery.from_index(scheme, stored_index, subjects)
        except InvalidInputError:
            raise AuthenticationError(f"{source}: subject table and index disagree") from None
        for id_, row, position in meta["subjects"].values():
            gallery._slot[int(id_)] = (int(row), int(position))
        return gallery

    # -- internals ---------------------------------------------------------------------

    def _ensure_capacity(self, rows: int) -> None:
        if rows <= len(self._c0):
            return
        size = max(rows, 2 * len(self._c0), 16)
        for name in ("_c0", "_c1"):
            old = getattr(self, name)
            grown = np.zeros((size, old.shape[1]), dtype=np.int64)
            grown[: self._rows] = old[: self._rows]
            old.fill(0)  # a withdrawal must not find a stale copy in freed memory
            setattr(self, name, grown)

    def _request(self, ids: list[int], probe: np.ndarray) -> EncryptedScores:
        unit = unit_rows(probe, self.dim, "probe")
        if len(unit) != 1:
            raise InvalidInputError("one probe at a time")
        weights = quantise(unit[0], self.probe_scale_bits)
        ring = self.context.ring
        d, n = self.dim, ring.n
        # P(X) = sum_i w_i X^-i, and X^-i = -X^(N-i) in Z_q[X]/(X^N + 1).
        poly = np.zeros(n, dtype=np.int64)
        poly[0] = weights[0]
        poly[n - np.arange(1, d)] = -weights[1:]
        p_hat = ring.ntt(poly)
        where = np.array([self._slot[id_] for id_ in ids], dtype=np.int64)
        rows, row_of = np.unique(where[:, 0], return_inverse=True)
        alpha = ring.mulmod(ring.reduce(self._c1[rows]), p_hat[None, :])
        offsets = where[:, 1] * d
        gathered = self._c0[where[:, 0, None], offsets[:, None] + np.arange(d)]
        beta = ring.reduce(gathered @ weights)
        return EncryptedScores(
            key_id=self.key_id,
            scale_bits=self.context.params.template_scale_bits + self.probe_scale_bits,
            q=ring.q,
            a=alpha,
            b=beta,
            index=offsets,
            row=row_of.astype(np.int64).reshape(-1),
        )
