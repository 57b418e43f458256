"""A throwaway PgBouncer in transaction pooling mode in front of a throwaway PostgreSQL: the
pooler a managed PostgreSQL (Supabase's Supavisor, or PgBouncer) puts between the app and
the server. Debian's `pgbouncer`; as root it runs as the `postgres` user, like PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from testkit.pg_server import PostgresServer, free_port, stop_process

PGBOUNCER = Path(os.environ.get("PGBOUNCER", "/usr/sbin/pgbouncer"))


class PgBouncer:
    def __init__(self, server: PostgresServer, pool_size: int = 20) -> None:
        if not PGBOUNCER.exists():
            raise RuntimeError(f"{PGBOUNCER} not found: install Debian's pgbouncer package or set PGBOUNCER")
        self.server = server
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="coach-cache-pgbouncer-"))
        (self.root / "userlist.txt").write_text('"postgres" ""\n')
        (self.root / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={server.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.root / 'userlist.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 1000\n"
            f"logfile = {self.root / 'pgbouncer.log'}\n"
            # psycopg and libpq send these at connect; PgBouncer refuses unknown ones.
            "ignore_startup_parameters = extra_float_digits,options\n"
        )
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> PgBouncer:
        command = [str(PGBOUNCER), str(self.root / "pgbouncer.ini")]
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            for path in self.root.iterdir():
                shutil.chown(path, "postgres", "postgres")
            command = ["runuser", "-u", "postgres", "--", *command]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.root)
        deadline = time.monotonic() + 15
        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres").close()
                return self
            except psycopg.OperationalError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    log = (self.root / "pgbouncer.log").read_text() if (self.root / "pgbouncer.log").exists() else ""
                    raise RuntimeError(f"PgBouncer did not start: {log[-2000:]}") from None
                time.sleep(0.05)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        stop_process(self._process)
        shutil.rmtree(self.root, ignore_errors=True)
