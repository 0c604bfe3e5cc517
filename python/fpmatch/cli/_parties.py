"""The three parties of a deployment, each from its own key file, and the store session a command opens."""

from __future__ import annotations

import argparse
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..edge import SCHEMES, CaptureEdge, EdgeProfile
from ..errors import KeyFileError, NotCalibratedError
from ..hashing import DEFAULT_BITS, SCHEME as HASH_SCHEME
from ..keys import HashKey, ServiceKey, ensure_outside
from ..service import MatchingService
from ..store import Store
from ._common import CliError, note, one_line, positive_int


#: The scheme of a new store unless --scheme says otherwise.
DEFAULT_SCHEME = "hybrid"
#: Key file kinds: (option, environment variable, what the file holds).
KEY_KINDS = {
    "edge": ("--key", "FPMATCH_KEY", "capture edge's hash key"),
    "service": ("--service-key", "FPMATCH_SERVICE_KEY", "matching service's key"),
    "keyholder": ("--keyholder-key", "FPMATCH_KEYHOLDER_KEY", "key holder's secret key"),
}

ROLES = (
    "The command line plays the three parties of a deployment on one machine, each from its own\n"
    "key file: the capture edge (--key, the hash or transform key) turns .npy templates into\n"
    "protected messages; the matching service (--service-key) stores and matches only those and\n"
    "holds neither other key; the key holder (--keyholder-key; hybrid and he stores) holds the\n"
    "CKKS secret key and answers decisions on encrypted scores, never decryptions. Instead of\n"
    "its key file, --keyholder-address names a running key holder service (`fpmatch keyholder\n"
    "serve`), reached with mutual TLS (--keyholder-cert, --keyholder-tls-key, --keyholder-ca)."
)
#: The remote key holder's options: (option, environment variable, what it names).
REMOTE_OPTIONS = {
    "keyholder_address": ("--keyholder-address", "FPMATCH_KEYHOLDER_ADDRESS", "HOST:PORT of the key holder service"),
    "keyholder_cert": ("--keyholder-cert", "FPMATCH_KEYHOLDER_CERT", "this caller's client certificate (PEM)"),
    "keyholder_tls_key": ("--keyholder-tls-key", "FPMATCH_KEYHOLDER_TLS_KEY", "that certificate's private key (PEM)"),
    "keyholder_ca": ("--keyholder-ca", "FPMATCH_KEYHOLDER_CA", "the CA that signed the key holder's certificate (PEM)"),
}


def require_he() -> Any:
    """The encrypted schemes' package, or a CliError saying what to install."""
    try:
        from .. import he
    except ImportError:
        raise CliError(
            "the hybrid and he schemes need TenSEAL (pip install 'fpmatch[he]'); "
            "a store created with --scheme hash does without it"
        ) from None
    return he


def _load_keyholder(path: str) -> Any:
    he = require_he()
    # One local command for one operator: the key holder's per-caller request budget (there to
    # slow a remote caller probing the secret key) would only cut a batch short here.
    local = he.RateLimit(requests_per_second=1e9, burst=10**9)
    return he.KeyHolder.load(path, limits=local)


def _remote_keyholder(args: argparse.Namespace) -> Any:
    """A RemoteKeyHolder for --keyholder-address, or None when the key holder is a local key file."""
    address = getattr(args, "keyholder_address", None)
    if address is None:
        return None
    if args.keyholder_key is not None:
        raise CliError("pass either --keyholder-key (a local key file) or --keyholder-address (a service), not both")
    he = require_he()
    missing = [REMOTE_OPTIONS[name][0] for name in ("keyholder_cert", "keyholder_tls_key", "keyholder_ca")
               if getattr(args, name) is None]  # fmt: skip
    if missing:
        raise CliError(
            f"the key holder service takes mutual TLS only: pass {', '.join(missing)} (or set "
            + ", ".join(REMOTE_OPTIONS[o.lstrip("-").replace("-", "_")][1] for o in missing) + ")"
        )
    try:
        credentials = he.ClientCredentials.from_files(args.keyholder_ca, args.keyholder_cert, args.keyholder_tls_key)
    except OSError as exc:
        raise CliError(f"cannot read the key holder's TLS files: {exc}") from exc
    try:
        remote = he.RemoteKeyHolder(address, credentials, timeout=30.0, retries=4)
    except (ImportError, ValueError) as exc:
        raise CliError(f"--keyholder-address: {one_line(exc)}") from exc
    try:
        remote.key_id  # asks once now: an unreachable key holder fails here, before any work
    except BaseException:
        remote.close()
        raise
    return remote


