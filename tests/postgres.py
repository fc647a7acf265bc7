"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a temp dir, 127.0.0.1 on a free port.

Debian's server binaries (``postgresql-15``; ``.ci/run`` installs them when missing). As root, the server runs
as the ``postgres`` user (initdb refuses root). Each test gets its own database (``create_database``).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import free_port


def server_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: $TUNERAG_PG_BINDIR, PATH, or Debian's /usr/lib/postgresql/N/bin."""
    explicit = os.environ.get("TUNERAG_PG_BINDIR")
    candidates = [explicit] if explicit else []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def require_postgres() -> Path:
    """The server binaries, or a one-line skip (a failure in CI, where .ci/run installs them)."""
    bindir = server_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries missing in CI: .ci/run should have installed postgresql")
        pytest.skip("no PostgreSQL server binaries (initdb/pg_ctl): `apt-get install postgresql` to run the Postgres tests")
    return bindir


@dataclass
class PostgresServer:
    bindir: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _as_owner(self, *args: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "socket").mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.root / "socket", "postgres")
        subprocess.run(self._as_owner(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                                      "-A", "trust", "--no-sync", "-E", "UTF8"), check=True, capture_output=True)
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root / 'socket'} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        subprocess.run(self._as_owner(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options,
                                      "-l", str(self.root / "server.log"), "-w", "-t", "60", "start"),
                       check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run(self._as_owner(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                                      "stop"), capture_output=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        subprocess.run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                        name], check=True, capture_output=True)
        return self.url(name)

    def psql(self, database: str, sql: str) -> str:
        out = subprocess.run([str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                              "-d", database, "-At", "-c", sql], check=True, capture_output=True, text=True)
        return out.stdout.strip()


def start_server(root: Path) -> PostgresServer:
    server = PostgresServer(require_postgres(), root, free_port())
    server.start()
    return server
