"""The recall calibration runs its exact scans on the standby when read replicas are configured."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
from calibration.conftest import DIMS, STORE_ID, calibration_row, fill_store, recall_spec_data
from fakeembed import FakeEmbedder
from server.conftest import write_spec

from replicas.conftest import Databases, start_reading_server
from vectorstore.calibration import service
from vectorstore.storage import tables

TABLE = tables.table_name(STORE_ID)


def seq_scans(dbs: Databases, *, on_standby: bool) -> int:
    with psycopg.connect(dbs.standby if on_standby else dbs.primary, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(seq_scan, 0) FROM pg_stat_user_tables WHERE relname = %s", [TABLE]
        ).fetchone()
    return int(row[0]) if row is not None else 0


async def test_exact_scans_run_on_the_standby(dbs: Databases, fake_embedder: FakeEmbedder, tmp_path: Path) -> None:
    fake_embedder.dimensions = DIMS
    data = recall_spec_data(fake_embedder.base_url, target=0.9)
    data["database"] = {"cluster": {"name": "pg", "instances": 2}, "read_replicas": True}
    spec = write_spec(tmp_path / "stack.yaml", data)
    server = await start_reading_server(spec, dbs, calibration_poll_seconds=0.3, calibration_db_share=1.0)
    try:
        standby_before = seq_scans(dbs, on_standby=True)
        await fill_store(dbs.primary)
        dbs.pair.wait_replayed()
        await asyncio.sleep(1.0)  # the writer's (and its ANALYZE's) own scans on the primary are counted by now
        primary_before = seq_scans(dbs, on_standby=False)
        deadline = time.monotonic() + 120
        while await calibration_row(dbs.primary) is None:
            assert time.monotonic() < deadline, "no calibration within 120 s"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # statistics are published at most once a second
        # The exact scans (50 queries, and the filtered ones' counting) ran on the standby, none on the primary.
        assert seq_scans(dbs, on_standby=True) - standby_before >= 50
        assert seq_scans(dbs, on_standby=False) == primary_before
        assert server.app[service.CALIBRATIONS].by_store[STORE_ID].groups
    finally:
        await server.stop()
