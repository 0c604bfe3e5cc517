"""``fpmatch serve`` (the HTTP API over a store) and ``fpmatch tokens new|list|revoke`` (its clients)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..store import Store
from ._common import CliError, add_command, add_group, note, positive_int
from ._parties import DATABASE_HELP, REMOTE_OPTIONS, _load_key, _remote_keyholder, require_he

#: The token file when neither --tokens nor $FPMATCH_TOKENS names one: hashes only, so it may sit in the store.
TOKEN_FILE = "api-tokens.json"


def _require_api() -> Any:
    try:
        from .. import api
    except ImportError:
        raise CliError("the HTTP API needs FastAPI and uvicorn: pip install 'fpmatch[api]'") from None
    return api


def _token_path(args: argparse.Namespace) -> Path:
    if args.tokens:
        return Path(args.tokens)
    if args.store:
        return Path(args.store) / TOKEN_FILE
    raise CliError("no token file: pass --tokens FILE (or --store DIR for DIR/api-tokens.json), or set FPMATCH_TOKENS")


def _cmd_serve(args: argparse.Namespace) -> int:
    api = _require_api()
    if args.store is None:
        raise CliError("no store: pass --store DIR or set FPMATCH_STORE")
    directory = Path(args.store)
    if not Store.exists(directory, database=args.database):
        where = directory if args.database is None else "the database of --database"
        raise CliError(f"no fpmatch store in {where}; create one first (fpmatch consent grant ... --dim D)")
    if (args.tls_cert is None) != (args.tls_key is None):
        args.parser.error("give both --tls-cert and --tls-key")
    if args.tls_cert is None and not args.no_tls:
        args.parser.error("give --tls-cert and --tls-key (or --no-tls, for a loopback address only)")
    if args.no_tls and not api.server.is_loopback(args.host):
        raise CliError(f"--no-tls serves only a loopback address, not {args.host}")
    for path in (args.tls_cert, args.tls_key):
        if path is not None and not Path(path).is_file():
            raise CliError(f"TLS file not found: {path}")
    service_key = _load_key(args, "service")
    holder = _remote_keyholder(args)
    remote = holder is not None
    if holder is None and args.keyholder_key is not None:  # a deployed key holder keeps its per-caller rate limit
        holder = require_he().KeyHolder.load(args.keyholder_key)
    try:
        _serve(args, directory, service_key, holder)
    finally:
        if remote:
            holder.close()
    return 0


def _serve(args: argparse.Namespace, directory: Path, service_key: Any, holder: Any) -> None:
    from .. import api
    from ..service import MatchingService

    tokens = api.TokenStore(_token_path(args))
    if not tokens.clients():
        note(f"no API clients yet: every request will be refused until `fpmatch tokens new CLIENT --tokens {tokens.path}`")
    with MatchingService.open(directory, service_key, keyholder=holder, database=args.database) as service:
        scheme = "https" if args.tls_cert else "http"
        note(f"serving {directory} at {scheme}://{args.host}:{args.port} (OpenAPI docs at /docs)")
        api.serve(
            service,
            tokens,
            host=args.host,
            port=args.port,
            certfile=args.tls_cert,
            keyfile=args.tls_key,
            max_body_bytes=args.max_body,
            log_level=args.log_level,
        )


def _cmd_tokens_new(args: argparse.Namespace) -> int:
    token = _require_api().TokenStore(_token_path(args)).issue(args.client)
    print(token)
    note("the token is shown once; the file keeps only its salted hash")
    return 0


def _cmd_tokens_list(args: argparse.Namespace) -> int:
    for entry in _require_api().TokenStore(_token_path(args)).clients():
        print(json.dumps(entry))
    return 0


def _cmd_tokens_revoke(args: argparse.Namespace) -> int:
    count = _require_api().TokenStore(_token_path(args)).revoke(args.client)
    if not count:
        raise CliError(f"{args.client!r} holds no token")
    print(f"{args.client}: revoked {count} token(s)")
    return 0


def _token_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokens",
        metavar="FILE",
        default=os.environ.get("FPMATCH_TOKENS") or None,
        help=f"client token file (default: $FPMATCH_TOKENS, else STORE/{TOKEN_FILE})",
    )
    parser.add_argument("--store", metavar="DIR", default=os.environ.get("FPMATCH_STORE") or None, help="store directory")


def add_commands(commands: Any) -> None:
    """Register ``serve`` and ``tokens``."""
    serve = add_command(
        commands,
        "serve",
        "Serve the matching service over HTTPS (FastAPI on uvicorn).",
        _cmd_serve,
        [
            "fpmatch tokens new gate-1 --store /srv/faces",
            "fpmatch serve --store /srv/faces --service-key service.key --keyholder-key keyholder.key \\",
            "    --host 0.0.0.0 --port 8443 --tls-cert cert.pem --tls-key key.pem",
        ],
        "Consent grant, withdraw and show, enrolment, verify and identify with capture-edge messages\n"
        "(base64 of to_bytes()), withdrawal, subject reports, audit verify and export, health.\n"
        "Every route but /v1/health and the docs (/docs, /openapi.json) needs Authorization: Bearer\n"
        "TOKEN of a client from `fpmatch tokens new`. Bodies above --max-body bytes are refused\n"
        'before parsing; errors are {"error": {"code": ..., "message": ...}}. The store must exist.\n'
        "The service holds only its own key (--service-key); for hybrid and he stores it reaches the\n"
        "key holder service (--keyholder-address with mutual TLS) or loads its key file\n"
        "(--keyholder-key, with its per-caller rate limit).",
    )
    _token_options(serve)
    serve.add_argument("--database", metavar="CONNINFO", default=os.environ.get("FPMATCH_DATABASE") or None,
                       help=DATABASE_HELP)  # fmt: skip
    serve.add_argument("--service-key", metavar="FILE", default=os.environ.get("FPMATCH_SERVICE_KEY") or None,
                       help="matching service: its own key file (default: $FPMATCH_SERVICE_KEY)")  # fmt: skip
    serve.add_argument("--keyholder-key", metavar="FILE", default=os.environ.get("FPMATCH_KEYHOLDER_KEY") or None,
                       help="key holder: CKKS secret key file, for hybrid stores (default: $FPMATCH_KEYHOLDER_KEY)")  # fmt: skip
    for name, (option, variable, what) in REMOTE_OPTIONS.items():
        serve.add_argument(option, dest=name, metavar="HOST:PORT" if name == "keyholder_address" else "FILE",
                           default=os.environ.get(variable) or None, help=f"key holder service: {what} (default: ${variable})")  # fmt: skip
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=positive_int, default=8443, help="port (default 8443)")
    serve.add_argument("--tls-cert", metavar="PEM", help="TLS certificate (chain) file")
    serve.add_argument("--tls-key", metavar="PEM", help="TLS private key file")
    serve.add_argument("--no-tls", action="store_true", help="plain HTTP, allowed on a loopback address only")
    serve.add_argument("--max-body", type=positive_int, default=1_500_000, metavar="BYTES",
                       help="largest request body (default 1,500,000)")  # fmt: skip
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])

    tokens = add_group(commands, "tokens", "Issue, list and revoke API client tokens.",
                       ["fpmatch tokens new gate-1 --store /srv/faces", "fpmatch tokens revoke gate-1 --store /srv/faces"])  # fmt: skip
    new = add_command(tokens, "new", "Issue a token for a client; printed once, stored as a salted hash.",
                      _cmd_tokens_new, ["fpmatch tokens new gate-1 --tokens /etc/fpmatch/api-tokens.json"])  # fmt: skip
    new.add_argument("client", metavar="CLIENT", help="the client's name, e.g. the terminal's")
    _token_options(new)
    listing = add_command(tokens, "list", "List clients and token ids (no secrets).", _cmd_tokens_list,
                          ["fpmatch tokens list --store /srv/faces"])  # fmt: skip
    _token_options(listing)
    revoke = add_command(tokens, "revoke", "Revoke every token of a client (a running server stops taking them).",
                         _cmd_tokens_revoke, ["fpmatch tokens revoke gate-1 --store /srv/faces"])  # fmt: skip
    revoke.add_argument("client", metavar="CLIENT")
    _token_options(revoke)


__all__ = ["TOKEN_FILE"]
