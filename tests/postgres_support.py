"""A throwaway PostgreSQL server for the store tests (not a test module).

One server per test session: ``initdb`` into a temporary directory, started
with ``pg_ctl`` on a Unix socket in that directory (no TCP port), with the
settings a store's erasure needs (``wal_recycle = off``), stopped and deleted
at the end. initdb refuses to run as root, so as root the server runs as the
unprivileged user ``nobody``; root still reads its data directory, which the
erasure tests search. Each store gets a schema of its own.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

SERVER_SETTINGS = {
    "listen_addresses": "''",
    "wal_recycle": "off",  # what the store's erasure needs
    "fsync": "off",  # a test server: durability is not under test here
    "synchronous_commit": "off",
    "shared_buffers": "'16MB'",
    "max_connections": "40",
    "min_wal_size": "'32MB'",
}


def find_binaries() -> Path | None:
    """The directory holding initdb and pg_ctl (the newest Debian install, else PATH), or None."""
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    for candidate in reversed(installed):
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    return None


class PostgresServer:
    """A running throwaway server; :meth:`conninfo` names a fresh schema in it."""

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.root = Path(tempfile.mkdtemp(prefix="fpmatch-pg-"))
        self.data = self.root / "data"
        self._counter = itertools.count()
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
            self._as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            for name, value in {**SERVER_SETTINGS, "unix_socket_directories": f"'{self.root}'"}.items():
                conf.write(f"{name} = {value}\n")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")

    def _run(self, tool: str, *args: str) -> None:
        # The server is not ours to instrument: under make sanitize the runtimes preloaded into the
        # interpreter would be preloaded into initdb and postgres too.
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
        result = subprocess.run(
            [str(self.binaries / tool), *args], cwd=self.root, capture_output=True, text=True, env=env, **self._as
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {(result.stderr or result.stdout).strip()}")

    @property
    def admin(self) -> str:
        return f"host={self.root} user=postgres dbname=postgres"

    def conninfo(self) -> str:
        """A connection string whose search path is a new, empty schema."""
        import psycopg

        schema = f"store_{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return f"{self.admin} options=-csearch_path={schema}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def unavailable_reason() -> str | None:
    """Why no throwaway server can be started here, in one line; None if one can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'fpmatch[cluster]')"
    if find_binaries() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found: install the postgresql package"
    return None


def grant_and_append(conninfo: str, directory: str, worker: int, count: int, start: Any) -> None:
    """One of several processes writing to one store at once: ``count`` consent grants (each a
    consent row, a census update and an audit entry) and ``count`` further audit appends."""
    from fpmatch import MatchingService, PinVerifier
    from fpmatch.audit import AuditEvent

    import service_support

    service = MatchingService.open(
        directory, service_support.SERVICE_KEY, database=conninfo, alternative=PinVerifier(cost=2**10), purge_on_open=False
    )
    try:
        start.wait()  # every process begins at once
        for i in range(count):
            service_support.grant(service, f"w{worker}-{i}")
            service._store.audit("2026-03-01T09:00:00.000000+00:00", AuditEvent.IDENTIFY, outcome="no_match", detail={"k": i})
    finally:
        service.close()