def _keyholder(args: argparse.Namespace, directory: Path, why: str, opened: list[Any]) -> Any:
    """The key holder: the service at --keyholder-address (added to ``opened``), or the key file --keyholder-key."""
    remote = _remote_keyholder(args)
    if remote is not None:
        opened.append(remote)
        return remote
    holder = _load_key(args, "keyholder", why)
    _outside(args.keyholder_key, directory, "key holder's key")
    return holder


def _loaders() -> dict[str, Callable[[str], Any]]:
    return {"edge": HashKey.load, "service": ServiceKey.load, "keyholder": _load_keyholder}


def _load_key(args: argparse.Namespace, kind: str, why: str = "") -> Any:
    """The key file of one party, named by its option or environment variable."""
    option, variable, what = KEY_KINDS[kind]
    path = getattr(args, option.lstrip("-").replace("-", "_"))
    if path is None:
        remote = " (or --keyholder-address HOST:PORT for a key holder service)" if kind == "keyholder" else ""
        raise CliError(
            f"no {what}{why}: pass {option} FILE{remote} or set {variable} "
            f"(create one with `fpmatch keys new --kind {kind} FILE`)"
        )
    if not Path(path).is_file():
        raise CliError(f"{what} file not found: {path} ({option})")
    loaders = _loaders()
    try:
        return loaders[kind](path)
    except KeyFileError as exc:
        for other, load in loaders.items():  # name the file's real kind and the option it belongs to
            if other == kind:
                continue
            try:
                load(path)
            except (KeyFileError, CliError):
                continue
            raise CliError(
                f"{path} holds the {KEY_KINDS[other][2]}, not the {what}: pass it with {KEY_KINDS[other][0]}"
            ) from exc
        raise CliError(f"{option}: {one_line(exc)}") from exc


def _outside(path: str, directory: Path, what: str) -> None:
    """Refuse a key file inside the store directory (a copied store must not carry it)."""
    key = Path(path).resolve()
    store = directory.resolve()
    if key == store or store in key.parents:
        raise CliError(f"the {what} file {key} is inside the store directory {store}; keep keys elsewhere")


def _stored_profile(directory: Path, service_key: ServiceKey, database: str | None) -> EdgeProfile:
    store = Store.open(directory, service_key, database=database)
    try:
        return store.settings.profile
    finally:
        store.close()


def _check_scheme(scheme: str) -> None:
    if scheme == "he":
        raise CliError(
            "the matching service does not run the he scheme yet; use --scheme hybrid (the default: "
            "encrypted decisions on a code shortlist) or --scheme hash"
        )


