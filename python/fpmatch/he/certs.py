"""Certificates for a test deployment of the key holder service: a CA, a server, clients.

The key holder accepts only callers whose client certificate this CA signed,
and names each caller by its certificate's common name. For production, issue
the certificates from the organisation's own CA; these are for tests and trials.
Private keys are written 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Test certificates are valid for this long.
VALID_DAYS = 365


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = _key_pem(key)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _issue(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
    *, ca: bool = False, hosts: Sequence[str] = (), client: bool = False, days: float = VALID_DAYS,
    start: datetime.datetime | None = None,
) -> x509.Certificate:
    now = start or datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _save(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    for path in (cert_path, key_path):
        if path.exists():
            raise FileExistsError(f"{path} exists; refusing to overwrite it")
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_path, key_path)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def make_ca(directory: str | os.PathLike[str], name: str = "fpmatch test CA") -> Issued:
    """A new CA (``ca.crt``, ``ca.key``) in ``directory``."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    return _save(target, "ca", _issue(name, key, _name(name), key, ca=True), key)


def issue_server(directory: str | os.PathLike[str], hosts: Sequence[str] = ("localhost", "127.0.0.1"),
                 name: str = "fpmatch-keyholder") -> Issued:  # fmt: skip
    """``server.crt``/``server.key`` signed by the CA in ``directory``, for ``hosts`` (SAN)."""
    target = Path(directory)
    ca_cert, ca_key = _load_ca(target)
    key = ec.generate_private_key(ec.SECP256R1())
    return _save(target, "server", _issue(name, key, ca_cert.subject, ca_key, hosts=hosts), key)


def issue_client(
    directory: str | os.PathLike[str], caller: str, *, days: float = VALID_DAYS,
    start: datetime.datetime | None = None, stem: str | None = None,
) -> Issued:  # fmt: skip
    """``<caller>.crt``/``<caller>.key`` signed by the CA in ``directory``; the caller's name is its CN.

    The certificate is valid for ``days`` from ``start`` (default: now, less five minutes
    of clock skew); ``stem`` names the files when they should not be named after the caller.
    """
    for name in (caller, stem or caller):
        if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
            raise ValueError(f"a caller name is letters, digits, '-', '_' and '.', got {name!r}")
    target = Path(directory)
    ca_cert, ca_key = _load_ca(target)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(caller, key, ca_cert.subject, ca_key, client=True, days=days, start=start)
    return _save(target, stem or caller, cert, key)


def certificate_fingerprint(pem: bytes) -> str:
    """SHA-256 of a certificate's DER encoding, lower-case hex (what ``--deny-cert`` matches)."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate: {exc}") from None
    return cert.fingerprint(hashes.SHA256()).hex()


class MemoryCA:
    """A CA that lives in one process's memory and is never written down: for links whose two ends
    that process sets up itself (a sharded service and its replicas). It dies with the process."""

    def __init__(self, name: str) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert = _issue(name, self._key, _name(name), self._key, ca=True)

    @property
    def pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, subject: str, *, client: bool = False, hosts: Sequence[str] = ()) -> tuple[bytes, bytes]:
        """(certificate, private key) as PEM, for a server named ``hosts`` or a ``client``."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(subject, key, self._cert.subject, self._key, client=client, hosts=hosts)
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def make_test_pki(
    directory: str | os.PathLike[str], callers: Sequence[str] = ("matching-service",),
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
) -> dict[str, Issued]:  # fmt: skip
    """A CA, a server certificate and one client certificate per caller, in ``directory``."""
    issued = {"ca": make_ca(directory), "server": issue_server(directory, hosts)}
    for caller in callers:
        issued[caller] = issue_client(directory, caller)
    return issued


__all__ = ["Issued", "MemoryCA", "certificate_fingerprint", "issue_client", "issue_server", "make_ca", "make_test_pki"]
