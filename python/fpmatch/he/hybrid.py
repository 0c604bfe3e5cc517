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
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .._validate import as_subject_list, as_template_rows, read_regular_file, unit_rows
from ..errors import AuthenticationError, IdConflictError, InvalidInputError, KeyMismatchError
from ..edge import EnrolmentRecord
from ..galleries.base import StoredTemplate
from ..galleries.codes import check_shortlist
from ..galleries.hybrid import HybridSchemeGallery
from ..gallery import code_index, profile_of
from ..hashing import CancellableHash
from ..index import Index, load_index
from ..keys import HashKey, ensure_outside
from ._encoding import Match, Verification, check_threshold, quantise
from .context import PublicContext
from .encrypted import _write_atomic
from .rows import CiphertextRows
from .keyholder import ScoreDecider
from .scores import EncryptedScores

_MAGIC = b"FPHEHYB3"  # ciphertext rows packed, 6 bytes a value
_V2_MAGIC = b"FPHEHYB2"  # the same with int64 rows (16N bytes each): still read


class HybridGallery(HybridSchemeGallery):
    """Hash-code shortlist plus encrypted re-scoring; decisions come from a key holder.

    The ``hybrid`` scheme's gallery (:class:`~fpmatch.galleries.HybridSchemeGallery`)
    for a party that also holds the transform key: it takes float templates,
    hashes and encrypts them itself (without the capture edge's rotation), and
    saves itself to one authenticated file. ``shortlist`` is the number of
    nearest codes re-scored under encryption.
    """

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
        context = context if isinstance(context, PublicContext) else PublicContext(context)
        check_shortlist(shortlist)
        profile = replace(
            profile_of(scheme),
            scheme="hybrid",
            he_key_id=context.key_id,
            he_context=context.to_bytes(),
            template_scale_bits=context.params.template_scale_bits,
            probe_scale_bits=context.params.probe_scale_bits_for(scheme.dim),
        )
        chosen = code_index(scheme.bits, index, hnsw_m, ef_construction, ef_search)
        super().__init__(profile, chosen, decider=None, caller="", candidates=shortlist, context=context)
        self.scheme = scheme
        self.context = context
        self.dim = scheme.dim
        self.probe_scale_bits = self.context.params.probe_scale_bits_for(self.dim)
        self.group = self.ciphertext_rows.group
        self._next_id = 0

    @property
    def shortlist(self) -> int:
        return self.candidates

    @property
    def key_id(self) -> str:
        return self.context.key_id

    @property
    def rows(self) -> int:
        """Ciphertexts in use."""
        return self.ciphertext_rows.count

    @property
    def bytes_per_template(self) -> int:
        """Ciphertext bytes per template in a full row, plus its hash code."""
        return self.ciphertext_rows.row_bytes // self.group + self.scheme.code_size

    def enrol(self, subjects: str | Sequence[str], templates: np.ndarray) -> None:
        """Hash, encrypt and store one template per subject. All or nothing."""
        rows = as_template_rows(templates, self.dim)
        values = quantise(unit_rows(rows, self.dim), self.context.params.template_scale_bits)
        names = as_subject_list(subjects, len(values))
        taken = [name for name in names if name in self]
        if taken:
            raise IdConflictError(f"already enrolled: {', '.join(taken[:5])}")
        pid = self.profile.profile_id
        codes = self.scheme.protect(rows)
        staged = self.stage_add(names, [EnrolmentRecord(pid, code, None, v) for code, v in zip(codes, values)])
        staged.apply(range(self._next_id, self._next_id + len(names)))
        self._next_id += len(names)

    def withdraw(self, subject: str) -> None:
        """Erase the subject: remove their code, zero the coefficients that encrypt their template."""
        self.stage_remove([subject]).apply([])

    # -- matching ---------------------------------------------------------------------

    def scores_for(self, subjects: Sequence[str], probe: np.ndarray) -> EncryptedScores:
        """Encrypted scores of ``probe`` against the named subjects, in that order."""
        slots = np.array([self._slot[self.id_of(name)] for name in subjects], dtype=np.int64)
        return self.ciphertext_rows.request(slots, self._probe_values(probe))

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
        code, reliability = self._probe_code(probe)
        ids = self._shortlist(code, reliability, self.shortlist, lambda name: True)
        return [self._names[id_] for id_ in ids]

    def shortlist_scores(self, probe: np.ndarray) -> tuple[list[str], EncryptedScores | None]:
        """The shortlisted subjects, nearest first, and their encrypted scores (None if none): the hash
        search, the slots and the re-scoring in one native call where the core's NTT agrees with SEAL's."""
        code, reliability = self._probe_code(probe)
        ids, request = self.rescored(code, reliability, self._probe_values(probe), self.shortlist)
        return [self._names[id_] for id_ in ids], request

    def identify(
        self, probe: np.ndarray, decider: ScoreDecider, threshold: float, k: int = 5, *, caller: str
    ) -> list[Match]:
        """1:N: up to ``k`` shortlisted subjects scoring at least ``threshold``, best first."""
        threshold = check_threshold(threshold)
        candidates, request = self.shortlist_scores(probe)
        if request is None:
            return []
        positions = decider.best(request.to_bytes(), threshold, min(k, len(candidates)), caller=caller)
        return [Match(candidates[p], rank) for rank, p in enumerate(positions, start=1)]

    def location(self, subject: str) -> tuple[int, int]:
        """(row, position): ciphertext ``row`` holds the subject at coefficients ``position * dim`` onwards."""
        row, position = divmod(self._slot[self.id_of(subject)], self.group)
        return row, position

    def ciphertexts(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every ciphertext the gallery keeps, as (c0 coefficients, c1 NTT values)."""
        yield from self.ciphertext_rows.ciphertexts()

    def _probe_code(self, probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = as_template_rows(probe, self.dim, "probe")
        if len(rows) != 1:
            raise InvalidInputError("one probe at a time")
        code, reliability = self.scheme.protect_with_reliability(rows)
        return code[0], reliability[0]

    def _probe_values(self, probe: np.ndarray) -> np.ndarray:
        unit = unit_rows(probe, self.dim, "probe")
        if len(unit) != 1:
            raise InvalidInputError("one probe at a time")
        return quantise(unit[0], self.probe_scale_bits)

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
                "format": 3,
                "dim": self.dim,
                "bits": self.scheme.bits,
                "offset": None if self.scheme.offset is None else np.asarray(self.scheme.offset).tolist(),
                "offset_removal": self.scheme.offset_removal,
                "key_id": key.key_id,
                "he_key_id": self.key_id,
                "n": self.context.ring.n,
                "shortlist": self.shortlist,
                "used": self.ciphertext_rows.used,
                "refreshes": self.ciphertext_rows.refreshes,
                "next_id": self._next_id,
                "subjects": {name: [id_, self._slot[id_]] for name, id_ in self._ids.items()},
            }
        ).encode()
        public = self.context.to_bytes()
        index = self.index.serialize(key.subkey("index-mac"))
        rows = [self.ciphertext_rows.to_bytes(r) for r in range(self.ciphertext_rows.count)]
        body = b"".join([_MAGIC, struct.pack("<QQQ", len(meta), len(public), len(index)), meta, public, index, *rows])
        tag = hmac.new(key.subkey("hybrid-gallery-mac"), body, "sha256").digest()
        _write_atomic(target, body + tag)

    @classmethod
    def load(cls, path: str | os.PathLike[str], key: HashKey, n_threads: int = 0) -> "HybridGallery":
        """Authenticate and load a gallery written by :meth:`save`."""
        source = Path(path)
        ensure_outside(key, source.parent)
        data = read_regular_file(source, "an fpmatch hybrid gallery")
        head = len(_MAGIC) + 24
        if len(data) < head + 32 or data[: len(_MAGIC)] not in (_MAGIC, _V2_MAGIC):
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
        size = gallery.ciphertext_rows.row_bytes if data.startswith(_MAGIC) else 16 * gallery.context.ring.n
        used, refreshes = meta["used"], meta["refreshes"]
        if len(body) != start + size * len(used) or len(refreshes) != len(used):
            raise AuthenticationError(f"{source}: ciphertext section has the wrong size")
        subjects = {str(name): int(id_) for name, (id_, _) in meta["subjects"].items()}
        slots = {int(id_): int(slot) for id_, slot in meta["subjects"].values()}
        if sorted(subjects.values()) != sorted(stored_index.ids().tolist()) or len(slots) != len(subjects):
            raise AuthenticationError(f"{source}: subject table and index disagree")
        rows = [(body[start + r * size : start + (r + 1) * size], int(used[r]), int(refreshes[r])) for r in range(len(used))]
        gallery.codes.hold(stored_index)
        gallery.restore(
            [StoredTemplate(name, id_, None, slots[id_]) for name, id_ in subjects.items()], rows, stored_index
        )
        gallery._next_id = int(meta["next_id"])
        return gallery