def _capture_edge(args: argparse.Namespace, directory: Path, profile: EdgeProfile, holder: Any) -> CaptureEdge:
    """The capture edge for ``profile`` from the hash key file, checked against it."""
    if profile.narrow_cone:
        raise CliError(
            f"{directory} takes templates from an edge that removes a model offset; the command line "
            "cannot rebuild that edge (the offset is not stored): use fpmatch.CaptureEdge(..., offset=...)"
        )
    key = _load_key(args, "edge", " (the capture edge protects templates)")
    ensure_outside(key, directory)
    signing = None
    if getattr(args, "edge_signing_key", None):
        from ..attestation import EdgeSigningKey

        try:
            signing = EdgeSigningKey.load(args.edge_signing_key)
        except (KeyFileError, ImportError) as exc:
            raise CliError(f"--edge-signing-key: {one_line(exc)}") from exc
        if Path(args.edge_signing_key).resolve().is_relative_to(directory.resolve()):
            raise CliError("--edge-signing-key: keep the edge's signing key outside the store directory")
    edge = CaptureEdge(
        key,
        profile.dim,
        scheme=profile.scheme,
        public_context=None if holder is None else holder.public_context(),
        bits=profile.bits or DEFAULT_BITS,
        hash_scheme=profile.hash_scheme or HASH_SCHEME,
        signing_key=signing,
    )
    if edge.profile.profile_id != profile.profile_id:
        if edge.profile.edge_key_id != profile.edge_key_id:
            raise CliError(
                f"the hash key {args.key} (key id {edge.profile.edge_key_id}) is not the one {directory}'s "
                f"templates were made under ({profile.edge_key_id}): pass that capture-edge key with --key"
            )
        raise CliError(
            f"a capture edge made from these keys does not match {directory} "
            f"(profile {edge.profile.profile_id}, the store takes {profile.profile_id})"
        )
    return edge


@dataclass
class Parties:
    service: MatchingService
    edge: CaptureEdge | None  # only for commands that take templates
    purged: list[str]


@contextmanager
def session(
    args: argparse.Namespace, *, edge: bool = False, announce_purge: bool = True
) -> Iterator[Parties]:
    """Open the store named on the command line, with the parties the command needs.

    A new store needs all three keys (the edge's profile is fixed at creation);
    an existing one needs the service key, the key holder's for encrypted
    schemes (its key file, or the address of its service), and the hash key
    only when ``edge`` (templates to protect).
    """
    opened: list[Any] = []  # remote key holders, whose channels close however the command ends
    try:
        with _session(args, opened, edge=edge, announce_purge=announce_purge) as parties:
            yield parties
    finally:
        for remote in opened:
            remote.close()


@contextmanager
def _session(args: argparse.Namespace, opened: list[Any], *, edge: bool, announce_purge: bool) -> Iterator[Parties]:
    if args.store is None:
        raise CliError("no store: pass --store DIR or set FPMATCH_STORE")
    directory = Path(args.store)
    service_key = _load_key(args, "service")
    database = args.database
    creating = not Store.exists(directory, database=database)
    if creating:
        if args.dim is None:
            where = directory if database is None else "the database of --database"
            raise CliError(f"no fpmatch store in {where}; pass --dim D (the template dimension) to create one")
        scheme = args.scheme or DEFAULT_SCHEME
        _check_scheme(scheme)
        ensure_outside(service_key, directory)
        holder = None
        if scheme in ("he", "hybrid"):
            why = f" (a new store runs the {scheme} scheme unless --scheme says otherwise)"
            holder = _keyholder(args, directory, why, opened)
        key = _load_key(args, "edge", " (a new store takes the capture edge's profile)")
        ensure_outside(key, directory)
        context = None if holder is None else holder.public_context()
        capture = CaptureEdge(key, args.dim, scheme=scheme, public_context=context, bits=args.bits or DEFAULT_BITS)
        profile = capture.profile
    else:
        profile = _stored_profile(directory, service_key, database)
        given = {
            "--dim": (args.dim, profile.dim),
            "--bits": (args.bits, profile.bits),
            "--scheme": (args.scheme, profile.scheme),
        }
        for option, (value, stored) in given.items():
            if value is not None and value != stored:
                raise CliError(
                    f"{directory} takes {profile.dim}-D templates, scheme {profile.scheme}"
                    + (f", {profile.bits}-bit codes" if profile.bits else "")
                    + f"; {option} applies only when creating a store"
                )
        _check_scheme(profile.scheme)
        holder = None
        if profile.encrypted:
            holder = _keyholder(args, directory, f" ({directory} runs the {profile.scheme} scheme)", opened)
            if holder.key_id != profile.he_key_id:
                where = args.keyholder_key or f"at {args.keyholder_address}"
                raise CliError(
                    f"the key holder's key {where} (key id {holder.key_id}) is not the one "
                    f"{directory}'s templates are encrypted under ({profile.he_key_id}): pass that key holder "
                    "(--keyholder-key or --keyholder-address); after a key rotation, re-enrol into a new store"
                )
        capture = _capture_edge(args, directory, profile, holder) if edge else None
    service = MatchingService.open(
        directory, service_key, edge=profile if creating else None, keyholder=holder, purge_on_open=False,
        database=database,
    )
    try:
        purged = service.expire()
        if purged and announce_purge:
            shown = ", ".join(purged[:5]) + (", ..." if len(purged) > 5 else "")
            note(f"erased {len(purged)} subject(s) whose consent lapsed: {shown}")
        yield Parties(service, capture if edge else None, purged)
    except NotCalibratedError as exc:
        raise CliError(f"{one_line(exc)}; see `fpmatch calibrate --help`") from exc
    finally:
        service.close()


