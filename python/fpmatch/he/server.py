"""The key holder as a network service: gRPC over mutual TLS, limits and audit in its ledger.

Every caller presents a client certificate signed by the deployment's CA; the
TLS handshake refuses anyone else, and the service listens on no plain-text
port. The caller's name (for limits and audit) is the certificate's common
name; a request that names another caller is refused, and so is every request
from a caller on the deny list (by common name, or one certificate by its
SHA-256 fingerprint: revoked before it expires).

One method, ``/fpmatch.keyholder.v1.KeyHolder/Call``, carries the byte messages
of :mod:`fpmatch.he.remote` (a JSON header naming the operation, then
encrypted scores or a reclaim request). Each request is admitted, answered and
audited in one ledger transaction (:mod:`fpmatch.he.ledger`). Release policy:
decisions (``decide``, ``best``) and reclaim ciphertexts only; ``coarse_scores``
releases values and is refused unless the service was started with it allowed.
In attested mode (``--edge-keys``) it decides only on ``decide_attested`` and
``best_attested`` requests, whose probe nonces it keeps in the ledger.
Bad input gives a typed error in the reply; nothing a caller sends ends the
service.
"""

from __future__ import annotations

import logging
import signal
import struct
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import FpmatchError
from .certs import certificate_fingerprint
from .client import CHANNEL_OPTIONS
from .errors import CiphertextFormatError, DecryptionRefusedError
from .attested import subject_label, template_count
from .keyholder import KeyHolder, RateLimit
from .ledger import Budgets, Ledger
from .remote import dispatch, error_reply, parse, reply

log = logging.getLogger("fpmatch.keyholder")

_SCORES_COUNT = struct.Struct("<8s8sHIQII")  # the header of EncryptedScores; its last field counts scores
_RECLAIM_ROWS = struct.Struct("<8s8sIQI")  # the header of a reclaim request; its last field counts rows
#: The longest subject label a request may carry (the service's pseudonyms are shorter).
MAX_SUBJECT_LABEL = 128


def lifted_rate(limits: RateLimit = RateLimit()) -> RateLimit:
    """``limits`` without the in-memory rate: the service's ledger keeps rates instead, across restarts."""
    return RateLimit(
        requests_per_second=1e9, burst=10**9, max_decisions=limits.max_decisions, max_scores=limits.max_scores,
        max_k=limits.max_k, max_coarse=limits.max_coarse, max_reclaim=limits.max_reclaim,
        max_attested=limits.max_attested,
    )  # fmt: skip


@dataclass(frozen=True)
class ServerCredentials:
    """PEM bytes: the service's certificate and key, and the CA whose client certificates it accepts."""

    cert: bytes
    key: bytes
    ca: bytes

    @classmethod
    def from_files(cls, cert: str | Path, key: str | Path, ca: str | Path) -> "ServerCredentials":
        return cls(Path(cert).read_bytes(), Path(key).read_bytes(), Path(ca).read_bytes())

    def __repr__(self) -> str:
        return "ServerCredentials(...)"


def _scores_in(op: str, payload: bytes) -> int:
    """How many scores (or ciphertexts) a request asks about, from its header; 0 if it has none."""
    if op in ("decide_attested", "best_attested"):
        return template_count(payload)
    if op in ("decide", "best", "coarse_scores") and len(payload) >= _SCORES_COUNT.size:
        return int(_SCORES_COUNT.unpack_from(payload)[-1])
    if op == "reclaim" and len(payload) >= _RECLAIM_ROWS.size:
        return int(_RECLAIM_ROWS.unpack_from(payload)[-1])
    return 0


def _released(op: str, result: Any, count: int) -> dict[str, int]:
    if op in ("decide", "decide_attested"):
        passed = sum(bool(v) for v in result)
        return {"passed": passed, "failed": len(result) - passed}
    if op in ("best", "best_attested"):
        return {"positions": len(result)}
    if op == "coarse_scores":
        return {"values": len(result)}
    return {"ciphertexts": count}


