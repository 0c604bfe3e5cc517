"""The templates an evaluation runs on: drawn from a synthetic profile, or split from labelled embeddings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._validate import as_template_rows
from ..errors import InvalidInputError
from ..synthetic import PROFILES, FaceGenerator


OFFSET_SAMPLES = 2000


@dataclass(frozen=True, eq=False)
class EvaluationData:
    """Templates for one evaluation run.

    ``enrolment[i]`` and ``probes[i]`` are two samples of person i; ``strangers``
    are never enrolled (non-mated 1:N searches); ``offset_samples`` come from people
    never enrolled and serve only to estimate a model's shared offset direction.
    """

    name: str
    enrolment: np.ndarray
    probes: np.ndarray
    strangers: np.ndarray
    offset_samples: np.ndarray


def synthetic_data(profile: str, n: int, nonmated: int, seed: int = 0) -> EvaluationData:
    """Draw an evaluation set from a built-in synthetic profile."""
    if profile not in PROFILES:
        raise InvalidInputError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    faces = FaceGenerator(profile, seed)
    people = faces.identities(n)
    enrolment = faces.samples(people)
    probes = faces.samples(people)
    offset_samples = faces.samples(faces.identities(OFFSET_SAMPLES))
    strangers = faces.samples(faces.identities(nonmated))
    return EvaluationData(profile, enrolment, probes, strangers, offset_samples)


def load_labelled(
    embeddings: str | os.PathLike[str], labels: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (n, d) float32 and labels (n,) from an .npz holding arrays
    ``embeddings`` and ``labels``, or from an .npy of embeddings plus an .npy of labels.

    Nothing is cast: float64 embeddings raise :class:`~fpmatch.errors.DtypeError`.
    """
    path = Path(embeddings)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            if "embeddings" not in archive or "labels" not in archive:
                raise InvalidInputError(f"{path} must hold arrays named 'embeddings' and 'labels'")
            x, y = archive["embeddings"], archive["labels"]
    else:
        if labels is None:
            raise InvalidInputError("an .npy of embeddings needs a labels file (or use an .npz)")
        x, y = np.load(path, allow_pickle=False), np.load(labels, allow_pickle=False)
    if x.ndim != 2:
        raise InvalidInputError(f"embeddings must be a 2-D array (n, d), got shape {x.shape}")
    x = as_template_rows(x, x.shape[1], "embeddings")
    if not np.isfinite(x).all():
        raise InvalidInputError(f"{path} holds NaN or Inf")
    if y.ndim != 1 or len(y) != len(x):
        raise InvalidInputError(f"labels must be 1-D with one label per embedding, got shape {y.shape}")
    return np.ascontiguousarray(x), y


def split_labelled(
    embeddings: np.ndarray, labels: np.ndarray, *, name: str = "labelled", stranger_share: float = 0.3, seed: int = 0
) -> EvaluationData:
    """Split labelled embeddings into an evaluation set.

    People are shuffled; a share ``stranger_share`` of those with two or more samples,
    and everyone with one sample, are never enrolled: their first samples are the
    non-mated probes and all their samples estimate the offset. The rest give their
    first sample to enrolment and their second to the mated probes.
    """
    if not 0.0 < stranger_share < 1.0:
        raise InvalidInputError(f"stranger_share must lie in (0, 1), got {stranger_share}")
    rng = np.random.default_rng(seed)
    people, counts = np.unique(labels, return_counts=True)
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    paired = rng.permutation(np.flatnonzero(counts >= 2))
    enrolled = np.sort(paired[int(round(len(paired) * stranger_share)) :])
    if len(enrolled) < 2:
        raise InvalidInputError("need at least two people with two or more samples to enrol")
    others = np.setdiff1d(np.arange(len(people)), enrolled)
    if len(others) == 0:
        raise InvalidInputError("no people left to act as strangers; lower stranger_share or add people")

    def rows_of(group: np.ndarray, k: int) -> np.ndarray:  # the k-th sample of each person in group
        return order[starts[group] + k]

    stranger_rows = np.concatenate([order[starts[g] : starts[g] + counts[g]] for g in others])
    return EvaluationData(
        name,
        embeddings[rows_of(enrolled, 0)],
        embeddings[rows_of(enrolled, 1)],
        embeddings[rows_of(others, 0)],
        embeddings[stranger_rows],
    )


__all__ = [
    "OFFSET_SAMPLES",
    "EvaluationData",
    "load_labelled",
    "split_labelled",
    "synthetic_data",
]
