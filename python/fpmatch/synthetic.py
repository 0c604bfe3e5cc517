"""Seeded synthetic face-recognition embeddings with identity structure.

Real face templates cannot be shipped with a test suite or a benchmark, so
this module draws L2-normalised embeddings whose genuine (same identity) and
impostor (different identities) cosine-score distributions resemble those of
real face models. Every sample is built from three mutually orthogonal parts,
weighted by their share of the squared norm::

    sample = normalise(sqrt(w_off) * u + sqrt(w_id) * v + sqrt(w_noise) * n)

``u`` is a unit "offset" direction shared by every template (drawn from the
seed), ``v`` is the latent vector of the identity (orthogonal to ``u``), and
``n`` is a fresh random unit vector orthogonal to the other two parts.
``w_noise`` is drawn per sample from :attr:`FaceProfile.noise_share`, and
``w_id = 1 - w_off - w_noise``.

Built-in profiles (:data:`PROFILES`):

``"centred"``
    512-D templates centred on the origin, like a modern ArcFace-type model:
    identity directions are uniform on the sphere, so impostor scores are
    centred on 0 with the spread of random 512-D unit vectors, and two
    samples of one identity score about 0.64.

``"offset"``
    128-D templates in a narrow cone around one shared direction, like dlib's
    ResNet face model: every pair of faces scores high (impostors about 0.83),
    genuine pairs score about 0.95. Identity variation lives in a few
    effective dimensions (covariance eigenvalues decaying as ``k ** -0.93``),
    which is what gives impostor scores their comparatively wide spread.

``"hard"``
    ``"centred"`` with noise taking 68 to 88% of each sample's squared norm
    (a weak model, or poor captures): genuine scores (about 0.22) overlap
    the impostor tail, so plain cosine accepts about 83% of genuine pairs at
    a false accept rate of 1e-4. A profile on which an accuracy loss of a
    protected scheme would show.

Measured with ``make_faces(20_000, 2, seed=0)`` and
``pair_scores(..., n_pairs=200_000, seed=0)`` (other seeds agree to within
0.001 in mean and std):

=========  ============  ===========  =============  ============
profile    genuine mean  genuine std  impostor mean  impostor std
=========  ============  ===========  =============  ============
centred    0.638         0.047        0.000          0.044
offset     0.949         0.015        0.831          0.035
hard       0.216         0.053        0.000          0.044
=========  ============  ===========  =============  ============

The 0.1st to 99.9th percentiles of genuine scores are 0.51 to 0.76 for
``"centred"``, 0.91 to 0.98 for ``"offset"`` and 0.06 to 0.37 for
``"hard"``; impostor scores of ``"offset"`` span 0.66 to 0.90. The mean
``"offset"`` template has norm 0.91 (it is 0.006 for ``"centred"`` and
``"hard"``).

Everything is drawn with :func:`numpy.random.default_rng` (PCG64): the same
seed gives identical arrays (on one platform and numpy version; BLAS and SIMD
rounding may differ in the last bits elsewhere), different seeds give
different ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidInputError

__all__ = [
    "FaceProfile",
    "PROFILES",
    "Faces",
    "FaceGenerator",
    "make_faces",
    "pair_scores",
]

#: Rows generated (or scored) per step. It bounds temporary memory and is
#: part of the random-stream layout: changing it changes the arrays drawn.
CHUNK_ROWS = 8192


@dataclass(frozen=True)
class FaceProfile:
    """Distribution of synthetic face embeddings.

    Attributes:
        name: Label of the profile, for reports.
        dim: Embedding dimension.
        offset_weight: Share of every sample's squared norm along the shared
            offset direction ``u``; 0 gives templates centred on the origin.
            It sets the impostor mean score (roughly equal to it).
        noise_share: ``(low, high)`` range of the per-sample share of squared
            norm given to fresh noise, drawn uniformly per sample. Its mean
            sets how far genuine scores fall below 1; its width sets their
            spread. ``offset_weight + high`` must be below 1.
        identity_rank: Number of latent dimensions identity vectors span;
            ``None`` means all of them (``dim``, or ``dim - 1`` when
            ``offset_weight > 0``).
        identity_decay: Identity covariance eigenvalues decay as
            ``k ** -identity_decay`` (k = 1, 2, ...) on a random orthonormal
            basis; 0 is isotropic. A larger decay means fewer effective
            dimensions and a wider impostor spread.
        unit_identity: If true, each identity vector is scaled to unit length
            (for an isotropic spectrum: uniform on the sphere); if false, the
            vectors are Gaussian with unit mean squared norm, so their length
            varies between identities.
    """

    name: str
    dim: int
    offset_weight: float = 0.0
    noise_share: tuple[float, float] = (0.25, 0.47)
    identity_rank: int | None = None
    identity_decay: float = 0.0
    unit_identity: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, (int, np.integer)) or self.dim < 2:
            raise InvalidInputError(f"FaceProfile.dim must be an integer >= 2, got {self.dim!r}")
        if not 0.0 <= self.offset_weight < 1.0:
            raise InvalidInputError(
                f"FaceProfile.offset_weight must be in [0, 1), got {self.offset_weight!r}"
            )
        if len(self.noise_share) != 2:
            raise InvalidInputError("FaceProfile.noise_share must be a (low, high) pair")
        low, high = (float(x) for x in self.noise_share)
        if not 0.0 <= low <= high:
            raise InvalidInputError(
                f"FaceProfile.noise_share must satisfy 0 <= low <= high, got {self.noise_share!r}"
            )
        if self.offset_weight + high >= 1.0:
            raise InvalidInputError(
                "FaceProfile.offset_weight + noise_share[1] must be below 1 "
                f"(got {self.offset_weight!r} + {high!r})"
            )
        object.__setattr__(self, "noise_share", (low, high))
        full = self.max_identity_rank
        if self.identity_rank is not None and not 1 <= self.identity_rank <= full:
            raise InvalidInputError(
                f"FaceProfile.identity_rank must be in [1, {full}] for dim={self.dim} "
                f"and offset_weight={self.offset_weight}, got {self.identity_rank!r}"
            )
        if not self.identity_decay >= 0.0:
            raise InvalidInputError(
                f"FaceProfile.identity_decay must be >= 0, got {self.identity_decay!r}"
            )

    @property
    def max_identity_rank(self) -> int:
        """Largest possible identity rank (dimensions orthogonal to the offset)."""
        return self.dim - 1 if self.offset_weight > 0.0 else self.dim

    @property
    def effective_identity_rank(self) -> int:
        """Number of latent identity dimensions actually used."""
        return self.max_identity_rank if self.identity_rank is None else int(self.identity_rank)


#: Built-in profiles; see the module docstring for what each reproduces.
PROFILES: dict[str, FaceProfile] = {
    "centred": FaceProfile(
        name="centred",
        dim=512,
        offset_weight=0.0,
        noise_share=(0.25, 0.47),
        identity_decay=0.0,
        unit_identity=True,
    ),
    "offset": FaceProfile(
        name="offset",
        dim=128,
        offset_weight=0.83,
        noise_share=(0.015, 0.085),
        identity_decay=0.93,
        unit_identity=False,
    ),
    "hard": FaceProfile(
        name="hard",
        dim=512,
        offset_weight=0.0,
        noise_share=(0.68, 0.88),
        identity_decay=0.0,
        unit_identity=True,
    ),
}


def _resolve_profile(profile: str | FaceProfile) -> FaceProfile:
    if isinstance(profile, FaceProfile):
        return profile
    if isinstance(profile, str):
        try:
            return PROFILES[profile]
        except KeyError:
            known = ", ".join(repr(k) for k in sorted(PROFILES))
            raise InvalidInputError(
                f"unknown face profile {profile!r}; known profiles: {known}"
            ) from None
    raise TypeError(f"profile must be a profile name or a FaceProfile, got {type(profile).__name__}")


def _check_count(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    if seed < 0:
        raise InvalidInputError(f"seed must be >= 0, got {seed}")
    return int(seed)


def _normalise_rows(x: np.ndarray) -> None:
    """Scale the rows of a float32 matrix to unit L2 norm, in place."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    x /= norms[:, None]