#: Help of --database, wherever a command opens a store.
DATABASE_HELP = (
    "PostgreSQL connection string of a store that several processes or nodes share (e.g. "
    "'host=db1 dbname=faces user=fpmatch'); --store DIR then holds only local files. Keep the password "
    "out of it (libpq reads PGPASSWORD or ~/.pgpass). Default: $FPMATCH_DATABASE, else the SQLite store in DIR"
)


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def store_options(parser: argparse.ArgumentParser) -> None:
    options = parser.add_argument_group(
        "store and parties",
        ROLES + "\nA local key file serves one command, so its per-caller request rate limit (there against\n"
        "remote callers probing its key) is lifted; a key holder service keeps its own limits.",
    )
    options.add_argument(
        "--store", metavar="DIR", default=_env("FPMATCH_STORE"), help="store directory (default: $FPMATCH_STORE)"
    )
    options.add_argument("--database", metavar="CONNINFO", default=_env("FPMATCH_DATABASE"), help=DATABASE_HELP)
    options.add_argument(
        "--key",
        metavar="FILE",
        default=_env("FPMATCH_KEY"),
        help="capture edge: hash (transform) key file; needed to create a store and for commands "
        "that take templates (default: $FPMATCH_KEY)",
    )
    options.add_argument(
        "--edge-signing-key",
        metavar="FILE",
        default=_env("FPMATCH_EDGE_SIGNING_KEY"),
        help="capture edge: its Ed25519 signing key, to sign enrolments and probes for a key holder in "
        "attested mode (default: $FPMATCH_EDGE_SIGNING_KEY)",
    )
    options.add_argument(
        "--service-key",
        metavar="FILE",
        default=_env("FPMATCH_SERVICE_KEY"),
        help="matching service: its own key file, kept outside the store (default: $FPMATCH_SERVICE_KEY)",
    )
    options.add_argument(
        "--keyholder-key",
        metavar="FILE",
        default=_env("FPMATCH_KEYHOLDER_KEY"),
        help="key holder: CKKS secret key file; needed for hybrid and he stores unless --keyholder-address "
        "(default: $FPMATCH_KEYHOLDER_KEY)",
    )
    for name, (option, variable, what) in REMOTE_OPTIONS.items():
        options.add_argument(
            option, dest=name, metavar="HOST:PORT" if name == "keyholder_address" else "FILE",
            default=_env(variable), help=f"key holder service: {what} (default: ${variable})",
        )  # fmt: skip
    options.add_argument(
        "--scheme",
        choices=SCHEMES,
        help=f"protection scheme of a new store (default {DEFAULT_SCHEME}; the matching service does not run "
        "he yet); an existing store keeps its own",
    )
    options.add_argument(
        "--dim", type=positive_int, metavar="D", help="template dimension; needed only to create a new store"
    )
    options.add_argument(
        "--bits", type=positive_int, metavar="B", help=f"code length when creating a store (default {DEFAULT_BITS})"
    )


__all__ = ["DATABASE_HELP", "DEFAULT_SCHEME", "KEY_KINDS", "ROLES", "Parties", "require_he", "session", "store_options"]
