"""Irreversibility (ISO/IEC 24745): attackers holding the store rebuild templates from its codes."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..hashing import CancellableHash
from ._shared import unit
from .metrics import MIN_ERRORS, far_label, min_trials, tar_at_far
from .scoring import nonmated_pairs, pair_cosines


def reconstruct_templates(codes: np.ndarray, scheme: CancellableHash, *, restore_offset: bool = False) -> np.ndarray:
    """Unit templates an attacker rebuilds from codes with ``scheme``'s projection (float64).

    The naive inversion is normalise(W (2c - 1)), W the projection with unit
    columns: it estimates the direction the scheme hashed, x' = x - a (x . u) u.
    With ``restore_offset`` the attacker also adds back what the scheme removed,
    using the offset u and share a the store keeps beside the codes: for a
    narrow-cone model x . u is close to 1, so x ~ a u + t r with r the naive
    reconstruction and t > 0 chosen so that |x| = 1. Without an offset both are the same.
    """
    weights = scheme.projection_matrix().astype(np.float64)
    weights /= np.linalg.norm(weights, axis=0, keepdims=True)
    signs = np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1, bitorder="little").astype(np.float64) * 2 - 1
    rebuilt = unit(signs[:, : scheme.bits] @ weights.T)
    if not restore_offset or scheme.offset is None:
        return rebuilt
    u = np.asarray(scheme.offset, dtype=np.float64)
    u /= np.linalg.norm(u)
    share = float(scheme.offset_removal)
    along = rebuilt @ u
    # |a u + t r|^2 = 1 with |u| = |r| = 1: t^2 + 2 a (r.u) t + a^2 - 1 = 0, positive root.
    t = -share * along + np.sqrt((share * along) ** 2 + 1.0 - share * share)
    return np.asarray(unit(share * u[None, :] + t[:, None] * rebuilt))


def evaluate_inversion(
    stored: np.ndarray,
    fresh: np.ndarray,
    scheme: CancellableHash,
    other: CancellableHash,
    *,
    far: float = 1e-3,
    impostor_pairs: int = 500_000,
    seed: int = 0,
    min_errors: int = MIN_ERRORS,
) -> dict[str, Any]:
    """Irreversibility (ISO/IEC 24745) of the hash scheme against attackers holding the store.

    ``stored[i]`` is enrolled (its code is what the attacker holds) and
    ``fresh[i]`` is another sample of the same person. Attackers: with the key
    (``scheme``'s projection) or without it (``other``, a different key), each
    naive and with the removed offset restored (:func:`reconstruct_templates`);
    and, where the scheme removes an offset, the stored offset direction alone
    used as everyone's template (no codes, no key). For each: cosine of the
    reconstructions to the originals, and the share a plain-cosine matcher
    accepts against the fresh sample at FMR ``far`` (threshold from impostor pairs
    of stored and fresh samples of different people).
    """
    n = len(stored)
    if n < 2 or stored.shape != fresh.shape or stored.shape[1] != scheme.dim:
        raise InvalidInputError("stored and fresh must hold one sample each of the same 2+ people")
    if other.key.key_id == scheme.key.key_id or other.bits != scheme.bits or other.dim != scheme.dim:
        raise InvalidInputError("the keyless attacker needs another key, with the same code length and dimension")
    stored_unit = unit(stored.astype(np.float64))
    fresh_unit = unit(fresh.astype(np.float64))
    rng = np.random.default_rng([seed, 0x1A7E])
    i, j = nonmated_pairs(n, impostor_pairs, rng)
    impostor = pair_cosines(stored_unit, i, fresh_unit, j)
    point = tar_at_far(np.zeros(1), impostor, far)
    threshold = float(point["threshold"])
    codes = scheme.protect(stored)
    label = far_label(far)

    def outcome(rebuilt: np.ndarray, description: str) -> dict[str, Any]:
        cosine = np.einsum("ij,ij->i", rebuilt, stored_unit)
        accepted = np.einsum("ij,ij->i", rebuilt, fresh_unit) > threshold
        return {
            "description": description,
            "cosine_to_original_mean": float(cosine.mean()),
            "cosine_to_original_min": float(cosine.min()),
            "cosine_to_original_p5": float(np.percentile(cosine, 5)),
            f"accepted_at_fmr_{label}": float(accepted.mean()),
        }

    attackers: dict[str, Any] = {
        "with_key": outcome(reconstruct_templates(codes, scheme), "store and hash key: normalise(W (2c - 1))"),
        "with_key_offset_restored": outcome(
            reconstruct_templates(codes, scheme, restore_offset=True),
            "store and hash key, adding back the offset share the scheme removed",
        ),
        "without_key": outcome(reconstruct_templates(codes, other), "store only: another key's projection"),
        "without_key_offset_restored": outcome(
            reconstruct_templates(codes, other, restore_offset=True),
            "store only: another key's projection, offset share added back",
        ),
    }
    if scheme.offset is not None:
        u = np.asarray(scheme.offset, dtype=np.float64)
        attackers["offset_only"] = outcome(
            np.tile(u / np.linalg.norm(u), (n, 1)),
            "no codes, no key: the stored offset direction (the model's mean face) as everyone's template",
        )
    return {
        "n": n,
        "dim": scheme.dim,
        "bits": scheme.bits,
        "offset_removed": scheme.offset is not None,
        "offset_removal": float(scheme.offset_removal) if scheme.offset is not None else 0.0,
        "far": far,
        f"plain_threshold_fmr_{label}": threshold,
        "plain_far_achieved": float(point["far_achieved"]),
        "impostor_pairs": int(len(impostor)),
        "threshold_supported": len(impostor) >= min_trials(far, min_errors),
        "accepted": "a reconstruction is accepted when its cosine with a fresh sample of the same person exceeds "
        "the plain threshold",
        **attackers,
    }


__all__ = [
    "evaluate_inversion",
    "reconstruct_templates",
]
