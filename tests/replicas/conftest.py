"""A real primary and a streaming hot standby (tests/pgcluster.py), and servers that search on the standby.

The pair is built once per module (about 3 s); each test gets its own database on it, created on the
primary and replayed by the standby like everything else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fakeembed import FakeEmbedder
from ingest.conftest import STORE_ID, ingest_spec
from openai import AsyncOpenAI
from pgcluster import StreamingPair
from pgdb import new_database, with_database
from server.conftest import WRITE_KEY, RunningServer, start_server, write_spec

from config import Spec


@dataclass
class Databases:
    pair: StreamingPair
    primary: str
    standby: str

    def table_scans(self, table: str, *, on_standby: bool) -> int:
        """seq_scan + idx_scan of `table` in PostgreSQL's cumulative statistics of one server."""
        with psycopg.connect(self.standby if on_standby else self.primary, autocommit=True) as conn:
            row = conn.execute(
                "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = %s",
                [table],
            ).fetchone()
        return int(row[0]) if row is not None else 0


@pytest.fixture(scope="module")
def pair() -> Iterator[StreamingPair]:
    streaming = StreamingPair.create()
    try:
        yield streaming
    finally:
        streaming.close()


@pytest.fixture
def dbs(pair: StreamingPair) -> Iterator[Databases]:
    pair.standby.set("recovery_min_apply_delay", "0")
    for dsn in new_database(pair.primary.dsn(), "rr"):
        name = str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])
        pair.wait_replayed()
        yield Databases(pair, dsn, with_database(pair.standby.dsn(), name))


def replica_spec(path: Path, embed_url: str, **server: Any) -> Spec:
    data = ingest_spec(embed_url, **server)
    data["database"] = {"cluster": {"name": "pg", "instances": 2}, "read_replicas": True}
    return write_spec(path, data)


async def start_reading_server(
    spec: Spec,
    dbs: Databases,
    *,
    read_dsn: str | None = None,
    replica_wait_seconds: float = 5.0,
    **settings_fields: Any,
) -> RunningServer:
    """A server reading from the standby. Tests of routing give the standby seconds to replay (on a loaded
    machine it can take longer than the production 50 ms, which would send a search to the primary and make
    them flaky); the read-your-writes test passes the production wait to see the fallback."""
    return await start_server(
        spec,
        dbs.primary,
        read_dsn=dbs.standby if read_dsn is None else read_dsn,
        replica_wait_seconds=replica_wait_seconds,
        **settings_fields,
    )


@pytest.fixture
async def replica_server(dbs: Databases, fake_embedder: FakeEmbedder, tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await start_reading_server(replica_spec(tmp_path / "stack.yaml", fake_embedder.base_url), dbs)
    try:
        yield running
    finally:
        await running.stop()


def openai_client(server: RunningServer) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.url("/v1"), api_key=WRITE_KEY, max_retries=0, timeout=30)


__all__ = ["STORE_ID", "Databases", "openai_client", "replica_spec", "start_reading_server"]