class KeyHolderService:
    """Answers authenticated requests: the part of the server that does not touch the network."""

    def __init__(
        self,
        holder: KeyHolder,
        ledger: Ledger,
        *,
        release_coarse: bool = False,
        denied: Iterable[str] = (),
        denied_certificates: Iterable[str] = (),
    ) -> None:
        self.holder = holder
        self.ledger = ledger
        if holder.attested_mode:  # nonces of signed probes and per-subject shortlist counts outlive a restart
            holder.nonces = ledger
            holder.shortlists = ledger
        self.release_coarse = release_coarse
        #: Common names refused although their certificates verify (revoked before they expire).
        self.denied = frozenset(denied)
        #: SHA-256 fingerprints (hex) of single certificates refused although they verify.
        self.denied_certificates = frozenset(f.lower() for f in denied_certificates)

    def handle(self, caller: str, message: bytes, fingerprint: str | None = None) -> bytes:
        """One request from ``caller`` (authenticated by the transport) in, one reply out.

        ``fingerprint`` is the SHA-256 of the caller's certificate, for ``denied_certificates``.
        Every request but the public ones is counted and audited, refusals included.
        """
        try:
            try:
                op, header, payload = parse(message)
                problem: Exception | None = None
            except CiphertextFormatError as exc:
                op, header, payload, problem = "malformed", {}, b"", exc
            if caller in self.denied or (fingerprint is not None and fingerprint in self.denied_certificates):
                # refused and audited: a revoked caller still asking is worth seeing
                problem = DecryptionRefusedError(f"the certificate of caller {caller!r} is revoked at this key holder")
            if problem is None and op == "public_context":
                return reply(None, self.holder.public_context())
            if problem is None and op == "usage":
                return reply(self.ledger.usage(caller))
            if problem is None and op == "mode":
                return reply({"attested": self.holder.attested_mode})
            subject = header.get("subject")
            if subject is not None and (not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT_LABEL):
                problem = problem or CiphertextFormatError(
                    f"a subject label is a string of 1 to {MAX_SUBJECT_LABEL} characters"
                )
                subject = None
            if problem is None and op == "decide_attested":
                # Count the subject the edge signed the template for, not a label the caller chose.
                subject = subject_label(payload) or subject
            claimed = header.get("caller")
            if problem is None and claimed not in (None, "", caller):
                problem = DecryptionRefusedError(
                    f"this connection's certificate names the caller {caller!r}; a request cannot claim another"
                )
            if problem is None and op == "coarse_scores" and not self.release_coarse:
                problem = DecryptionRefusedError(
                    "this key holder releases decisions only; coarse scores are off unless it is started with them allowed"
                )
            count = _scores_in(op, payload)
            with self.ledger.request(caller, op[:32], len(message), count, subject) as released:
                if problem is not None:
                    raise problem
                result, body = dispatch(self.holder, op, header, payload, caller)
                released.update(_released(op, result, count))
            return reply(result, body)
        except (FpmatchError, ValueError, KeyError, TypeError) as exc:
            log.info("refused %s: %s: %s", caller, type(exc).__name__, exc)
            return error_reply(exc)
        except Exception as exc:  # a bug must not end the service; the caller gets a typed refusal
            log.exception("request from %s failed", caller)
            return error_reply(FpmatchError(f"the key holder could not answer: {type(exc).__name__}"))


class KeyHolderServer:
    """The gRPC server around a :class:`KeyHolderService`; listens with mutual TLS only."""

    def __init__(self, service: KeyHolderService, credentials: ServerCredentials, listen: str, *, workers: int = 8) -> None:
        import grpc

        self._grpc = grpc
        self.service = service
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=CHANNEL_OPTIONS)
        handler = grpc.method_handlers_generic_handler(
            "fpmatch.keyholder.v1.KeyHolder", {"Call": grpc.unary_unary_rpc_method_handler(self._call)}
        )
        self._server.add_generic_rpc_handlers((handler,))
        tls = grpc.ssl_server_credentials(
            [(credentials.key, credentials.cert)], root_certificates=credentials.ca, require_client_auth=True
        )
        self.port = self._server.add_secure_port(listen, tls)
        if not self.port:
            raise OSError(f"cannot listen on {listen}")
        host = listen.rsplit(":", 1)[0]
        self.address = f"{host}:{self.port}"

    def _call(self, request: bytes, context: Any) -> bytes:
        auth = context.auth_context()
        names = auth.get("x509_common_name") or []
        if auth.get("transport_security_type") != [b"ssl"] or len(names) != 1:
            context.abort(self._grpc.StatusCode.UNAUTHENTICATED, "a client certificate with one common name is required")
        try:
            caller = names[0].decode("utf-8")
        except UnicodeDecodeError:
            context.abort(self._grpc.StatusCode.UNAUTHENTICATED, "the certificate's common name is not UTF-8")
        fingerprint = None
        if self.service.denied_certificates:
            pem = auth.get("x509_pem_cert") or []
            if len(pem) != 1:
                context.abort(self._grpc.StatusCode.UNAUTHENTICATED, "the client certificate could not be read")
            fingerprint = certificate_fingerprint(pem[0])
        return self.service.handle(caller, request, fingerprint)

    def start(self) -> "KeyHolderServer":
        self._server.start()
        return self

    def stop(self, grace: float | None = 2.0) -> None:
        self._server.stop(grace).wait()

    def wait(self) -> None:
        self._server.wait_for_termination()


def serve_until_signalled(server: KeyHolderServer) -> None:
    """Run until SIGTERM or SIGINT, then let running requests finish and stop."""
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    server.start()
    print(f"fpmatch key holder listening on {server.address} (mutual TLS)", flush=True)
    while not done.wait(0.5):
        pass
    server.stop()
    server.service.ledger.close()


__all__ = ["Budgets", "KeyHolderServer", "KeyHolderService", "ServerCredentials", "lifted_rate", "serve_until_signalled"]
