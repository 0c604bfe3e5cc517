"""Helpers for the key holder service tests (not a test module): test PKI, a sealed key, and
the real server started as ``fpmatch keyholder serve`` in a subprocess on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from fpmatch.he import ClientCredentials, KeyHolder, RemoteKeyHolder
from fpmatch.he.certs import make_test_pki
from fpmatch.he.sealing import new_kek, read_kek, write_sealed

CALLERS = ("matching-service", "other-service")


class Deployment:
    """A key holder's files: PKI, a foreign CA, a KEK-sealed key and a ledger path."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.pki = directory / "pki"
        make_test_pki(self.pki, CALLERS)
        self.foreign = directory / "foreign"
        make_test_pki(self.foreign, ["matching-service"])  # same names, another CA
        self.kek = new_kek(directory / "kek.bin")
        holder = KeyHolder()
        self.key_id = holder.key_id
        self.public = holder.public_context()
        self.sealed = write_sealed(directory / "keyholder.sealed", holder, kek=read_kek(self.kek))
        self.ledger = directory / "ledger.sqlite"

    def credentials(self, caller: str = "matching-service", pki: Path | None = None) -> ClientCredentials:
        base = pki or self.pki
        return ClientCredentials.from_files(self.pki / "ca.crt", base / f"{caller}.crt", base / f"{caller}.key")

    def client(self, server: "Server", caller: str = "matching-service", **options: float) -> RemoteKeyHolder:
        options.setdefault("timeout", 20.0)
        return RemoteKeyHolder(server.address, self.credentials(caller), **options)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``fpmatch keyholder serve`` in a subprocess; stop() sends SIGTERM."""

    def __init__(self, deployment: Deployment, port: int | None = None, extra: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = deployment.dir / f"server-{self.port}-{time.monotonic_ns()}.log"
        pki = deployment.pki
        command = [
            sys.executable, "-m", "fpmatch", "keyholder", "serve", "--listen", self.address,
            "--key", str(deployment.sealed), "--kek", str(deployment.kek), "--cert", str(pki / "server.crt"),
            "--tls-key", str(pki / "server.key"), "--ca", str(pki / "ca.crt"), "--ledger", str(deployment.ledger),
            "--workers", "4", *extra, *(() if "--edge-keys" in extra else ("--unattested",)),
        ]  # fmt: skip
        self._log = open(self.log, "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 90
        while b"listening on" not in self.log.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the key holder did not start:\n{self.log.read_text()}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return self.process.returncode
