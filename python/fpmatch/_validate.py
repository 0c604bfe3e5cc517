"""Checks shared by the public API before arrays reach the native core."""

from __future__ import annotations

import os
import stat
from typing import Sequence

import numpy as np

from .errors import DtypeError, InvalidInputError


def require_array(value: object, what: str) -> np.ndarray:
    """``value`` itself if it is a numpy array; otherwise a DtypeError naming the fix."""
    if not isinstance(value, np.ndarray):
        raise DtypeError(f"{what} must be a numpy array, got {type(value).__name__}; use np.asarray(...)")
    return value


def as_template_rows(templates: object, dim: int, what: str = "templates") -> np.ndarray:
    """A 2-D float32 view of one template (1-D) or a batch (2-D); never a copy or a cast."""
    templates = require_array(templates, what)
    if templates.dtype != np.float32:
        raise DtypeError(
            f"{what} must have dtype float32, got {templates.dtype}; "
            "convert explicitly with np.asarray(x, dtype=np.float32)"
        )
    rows = templates[None, :] if templates.ndim == 1 else templates
    if rows.ndim != 2 or rows.shape[1] != dim:
        raise InvalidInputError(f"{what} must have shape ({dim},) or (n, {dim}), got {templates.shape}")
    return rows


def as_subject_list(subjects: str | Sequence[str], n: int) -> list[str]:
    """Subject names as a list of n distinct non-empty strings."""
    names = [subjects] if isinstance(subjects, str) else list(subjects)
    if len(names) != n:
        raise InvalidInputError(f"got {len(names)} subject name(s) for {n} template(s)")
    for name in names:
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"subject names must be non-empty strings, got {name!r}")
    if len(set(names)) != len(names):
        raise InvalidInputError("subject names in one call must be distinct")
    return names


def unit_rows(templates: object, dim: int, what: str = "templates") -> np.ndarray:
    """float32 templates (d,) or (n, d), checked and L2-normalised in float64."""
    rows = as_template_rows(templates, dim, what).astype(np.float64)
    if not np.isfinite(rows).all():
        raise InvalidInputError(f"{what} contain NaN or Inf")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InvalidInputError(f"{what} contain a zero vector")
    rows /= norms  # rows is this function's own float64 copy
    return rows


def read_regular_file(path: "os.PathLike[str] | str", what: str) -> bytes:
    """The bytes of a regular file: a device, a pipe or a directory is refused before any read
    (``/dev/zero`` or a FIFO would otherwise be read without end)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO must not wait for a writer
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidInputError(f"{path} is not a regular file: not {what}")
    with os.fdopen(fd, "rb") as f:
        return f.read()
