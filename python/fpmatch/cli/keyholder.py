"""``fpmatch keyholder init|serve|certs|audit``: the key holder as a long-running service."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from ._common import CliError, add_command, add_group, positive_int
from ._parties import require_he

PASSPHRASE_ENV = "FPMATCH_KEYHOLDER_PASSPHRASE"


def _require_service() -> None:
    """The key holder service's dependencies, or a CliError saying what to install."""
    require_he()
    try:
        import cryptography  # noqa: F401
        import grpc  # noqa: F401
    except ImportError:
        raise CliError("the key holder service needs grpcio and cryptography: pip install 'fpmatch[keyholder]'") from None


def _how(args: argparse.Namespace, *, confirm: bool = False) -> dict[str, Any]:
    """How the key is sealed: a key-encryption key file, or a passphrase (environment or prompt)."""
    from ..he.sealing import read_kek

    if args.kek:
        return {"kek": read_kek(args.kek)}
    passphrase = os.environ.get(PASSPHRASE_ENV)
    if not passphrase:
        if not sys.stdin.isatty():
            raise CliError(f"no passphrase: set {PASSPHRASE_ENV}, or pass --kek FILE")
        passphrase = getpass.getpass("key holder passphrase: ")
        if confirm and getpass.getpass("again: ") != passphrase:
            raise CliError("the passphrases differ")
    if len(passphrase) < 12:
        raise CliError("a passphrase needs at least 12 characters")
    return {"passphrase": passphrase}


def _cmd_init(args: argparse.Namespace) -> int:
    _require_service()
    he = require_he()
    from ..he.sealing import new_kek, write_sealed

    target = Path(args.out)
    if target.exists() or target.is_symlink():
        raise CliError(f"{target} exists; refusing to overwrite a key (what was encrypted under it would be lost)")
    if args.new_kek:
        if Path(args.new_kek).exists():
            raise CliError(f"{args.new_kek} exists; refusing to overwrite it")
        new_kek(args.new_kek)
        args.kek = args.new_kek
        print(f"wrote a new key-encryption key to {args.new_kek} (mode 0600); keep it apart from {target}")
    how = _how(args, confirm=True)
    holder = he.KeyHolder()
    write_sealed(target, holder, **how)
    print(f"wrote the key holder's CKKS secret key {holder.key_id}, sealed, to {target} (mode 0600)")
    print(f"public context for capture edges and the matching service: `fpmatch keyholder public {target}`")
    return 0


def _budgets(args: argparse.Namespace) -> Any:
    from ..he.ledger import Budgets

    return Budgets(
        requests_per_second=args.rate, burst=args.burst, caller_requests_per_day=args.caller_requests_per_day,
        caller_scores_per_day=args.caller_scores_per_day, caller_released_per_day=args.caller_released_per_day,
        subject_requests_per_day=args.subject_requests_per_day,
        subject_shortlists_per_day=args.subject_shortlists_per_day,
        max_scores_per_request=args.max_scores_per_request,
    )  # fmt: skip


