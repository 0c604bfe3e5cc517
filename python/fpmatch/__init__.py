"""fpmatch: privacy-preserving face matching over protected templates.

Templates (face embeddings) are turned into keyed, cancellable binary codes;
only codes are stored and searched (Hamming distance, FAISS binary indexes in
the native core).
"""

from . import errors
from ._core import scan_kernel
from .errors import (
    AuthenticationError,
    DtypeError,
    FpmatchError,
    IdConflictError,
    IndexFormatError,
    InvalidInputError,
    KeyFileError,
    KeyMismatchError,
    NotCalibratedError,
    UnknownSubjectError,
)
from .gallery import Candidate, Gallery, VerifyResult
from .hashing import CancellableHash, estimate_offset
from .index import FlatIndex, HNSWIndex, RangeResult, SearchResult, load_index
from .keys import HashKey

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "CancellableHash",
    "Candidate",
    "DtypeError",
    "FlatIndex",
    "FpmatchError",
    "Gallery",
    "HNSWIndex",
    "HashKey",
    "IdConflictError",
    "IndexFormatError",
    "InvalidInputError",
    "KeyFileError",
    "KeyMismatchError",
    "NotCalibratedError",
    "RangeResult",
    "SearchResult",
    "UnknownSubjectError",
    "VerifyResult",
    "errors",
    "estimate_offset",
    "load_index",
    "scan_kernel",
]
