"""A throwaway PostgreSQL cluster for end-to-end tests and benchmarks.

initdb into a fresh directory, a free port, pg_cron preloaded, torn down afterwards. When
run as root the server runs as the `postgres` OS user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A running PostgreSQL server; use as a context manager."""

    def __init__(self, settings: dict[str, str] | None = None, dbname: str = "fraud"):
        self.port = free_port()
        self.dbname = dbname
        self.root = Path(tempfile.mkdtemp(prefix="pgfraud-"))
        self.data = self.root / "data"
        self.settings = {
            "shared_preload_libraries": "'pg_cron'",
            "cron.database_name": f"'{dbname}'",
            "max_connections": "100",
            "fsync": "on",
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "log_min_messages": "warning",
        } | (settings or {})
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = list(args)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True)

    def start(self) -> "Cluster":
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--locale=C.UTF-8")
        with open(self.data / "postgresql.conf", "a") as f:
            for k, v in self.settings.items():
                f.write(f"{k} = {v}\n")
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.data / "postgresql.conf", pw.pw_uid, pw.pw_gid)
        self.pg_ctl("start", "-w", "-t", "60", "-l", str(self.root / "server.log"), "-o", f"-p {self.port}")
        with self.connect("postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{self.dbname}"')
        return self

    def pg_ctl(self, *args: str) -> None:
        r = self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args, check=False)
        if r.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {r.stderr}\n{log[-3000:]}")

    def restart(self) -> None:
        self.pg_ctl("restart", "-w", "-m", "fast", "-l", str(self.root / "server.log"), "-o", f"-p {self.port}")

    def stop(self) -> None:
        if self.data.exists():
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "stop", "-m", "immediate", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={self.dbname}"

    def url(self, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{self.dbname}"

    def connect(self, dbname: str | None = None, autocommit: bool = False, user: str = "postgres") -> psycopg.Connection:
        deadline = time.time() + 30
        while True:
            try:
                return psycopg.connect(
                    host="127.0.0.1", port=self.port, user=user, dbname=dbname or self.dbname, autocommit=autocommit
                )
            except psycopg.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
