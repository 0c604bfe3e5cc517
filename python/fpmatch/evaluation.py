"""Deprecated: the evaluation lives in :mod:`fpmatch.eval`, one module per concern.

This module re-exports the public names it used to define, so existing imports keep working.
"""

from __future__ import annotations

import warnings

from .codes import hamming_pairs
from .eval import *  # noqa: F403
from .eval import __all__ as _moved

warnings.warn(
    "fpmatch.evaluation is deprecated: import from fpmatch.eval instead", DeprecationWarning, stacklevel=2
)

__all__ = [*_moved, "hamming_pairs"]