@dataclass(frozen=True, eq=False)
class Faces:
    """A synthetic gallery.

    Attributes:
        embeddings: ``(n_identities * samples_per_identity, dim)`` float32,
            C-contiguous, unit-norm rows, identity-major.
        labels: int64 identity index of each row.
        profile: The distribution the rows were drawn from.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    profile: FaceProfile = field(repr=False)


class FaceGenerator:
    """Draws identities, then any number of independent samples of them.

    Three independent random streams are derived from ``seed``: one for the
    fixed structure (offset direction, identity basis), one for
    :meth:`identities` and one for :meth:`samples`. Results depend only on
    the seed and on the sequence of calls made to each method, so a gallery
    sample and later probe samples of the same identities can be drawn from
    one generator.
    """

    def __init__(self, profile: str | FaceProfile = "centred", seed: int = 0) -> None:
        self.profile: FaceProfile = _resolve_profile(profile)
        self.seed: int = _check_seed(seed)
        structure, ids, samples = np.random.SeedSequence(self.seed).spawn(3)
        self._id_rng = np.random.default_rng(ids)
        self._sample_rng = np.random.default_rng(samples)
        p = self.profile
        rng = np.random.default_rng(structure)
        offset = rng.standard_normal(p.dim)
        offset /= np.linalg.norm(offset)
        self._offset: np.ndarray | None = offset.astype(np.float32) if p.offset_weight > 0 else None
        rank = p.effective_identity_rank
        self._isotropic = p.identity_decay == 0.0 and rank == p.max_identity_rank
        self._basis: np.ndarray | None = None
        self._scales: np.ndarray | None = None
        if not self._isotropic:
            g = rng.standard_normal((p.dim, rank))
            if p.offset_weight > 0:
                g -= np.outer(offset, offset @ g)
            basis, _ = np.linalg.qr(g)
            if p.offset_weight > 0:
                basis -= np.outer(offset, offset @ basis)
            eig = np.arange(1, rank + 1, dtype=np.float64) ** -p.identity_decay
            eig /= eig.sum()
            self._basis = np.ascontiguousarray(basis.T, dtype=np.float32)  # (rank, dim)
            self._scales = np.sqrt(eig).astype(np.float32)

    @property
    def offset_direction(self) -> np.ndarray | None:
        """The shared unit offset direction ``u``, or None for a centred profile."""
        return None if self._offset is None else self._offset.copy()

    def identities(self, n: int) -> np.ndarray:
        """Draw ``n`` new identities: their latent vectors, ``(n, dim)`` float32."""
        n = _check_count("n", n)
        p = self.profile
        out = np.empty((n, p.dim), dtype=np.float32)
        width = p.dim if self._isotropic else self.profile.effective_identity_rank
        buf = np.empty((min(n, CHUNK_ROWS), width), dtype=np.float32)
        for start in range(0, n, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, n)
            g = buf[: stop - start]
            self._id_rng.standard_normal(dtype=np.float32, out=g)
            v = out[start:stop]
            if self._isotropic:
                v[...] = g
                if self._offset is not None:
                    v -= np.outer(v @ self._offset, self._offset)
                if not p.unit_identity:
                    v *= np.float32(1.0 / np.sqrt(p.max_identity_rank))
            else:
                assert self._basis is not None and self._scales is not None
                g *= self._scales
                np.matmul(g, self._basis, out=v)
            if p.unit_identity:
                _normalise_rows(v)
        return out

    def samples(self, identity_params: np.ndarray, per_identity: int = 1) -> np.ndarray:
        """Draw ``per_identity`` fresh samples of each identity.

        Args:
            identity_params: Latent vectors returned by :meth:`identities`.
            per_identity: Samples per identity.

        Returns:
            ``(len(identity_params) * per_identity, dim)`` float32, C-contiguous,
            unit-norm rows, identity-major.
        """
        per_identity = _check_count("per_identity", per_identity)
        p = self.profile
        ids = np.asarray(identity_params)
        if ids.ndim != 2 or ids.shape[1] != p.dim or ids.shape[0] < 1:
            raise InvalidInputError(
                f"identity_params must have shape (n >= 1, {p.dim}), got {ids.shape}"
            )
        if ids.dtype != np.float32:
            ids = ids.astype(np.float32)
        if not np.isfinite(ids).all():
            raise InvalidInputError("identity_params contains NaN or Inf")
        out = np.empty((ids.shape[0] * per_identity, p.dim), dtype=np.float32)
        self._fill_samples(ids, per_identity, out)
        return out

    def _fill_samples(self, ids: np.ndarray, per_identity: int, out: np.ndarray) -> None:
        """Write the samples of float32 identity vectors ``ids`` into ``out``."""
        p = self.profile
        n_rows = out.shape[0]
        noise = np.empty((min(n_rows, CHUNK_ROWS), p.dim), dtype=np.float32)
        low, high = p.noise_share
        offset = None
        if self._offset is not None:
            offset = np.float32(np.sqrt(p.offset_weight)) * self._offset
        rng = self._sample_rng
        for start in range(0, n_rows, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, n_rows)
            rows = stop - start
            noise_w = rng.uniform(low, high, rows)
            id_w = np.sqrt(1.0 - p.offset_weight - noise_w).astype(np.float32)
            x = out[start:stop]
            np.take(ids, np.arange(start, stop) // per_identity, axis=0, out=x, mode="clip")
            x *= id_w[:, None]
            if offset is not None:
                x += offset
            n = noise[:rows]
            rng.standard_normal(dtype=np.float32, out=n)
            # Keep the noise orthogonal to the signal so that the shares are exact.
            coef = np.einsum("ij,ij->i", n, x) / np.einsum("ij,ij->i", x, x)
            n -= coef[:, None] * x
            _normalise_rows(n)
            n *= np.sqrt(noise_w).astype(np.float32)[:, None]
            x += n
            _normalise_rows(x)


#: Rows make_faces draws per batch of identities.
_IDENTITY_BATCH = 65536


def make_faces(
    n_identities: int,
    samples_per_identity: int = 2,
    *,
    profile: str | FaceProfile = "centred",
    seed: int = 0,
) -> Faces:
    """Draw ``n_identities`` identities and ``samples_per_identity`` samples of each.

    Rows are identity-major: rows ``i * samples_per_identity`` to
    ``(i + 1) * samples_per_identity - 1`` belong to identity ``i``.
    """
    n_identities = _check_count("n_identities", n_identities)
    samples_per_identity = _check_count("samples_per_identity", samples_per_identity)
    gen = FaceGenerator(profile, seed)
    dim = gen.profile.dim
    out = np.empty((n_identities * samples_per_identity, dim), dtype=np.float32)
    step = max(1, _IDENTITY_BATCH // samples_per_identity)
    for start in range(0, n_identities, step):
        stop = min(start + step, n_identities)
        gen._fill_samples(
            gen.identities(stop - start),
            samples_per_identity,
            out[start * samples_per_identity : stop * samples_per_identity],
        )
    labels = np.repeat(np.arange(n_identities, dtype=np.int64), samples_per_identity)
    return Faces(embeddings=out, labels=labels, profile=gen.profile)


def pair_scores(
    embeddings: np.ndarray, labels: np.ndarray, n_pairs: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of random genuine and impostor pairs.

    Genuine pairs are two different rows with the same label (a uniformly
    drawn row, then another row of its identity); impostor pairs are two
    uniformly drawn rows with different labels.

    Returns:
        ``(genuine, impostor)``, each ``n_pairs`` float64 scores.
    """
    n_pairs = _check_count("n_pairs", n_pairs)
    seed = _check_seed(seed)
    emb = np.asarray(embeddings)
    lab = np.asarray(labels)
    if emb.ndim != 2 or emb.shape[0] < 2:
        raise InvalidInputError(f"embeddings must be a 2-D array of >= 2 rows, got shape {emb.shape}")
    if lab.shape != (emb.shape[0],):
        raise InvalidInputError(
            f"labels must have shape ({emb.shape[0]},), got {lab.shape}"
        )
    rng = np.random.default_rng(seed)

    # Genuine: group rows by label, keep groups of >= 2 rows.
    order = np.argsort(lab, kind="stable")
    uniq, starts, counts = np.unique(lab[order], return_index=True, return_counts=True)
    if uniq.size < 2:
        raise InvalidInputError("impostor pairs need at least two distinct labels")
    group_of_pos = np.repeat(np.arange(uniq.size), counts)
    eligible = np.flatnonzero(counts[group_of_pos] >= 2)  # positions in `order`
    if eligible.size == 0:
        raise InvalidInputError("genuine pairs need at least one label with two or more rows")
    pos_a = eligible[rng.integers(0, eligible.size, n_pairs)]
    grp = group_of_pos[pos_a]
    within_a = pos_a - starts[grp]
    within_b = (rng.integers(0, counts[grp] - 1)).astype(np.int64)
    within_b += within_b >= within_a
    gen_a = order[pos_a]
    gen_b = order[starts[grp] + within_b]

    # Impostor: uniform row pairs, redrawn until the labels differ.
    imp_a = rng.integers(0, emb.shape[0], n_pairs)
    imp_b = rng.integers(0, emb.shape[0], n_pairs)
    same = np.flatnonzero(lab[imp_a] == lab[imp_b])
    while same.size:
        imp_b[same] = rng.integers(0, emb.shape[0], same.size)
        same = same[lab[imp_a[same]] == lab[imp_b[same]]]

    return _cosines(emb, gen_a, gen_b), _cosines(emb, imp_a, imp_b)


def _cosines(emb: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(a.size, dtype=np.float64)
    rows = min(a.size, CHUNK_ROWS)
    x = np.empty((rows, emb.shape[1]), dtype=emb.dtype)
    y = np.empty_like(x)
    for start in range(0, a.size, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, a.size)
        xa = np.take(emb, a[start:stop], axis=0, out=x[: stop - start], mode="clip")
        yb = np.take(emb, b[start:stop], axis=0, out=y[: stop - start], mode="clip")
        dots = np.einsum("ij,ij->i", xa, yb, dtype=np.float64)
        xx = np.einsum("ij,ij->i", xa, xa, dtype=np.float64)
        yy = np.einsum("ij,ij->i", yb, yb, dtype=np.float64)
        out[start:stop] = dots / np.sqrt(xx * yy)
    return out
