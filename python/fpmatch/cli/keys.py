"""``fpmatch keys new``: a new key file for one party."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..keys import HashKey, ServiceKey
from ._common import CliError, add_command, add_group
from ._parties import KEY_KINDS, require_he


def _cmd_keys_new(args: argparse.Namespace) -> int:
    target = Path(args.out)
    if target.exists() or target.is_symlink():
        raise CliError(f"{target} exists; refusing to overwrite a key (what was protected under it would be lost)")
    if args.kind == "keyholder":
        holder = require_he().KeyHolder()
        holder.save(target)
        print(f"wrote the key holder's CKKS secret key {holder.key_id} to {target} (mode 0600)")
        print("only the key holder reads it; back it up: encrypted templates are useless without it")
        return 0
    if args.kind == "edge-signing":
        from ..attestation import EdgeSigningKey

        signing = EdgeSigningKey.generate()
        signing.save(target)
        print(f"wrote the capture edge's signing key {signing.key_id} to {target} (mode 0600)")
        print(f"public key (register it at the key holder: `fpmatch keyholder register-edge`): {signing.public_bytes.hex()}")
        return 0
    key = (HashKey if args.kind == "edge" else ServiceKey).generate()
    key.save(target)
    if args.kind == "edge":
        print(f"wrote the capture edge's hash key {key.key_id} to {target} (mode 0600)")
        print("keep it at the capture edge, never with the matching service or in a store directory;")
        print("back it up: stored codes are useless without it")
    else:
        print(f"wrote the matching service's key {key.key_id} to {target} (mode 0600)")
        print("keep it outside every store directory and back it up: the store cannot be opened without it")
    return 0


def add_commands(commands: Any) -> None:
    """Register ``keys new``."""
    keys = add_group(
        commands, "keys", "Create key files for the capture edge, the matching service and the key holder.",
        ["fpmatch keys new ~/keys/edge.key", "fpmatch keys new --kind keyholder ~/keys/keyholder.key"],
    )  # fmt: skip
    keys_new = add_command(
        keys, "new", "Write a new random key of one party to a new file (mode 0600).", _cmd_keys_new,
        [
            "fpmatch keys new ~/keys/edge.key",
            "fpmatch keys new --kind service ~/keys/service.key",
            "fpmatch keys new --kind keyholder ~/keys/keyholder.key",
            "fpmatch keys new --kind edge-signing ~/keys/edge-signing.key",
        ],
        "edge: the capture edge's hash (transform) key (--key); service: the matching service's own\n"
        "key (--service-key); keyholder: the key holder's CKKS secret key (--keyholder-key, needs\n"
        "TenSEAL); edge-signing: a capture edge's Ed25519 signing key for a key holder in attested\n"
        "mode (prints the public key to register). Each party holds only its own. Refuses to\n"
        "overwrite an existing file; keep every key outside every store directory.",
    )  # fmt: skip
    keys_new.add_argument("out", metavar="OUT", help="key file to create")
    keys_new.add_argument(
        "--kind", choices=[*KEY_KINDS, "edge-signing"], default="edge", help="whose key to create (default edge)"
    )
