"""fpmatch: privacy-preserving face matching over protected templates.

Templates (face embeddings) are turned into keyed, cancellable binary codes;
only codes are stored and searched (Hamming distance, FAISS binary indexes in
the native core).
"""

from . import errors
from ._core import scan_kernel
from .alternative import AlternativeVerifier, PinVerifier
from .audit import AuditEntry, AuditEvent, AuditHead, AuditReport
from .consent import ConsentRecord
from .errors import (
    AuditTamperedError,
    AuthenticationError,
    BundledConsentError,
    ConsentRequiredError,
    DtypeError,
    ErasureError,
    FpmatchError,
    IdConflictError,
    IndexFormatError,
    InvalidConsentError,
    InvalidInputError,
    KeyFileError,
    KeyMismatchError,
    NotCalibratedError,
    StoreClosedError,
    StoreFormatError,
    StoreLockedError,
    TooManyAttemptsError,
    UnknownSubjectError,
)
from .gallery import Candidate, Gallery, VerifyResult
from .hashing import CancellableHash, estimate_offset
from .index import FlatIndex, HNSWIndex, IVFIndex, RangeResult, SearchResult, WeightedResult, load_index
from .keys import HashKey
from .service import IntegrityReport, MatchingService, SubjectReport, VerificationOutcome

__version__ = "0.1.0"

__all__ = [
    "AlternativeVerifier",
    "AuditEntry",
    "AuditEvent",
    "AuditHead",
    "AuditReport",
    "AuditTamperedError",
    "AuthenticationError",
    "BundledConsentError",
    "CancellableHash",
    "Candidate",
    "ConsentRecord",
    "ConsentRequiredError",
    "DtypeError",
    "ErasureError",
    "FlatIndex",
    "FpmatchError",
    "Gallery",
    "HNSWIndex",
    "IVFIndex",
    "HashKey",
    "IdConflictError",
    "IndexFormatError",
    "IntegrityReport",
    "InvalidConsentError",
    "InvalidInputError",
    "KeyFileError",
    "KeyMismatchError",
    "MatchingService",
    "NotCalibratedError",
    "PinVerifier",
    "RangeResult",
    "SearchResult",
    "WeightedResult",
    "StoreClosedError",
    "StoreFormatError",
    "StoreLockedError",
    "SubjectReport",
    "TooManyAttemptsError",
    "UnknownSubjectError",
    "VerificationOutcome",
    "VerifyResult",
    "errors",
    "estimate_offset",
    "load_index",
    "scan_kernel",
]
