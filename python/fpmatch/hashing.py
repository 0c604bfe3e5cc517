"""The ``hash`` protection scheme: keyed cancellable binary codes.

``srp-v2`` maps a template x to ``bits`` bits, bit j = [w_j . x' > 0], where the
w_j are a secret projection derived from the key and x' = x - a (x . u) u removes
a share ``a`` (``offset_removal``) of an optional shared offset direction u.
The w_j are orthonormalised in groups of min(dim, 128) ("super-bit" hashing),
which lowers the variance of every estimate below; ``srp-v1`` (the w_j as
drawn) is kept so that existing galleries still load.

Two codes at Hamming distance h estimate the angle between their templates
(angle ~ pi * h / bits): ``cos(pi * h / bits)`` is the code-to-code score. A
fresh probe does better: :meth:`CancellableHash.protect_with_reliability` also
returns how far each projection w_j . x' lies from zero (normalised to sum to 1),
and the probe's weighted Hamming distance d to a stored code, where a mismatch
in bit j costs that bit's reliability, gives ``1 - 2 d``, an estimate of the
cosine with lower noise (asymmetric distance). Reliabilities are derived from
the probe, used within the request and never stored.

Why the offset: many face models (dlib's among them) put every template in a
narrow cone around one direction. Hyperplanes through the origin then barely
cut the cone and most bits say nothing. The direction is estimated once, from
sample embeddings that need not be enrolled. Removing all of it ranks templates
by their angle around the axis and loses the cosine information carried by how
far each sits from the axis; removing half keeps most of both. Measured with
benchmarks/bench_search.py on the dlib-like synthetic profile (100k gallery,
1,000 mated probes, 1024 bits, srp-v2, weighted ranking), as rank-1 agreement
with plain cosine / top-32 recall / TAR at FAR 1e-4 (plain 0.992): 50% removal
0.958 / 1.000 / 0.974, 70% 0.971 / 0.999 / 0.948. Centred data has no offset
(:func:`estimate_offset` returns None) and is unaffected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import _core
from ._validate import as_template_rows
from .errors import InvalidInputError
from .keys import HashKey

SCHEME = "srp-v2"
SCHEMES = ("srp-v1", "srp-v2")
DEFAULT_BITS = 1024
DEFAULT_OFFSET_REMOVAL = 0.5


def estimate_offset(samples: np.ndarray, min_norm: float = 0.3) -> np.ndarray | None:
    """The shared offset direction of a model's templates, or None if there is none.

    ``samples`` are L2-normalised float32 embeddings from the same model (they need
    not be enrolled). When the norm of their mean is below ``min_norm`` the model
    is already centred and no offset is used.
    """
    if not isinstance(samples, np.ndarray) or samples.ndim != 2:
        raise InvalidInputError("samples must be a 2-D array (n, dim) of embeddings")
    rows = as_template_rows(samples, samples.shape[1], "samples")
    if len(rows) < 2:
        raise InvalidInputError("need at least 2 samples to estimate an offset")
    if not np.isfinite(rows).all():
        raise InvalidInputError("samples contain NaN or Inf")
    norms = np.linalg.norm(rows.astype(np.float64), axis=1, keepdims=True)
    if (norms == 0).any():
        raise InvalidInputError("samples contain a zero vector")
    mean = (rows / norms).mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if norm < min_norm:
        return None
    return (mean / norm).astype(np.float32)


@dataclass(frozen=True)
class CancellableHash:
    """Keyed cancellable hashing of templates of one dimension into ``bits``-bit codes.

    Re-keying (a new :class:`HashKey`) gives unrelated codes: old codes stop matching.
    """

    key: HashKey = field(repr=False)
    dim: int
    bits: int = DEFAULT_BITS
    offset: np.ndarray | None = field(default=None, repr=False, compare=False)
    n_threads: int = 0
    offset_removal: float = DEFAULT_OFFSET_REMOVAL
    scheme: str = SCHEME
    _hasher: _core.ProjectionHasher = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        hasher = _core.ProjectionHasher(
            self.key.secret, self.dim, self.bits, self.offset, self.offset_removal, self.scheme
        )
        object.__setattr__(self, "_hasher", hasher)

    @property
    def code_size(self) -> int:
        """Bytes per code."""
        return self.bits // 8

    def protect(self, templates: np.ndarray) -> np.ndarray:
        """Codes (n, bits/8) uint8 for float32 templates (d,) or (n, d). Raw values are not kept."""
        return self._hasher.hash(as_template_rows(templates, self.dim), self.n_threads)

    def protect_with_reliability(self, templates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes and per-bit reliabilities (n, bits) float32, each row summing to 1.

        For probes: pass both to :meth:`fpmatch.FlatIndex.search_weighted` (or any
        index's) or :func:`fpmatch.codes.weighted_pairs`. Never store reliabilities:
        unlike codes they keep the projections' magnitudes.
        """
        return self._hasher.hash_with_reliability(as_template_rows(templates, self.dim), self.n_threads)

    @staticmethod
    def weighted_score(distances: np.ndarray | float) -> np.ndarray | float:
        """Weighted Hamming distance of a probe -> estimated cosine similarity, 1 - 2 d."""
        if isinstance(distances, (float, int, np.floating)):
            return 1.0 - 2.0 * float(distances)
        return 1.0 - 2.0 * np.asarray(distances, dtype=np.float64)

    def score(self, distances: np.ndarray | int) -> np.ndarray | float:
        """Hamming distance -> estimated cosine similarity, cos(pi * h / bits)."""
        if isinstance(distances, (int, np.integer)):
            return math.cos(math.pi * int(distances) / self.bits)
        return np.cos(np.pi * np.asarray(distances, dtype=np.float64) / self.bits)

    def distance_for_score(self, score: float) -> int:
        """The largest Hamming distance whose score is at least ``score`` (-1 if none)."""
        if not -1.0 <= score <= 1.0:
            raise InvalidInputError(f"a score threshold must lie in [-1, 1], got {score}")
        # acos may round either way; settle the boundary with the same score() users see.
        limit = min(self.bits, int(math.floor(self.bits * math.acos(score) / math.pi)) + 1)
        while limit >= 0 and self.score(limit) < score:
            limit -= 1
        return limit

    def projection_matrix(self) -> np.ndarray:
        """The secret (dim, bits) projection. For security evaluation only: it inverts codes."""
        return self._hasher.weights()
