"""A throwaway PostgreSQL server for the tests: `initdb` into a temporary folder, `pg_ctl
start` on a free port bound to 127.0.0.1 only (its unix socket in that folder too), a login
role with a password (so URLs have the `user:pass@` form a team's server has), one fresh
database per test, `pg_ctl stop` and the folder removed at the end.

Root may not run `initdb`, so as root the server runs as the `postgres` user (`runuser`);
as anyone else, as that user. `fsync=off`: a test server's data need not survive a power cut,
and the shared CPUs are spared the flushes.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

USER, PASSWORD = "fleet", "s3cret-pw"


def binaries() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian's layout, or pg_ctl on PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


class PgServer:
    def __init__(self, bin_dir: Path, port: int):
        self.bin, self.port = bin_dir, port
        self.root = Path(tempfile.mkdtemp(prefix="fleetlm-pg-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        cmd = [*(["runuser", "-u", "postgres", "--"] if self.as_postgres else []), *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120, **kw)

    def start(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text("unused\n")  # the superuser's, never used: only the socket trusts it
        if self.as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--no-sync",
                  "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o",
                  f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                  "-c full_page_writes=off", "start")
        self.sql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")

    def sql(self, statement: str, database: str = "postgres") -> str:
        """One statement as the superuser, over the unix socket (psql)."""
        return self._run(str(self.bin / "psql"), "-h", str(self.root), "-p", str(self.port), "-U", "postgres",
                         "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", statement).stdout.strip()

    def version(self) -> str:
        return self.sql("SHOW server_version")

    def new_database(self) -> str:
        """A fresh, empty database owned by the login role; its URL."""
        name = f"t_{secrets.token_hex(6)}"
        self.sql(f"CREATE DATABASE {name} OWNER {USER}")
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