def _fingerprint(path: str) -> str:
    from ..he.certs import certificate_fingerprint

    try:
        return certificate_fingerprint(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise CliError(f"--deny-cert {path}: {exc}") from exc


def _cmd_serve(args: argparse.Namespace) -> int:
    _require_service()
    from ..he.keyholder import RateLimit
    from ..he.ledger import Ledger
    from ..he.sealing import read_sealed
    from ..he.server import KeyHolderServer, KeyHolderService, ServerCredentials, lifted_rate, serve_until_signalled

    if not args.edge_keys and not args.unattested:
        raise CliError(
            "the key holder service runs in attested mode unless told otherwise: pass --edge-keys FILE "
            "(capture edges registered with `fpmatch keyholder register-edge`), or --unattested to decide over "
            "scores the callers compute (a caller with a valid certificate can then rebuild a template from "
            "decisions within the daily budgets: THREAT_MODEL.md)"
        )
    if args.edge_keys and args.unattested:
        raise CliError("--edge-keys and --unattested exclude each other")
    attested: dict[str, Any] = {}
    if args.edge_keys:
        from ..attestation import EdgeKeys
        from ..errors import KeyFileError

        try:
            attested = {"edge_keys": EdgeKeys.load(args.edge_keys), "freshness": args.freshness}
        except KeyFileError as exc:
            raise CliError(str(exc)) from exc
    holder = read_sealed(args.key, **_how(args), limits=lifted_rate(RateLimit()), **attested)
    try:
        credentials = ServerCredentials.from_files(args.cert, args.tls_key, args.ca)
    except OSError as exc:
        raise CliError(f"cannot read the TLS files: {exc}") from exc
    ledger = Ledger(args.ledger, _budgets(args))
    fingerprints = [_fingerprint(path) for path in args.deny_cert or ()]
    service = KeyHolderService(
        holder, ledger, release_coarse=args.allow_coarse_scores, denied=args.deny or (), denied_certificates=fingerprints
    )
    if args.deny:
        print(f"refusing the revoked caller(s): {', '.join(sorted(set(args.deny)))}", file=sys.stderr)
    for path, fingerprint in zip(args.deny_cert or (), fingerprints):
        print(f"refusing the revoked certificate {path} (SHA-256 {fingerprint})", file=sys.stderr)
    if attested:
        print(f"attested mode: {len(attested['edge_keys'])} registered capture edge(s); probes usable for "
              f"{args.freshness:g} s", file=sys.stderr)  # fmt: skip
    if args.allow_coarse_scores:
        print("warning: coarse scores are released; each is a noisy value that helps rebuild templates", file=sys.stderr)
    serve_until_signalled(KeyHolderServer(service, credentials, args.listen, workers=args.workers))
    return 0


def _cmd_register_edge(args: argparse.Namespace) -> int:
    from ..attestation import EdgeKeys
    from ..errors import InvalidInputError, KeyFileError

    if (args.min_threshold is None) == (not args.no_floor):
        raise CliError(
            "pass --min-threshold X (the profile's calibrated threshold: decisions on this edge's probes below it are "
            "refused) or, to allow any threshold, --no-floor (whoever holds the edge's key can then climb toward a "
            "template with low thresholds: THREAT_MODEL.md)"
        )
    path = Path(args.edge_keys)
    try:
        public = bytes.fromhex(args.public_key)
    except ValueError:
        raise CliError("--public-key must be the edge's public key as 64 hex digits") from None
    try:
        keys = EdgeKeys.load(path) if path.exists() else EdgeKeys()
        key_id = keys.add(public, args.profile, args.min_threshold)
    except (KeyFileError, InvalidInputError) as exc:
        raise CliError(str(exc)) from exc
    keys.save(path)
    floor = "any threshold" if args.min_threshold is None else f"thresholds of at least {args.min_threshold}"
    print(f"registered edge key {key_id} for profile {args.profile} ({floor}) in {path}; restart the key holder to load it")
    return 0


def _cmd_public(args: argparse.Namespace) -> int:
    _require_service()
    from ..he.sealing import read_sealed

    holder = read_sealed(args.key, **_how(args))
    Path(args.out).write_bytes(holder.public_context())
    print(f"wrote the public context of key {holder.key_id} to {args.out}")
    return 0


def _cmd_certs(args: argparse.Namespace) -> int:
    _require_service()
    from ..he.certs import make_test_pki

    directory = Path(args.directory)
    try:
        issued = make_test_pki(directory, args.caller or ["matching-service"], args.host or ["localhost", "127.0.0.1"])
    except (FileExistsError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    for name, files in issued.items():
        print(f"{name}: {files.cert} {files.key}")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from ..he.ledger import Ledger

    if not Path(args.ledger).is_file():
        raise CliError(f"no ledger at {args.ledger}")
    ledger = Ledger(args.ledger)
    try:
        if args.export:
            for entry in ledger.entries():
                print(json.dumps(entry.__dict__, sort_keys=True))
        report = ledger.verify()
    finally:
        ledger.close()
    print(report.message, file=sys.stderr if args.export else sys.stdout)
    return 0 if report.ok else 1


def _seal_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kek", metavar="FILE",
        help=f"key-encryption key file that seals the key (default: a passphrase from ${PASSPHRASE_ENV} or a prompt)",
    )  # fmt: skip


def add_commands(commands: Any) -> None:
    """Register ``keyholder init|serve|register-edge|public|certs|audit``."""
    group = add_group(
        commands, "keyholder", "Run the key holder: its sealed key, its network service, test certificates.",
        ["fpmatch keyholder init /etc/fpmatch/keyholder.sealed",
         "fpmatch keyholder serve --listen 0.0.0.0:7443 --key /etc/fpmatch/keyholder.sealed ..."],
    )  # fmt: skip
    init = add_command(
        group, "init", "Create the CKKS secret key, sealed at rest (scrypt + AES-GCM, or a KEK), mode 0600.", _cmd_init,
        ["FPMATCH_KEYHOLDER_PASSPHRASE=... fpmatch keyholder init keyholder.sealed",
         "fpmatch keyholder init --new-kek kek.bin keyholder.sealed"],
    )  # fmt: skip
    init.add_argument("out", metavar="OUT", help="sealed key file to create")
    _seal_options(init)
    init.add_argument("--new-kek", metavar="FILE", help="create a random key-encryption key in FILE and seal under it")

    serve = add_command(
        group, "serve", "Serve decisions over gRPC with mutual TLS until SIGTERM.", _cmd_serve,
        ["fpmatch keyholder serve --listen 127.0.0.1:7443 --key kh.sealed --kek kek.bin --cert pki/server.crt "
         "--tls-key pki/server.key --ca pki/ca.crt --ledger kh.sqlite --edge-keys edge-keys.json"],
        "Callers present client certificates signed by --ca; each is named by its certificate's\n"
        "common name for limits and audit. Plain-text connections are refused. Limits and the\n"
        "audit log live in --ledger and survive restarts. Attested mode (--edge-keys) unless\n"
        "--unattested is given. Decisions only, unless --allow-coarse-scores (noisy values: each\n"
        "helps rebuild templates; see THREAT_MODEL.md).",
    )  # fmt: skip
    serve.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to listen on (port 0: any free)")
    serve.add_argument("--key", required=True, metavar="FILE", help="sealed key from `keyholder init`")
    _seal_options(serve)
    serve.add_argument("--cert", required=True, metavar="FILE", help="the service's TLS certificate (PEM)")
    serve.add_argument("--tls-key", required=True, metavar="FILE", help="the service's TLS private key (PEM)")
    serve.add_argument("--ca", required=True, metavar="FILE", help="CA whose client certificates are accepted (PEM)")
    serve.add_argument("--ledger", required=True, metavar="FILE", help="SQLite file of limits and audit log")
    serve.add_argument("--workers", type=positive_int, default=8, help="request threads (default 8)")
    serve.add_argument("--allow-coarse-scores", action="store_true", help="also release noisy coarse scores (off)")
    serve.add_argument("--deny", action="append", metavar="CN",
                       help="refuse the caller with this certificate common name, although its certificate "
                       "verifies (revocation; repeatable; requests are refused and audited)")  # fmt: skip
    serve.add_argument("--deny-cert", action="append", metavar="FILE",
                       help="refuse this one certificate (PEM), although it verifies; other certificates with "
                       "the same common name are still served (repeatable)")  # fmt: skip
    serve.add_argument("--edge-keys", metavar="FILE",
                       help="attested mode (the default; one of this or --unattested is required): decide only "
                       "over probes and templates signed by the capture edges registered in FILE (JSON, "
                       "fpmatch.EdgeKeys.save)")  # fmt: skip
    serve.add_argument("--unattested", action="store_true",
                       help="decide over scores the callers compute, with no capture-edge signatures (budgets "
                       "then bound, but cannot stop, a certificate holder rebuilding templates)")  # fmt: skip
    serve.add_argument("--freshness", type=float, default=120.0, metavar="SECONDS",
                       help="attested mode: how long a signed probe stays usable (default 120)")  # fmt: skip
    limits = serve.add_argument_group("limits (per caller unless said otherwise; days are UTC)")
    limits.add_argument("--rate", type=float, default=20.0, help="requests per second (default 20)")
    limits.add_argument("--burst", type=positive_int, default=100, help="burst of requests (default 100)")
    limits.add_argument("--caller-requests-per-day", type=positive_int, default=100_000, metavar="N")
    limits.add_argument("--caller-scores-per-day", type=positive_int, default=200_000, metavar="N")
    limits.add_argument("--caller-released-per-day", type=positive_int, default=20_000, metavar="N",
                        help="true decisions and returned positions (default 20000)")  # fmt: skip
    limits.add_argument("--subject-requests-per-day", type=positive_int, default=25, metavar="N",
                        help="requests labelled with one subject (default 25)")  # fmt: skip
    limits.add_argument("--subject-shortlists-per-day", type=positive_int, default=25, metavar="N",
                        help="attested identifications one subject's template is scored in; past it the "
                             "template is left out until the next day (default 25)")  # fmt: skip
    limits.add_argument("--max-scores-per-request", type=positive_int, default=4096, metavar="N")

    public = add_command(
        group, "public", "Write the public context (for capture edges and the matching service).", _cmd_public,
        ["fpmatch keyholder public kh.sealed --kek kek.bin --out public.ctx"],
    )  # fmt: skip
    public.add_argument("key", metavar="KEY", help="sealed key file")
    public.add_argument("--out", required=True, metavar="FILE", help="public context file to write")
    _seal_options(public)

    register = add_command(
        group, "register-edge", "Register a capture edge's signing key for attested mode (serve --edge-keys).",
        _cmd_register_edge,
        ["fpmatch keyholder register-edge /etc/fpmatch/edge-keys.json --public-key HEX --profile 0123456789abcdef "
         "--min-threshold 0.42"],
    )  # fmt: skip
    register.add_argument("edge_keys", metavar="FILE", help="the edge key list (created if missing)")
    register.add_argument("--public-key", required=True, metavar="HEX", help="the edge's public key (`keys new --kind edge-signing`)")
    register.add_argument("--profile", required=True, metavar="ID", help="the edge profile id it signs for (16 hex digits)")
    register.add_argument("--min-threshold", type=float, metavar="X",
                          help="refuse decisions on its probes below this threshold (the profile's calibrated one; "
                          "this or --no-floor is required)")  # fmt: skip
    register.add_argument("--no-floor", action="store_true", help="allow decisions at any threshold on its probes")
    certs = add_command(
        group, "certs", "Make a test CA, a server certificate and client certificates.", _cmd_certs,
        ["fpmatch keyholder certs pki --caller matching-service --host localhost --host 127.0.0.1"],
        "For tests and trials; issue production certificates from your own CA. Private keys are 0600.",
    )  # fmt: skip
    certs.add_argument("directory", metavar="DIR", help="directory for ca.*, server.* and <caller>.*")
    certs.add_argument("--caller", action="append", help="client certificate for this caller (repeatable)")
    certs.add_argument("--host", action="append", help="server name or address (repeatable)")

    audit = add_command(
        group, "audit", "Verify the key holder's audit chain (exit 1 when broken); --export prints it.", _cmd_audit,
        ["fpmatch keyholder audit kh.sqlite", "fpmatch keyholder audit kh.sqlite --export > audit.jsonl"],
    )  # fmt: skip
    audit.add_argument("ledger", metavar="LEDGER", help="the key holder's SQLite ledger")
    audit.add_argument("--export", action="store_true", help="print every line as JSON first")
