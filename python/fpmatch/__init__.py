"""fpmatch: privacy-preserving face matching over protected templates.

A capture edge (:class:`CaptureEdge`) turns face embeddings into protected
messages: keyed cancellable codes, searched by Hamming distance in FAISS binary
indexes in the native core, and CKKS ciphertexts scored under encryption. The
matching service (:class:`MatchingService`) holds neither the transform key nor
the secret key; a key holder (:mod:`fpmatch.he`) returns decisions only.
"""

from . import errors
from ._core import scan_kernel
from .alternative import AlternativeVerifier, PinVerifier
from .attestation import EdgeKeys, EdgeSigningKey
from .audit import AuditEntry, AuditEvent, AuditHead, AuditReport
from .consent import ConsentRecord
from .edge import Calibration, CaptureEdge, EdgeProfile, EnrolmentRecord, ProbeMessage
from .errors import (
    AttestationError,
    AttestedModeError,
    AuditTamperedError,
    AuthenticationError,
    BundledConsentError,
    ConsentRequiredError,
    DtypeError,
    ErasureError,
    ErasureSettingsError,
    FpmatchError,
    IdConflictError,
    IndexFormatError,
    InvalidConsentError,
    InvalidInputError,
    KeyFileError,
    KeyMismatchError,
    MessageFormatError,
    NotCalibratedError,
    StoreClosedError,
    StoreFormatError,
    StoreIntegrityError,
    StoreLockedError,
    StoreUnavailableError,
    TooManyAttemptsError,
    UnknownSubjectError,
)
from .gallery import Candidate, Gallery, Match, VerifyResult
from .hashing import CancellableHash, estimate_offset
from .index import FlatIndex, HNSWIndex, IVFIndex, RangeResult, SearchResult, WeightedResult, load_index
from .keys import HashKey, ServiceKey
from .service import IntegrityReport, MatchingService, SubjectReport, VerificationOutcome

__version__ = "0.1.0"

__all__ = [
    "AlternativeVerifier",
    "AttestationError",
    "AttestedModeError",
    "AuditEntry",
    "AuditEvent",
    "AuditHead",
    "AuditReport",
    "AuditTamperedError",
    "AuthenticationError",
    "BundledConsentError",
    "Calibration",
    "CancellableHash",
    "CaptureEdge",
    "Candidate",
    "ConsentRecord",
    "ConsentRequiredError",
    "DtypeError",
    "EdgeKeys",
    "EdgeSigningKey",
    "EdgeProfile",
    "EnrolmentRecord",
    "ErasureError",
    "ErasureSettingsError",
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
    "Match",
    "MatchingService",
    "MessageFormatError",
    "NotCalibratedError",
    "PinVerifier",
    "ProbeMessage",
    "RangeResult",
    "SearchResult",
    "ServiceKey",
    "WeightedResult",
    "StoreClosedError",
    "StoreFormatError",
    "StoreIntegrityError",
    "StoreLockedError",
    "StoreUnavailableError",
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
