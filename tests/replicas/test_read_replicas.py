"""Searches on a real streaming standby: where they run, read-your-writes under replay delay, and faults.

Everything runs against tests/pgcluster.py's primary + hot standby on 127.0.0.1, with the real `openai`
client against in-process servers (tests/server/conftest.py). The router's counters are read from the
process's Prometheus registry, which /metrics serves.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from fakeembed import FakeEmbedder
from server.conftest import WRITE_KEY, RunningServer, auth

from replicas.conftest import STORE_ID, Databases, openai_client, replica_spec, start_reading_server
from vectorstore.observability import metrics
from vectorstore.state import READS
from vectorstore.storage import replicas, tables

TABLE = tables.table_name(STORE_ID)


def served_by_replica() -> float:
    return metrics.REGISTRY.get_sample_value("vectorstore_replica_searches_total") or 0.0


def fallbacks(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("vectorstore_replica_fallbacks_total", {"reason": reason}) or 0.0


async def wait_replica_up(server: RunningServer, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not server.app[READS].up:
        assert time.monotonic() < deadline, f"the replica did not come back within {within}s"
        await asyncio.sleep(0.05)


async def search(http: aiohttp.ClientSession, server: RunningServer, query: str) -> tuple[int, list[str]]:
    """(status, file ids of the hits) of one search over plain HTTP."""
    async with http.post(
        server.url(f"/v1/vector_stores/{STORE_ID}/search"), json={"query": query}, headers=auth(WRITE_KEY)
    ) as response:
        if response.status != 200:
            return response.status, [await response.text()]
        return 200, [hit["file_id"] for hit in (await response.json())["data"]]


async def test_searches_run_on_the_standby(dbs: Databases, fake_embedder: FakeEmbedder, tmp_path: Path) -> None:
    spec = replica_spec(tmp_path / "stack.yaml", fake_embedder.base_url)
    writer = await start_reading_server(spec, dbs)
    client = openai_client(writer)
    try:
        done = await client.vector_stores.files.upload_and_poll(
            vector_store_id=STORE_ID, file=("stats.txt", b"Where do searches run?", "text/plain")
        )
        assert done.status == "completed"
    finally:
        await client.close()
        await writer.stop()  # its backends exit, flushing their statistics
    dbs.pair.wait_replayed()
    before = {side: dbs.table_scans(TABLE, on_standby=side) for side in (True, False)}

    searches = 30
    server = await start_reading_server(spec, dbs)
    replica_before, fallbacks_before = served_by_replica(), sum(map(fallbacks, ("lagging", "unavailable", "failed")))
    try:
        await wait_replica_up(server)
        async with aiohttp.ClientSession() as http:
            for _ in range(searches):
                assert await search(http, server, "Where do searches run?") == (200, [done.id])
            async with http.get(server.url("/metrics")) as response:
                exposed = await response.text()
        assert "vectorstore_replica_searches_total" in exposed and "vectorstore_replica_up 1.0" in exposed
    finally:
        await server.stop()
    assert served_by_replica() - replica_before == searches
    assert sum(map(fallbacks, ("lagging", "unavailable", "failed"))) == fallbacks_before

    # PostgreSQL's own count of scans of the store's table, on each server. Backends flush their counters
    # when they exit (the server is stopped), so poll briefly for the standby's to show.
    for _ in range(75):
        if dbs.table_scans(TABLE, on_standby=True) - before[True] >= searches:
            break
        await asyncio.sleep(0.2)
    assert dbs.table_scans(TABLE, on_standby=True) - before[True] >= searches
    assert dbs.table_scans(TABLE, on_standby=False) - before[False] == 0


async def test_read_your_writes_across_servers_with_replay_delay(
    dbs: Databases, fake_embedder: FakeEmbedder, tmp_path: Path
) -> None:
    """upload_and_poll through one server, search at once through another: never a miss, however late the
    standby applies commits. A direct look at the standby proves it had not applied them yet."""
    dbs.pair.standby.set("recovery_min_apply_delay", "1s")
    spec = replica_spec(tmp_path / "stack.yaml", fake_embedder.base_url)
    wait = 0.05  # the production default: a standby 1 s behind is passed over, not waited for
    first = await start_reading_server(spec, dbs, replica_wait_seconds=wait)
    second = await start_reading_server(spec, dbs, replica_wait_seconds=wait)
    clients = [openai_client(first), openai_client(second)]
    lagging_before = fallbacks("lagging")
    standby_was_behind = 0
    rounds = 8
    try:
        await wait_replica_up(first)
        await wait_replica_up(second)
        async with (
            aiohttp.ClientSession() as http,
            await psycopg.AsyncConnection.connect(dbs.standby, autocommit=True) as standby,
        ):
            for i in range(rounds):
                text = f"Round {i} token {uuid.uuid4().hex}"
                writer, reader = (clients[i % 2], (first, second)[(i + 1) % 2])
                done = await writer.vector_stores.files.upload_and_poll(
                    vector_store_id=STORE_ID, file=(f"r{i}.txt", text.encode(), "text/plain")
                )
                assert done.status == "completed"
                status, hits = await search(http, reader, text)
                cur = await standby.execute(f'SELECT count(*) FROM "{TABLE}" WHERE file_id = %s', [done.id])
                row = await cur.fetchone()
                standby_was_behind += row is not None and row[0] == 0
                assert status == 200 and hits[:1] == [done.id], f"round {i}: a miss ({hits})"
    finally:
        for client in clients:
            await client.close()
        await first.stop()
        await second.stop()
        dbs.pair.standby.set("recovery_min_apply_delay", "0")
    # The delay was real: a search on the standby at that moment would have missed the file...
    assert standby_was_behind >= rounds // 2, standby_was_behind
    # ...and the router knew it and ran those searches on the primary.
    assert fallbacks("lagging") - lagging_before >= standby_was_behind


async def test_standby_stopped_under_load_then_back(
    dbs: Databases, fake_embedder: FakeEmbedder, replica_server: RunningServer
) -> None:
    client = openai_client(replica_server)
    try:
        done = await client.vector_stores.files.upload_and_poll(
            vector_store_id=STORE_ID, file=("load.txt", b"Searches under a failing standby.", "text/plain")
        )
    finally:
        await client.close()
    await wait_replica_up(replica_server)
    statuses: dict[int, int] = {}
    wrong: list[list[str]] = []
    stop = asyncio.Event()

    async def load(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            status, hits = await search(http, replica_server, "Searches under a failing standby.")
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200 and hits[:1] != [done.id]:
                wrong.append(hits)

    failed_before = fallbacks("failed") + fallbacks("unavailable")
    async with aiohttp.ClientSession() as http:
        clients = [asyncio.create_task(load(http)) for _ in range(8)]
        await asyncio.sleep(1.0)
        # `immediate`: the standby's backends die mid-query, as in a crash.
        await asyncio.to_thread(dbs.pair.standby.stop, "immediate")
        at_stop = sum(statuses.values())
        await asyncio.sleep(2.0)
        down_served = sum(statuses.values()) - at_stop
        assert not replica_server.app[READS].up
        await asyncio.to_thread(dbs.pair.standby.start)
        await wait_replica_up(replica_server)
        replica_after_restart = served_by_replica()
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*clients)
    assert set(statuses) == {200}, statuses
    assert not wrong
    assert down_served > 0
    assert fallbacks("failed") + fallbacks("unavailable") > failed_before
    # Back on the standby once it answered again.
    assert served_by_replica() > replica_after_restart


async def test_unreachable_replica_costs_nothing_but_a_counter(
    dbs: Databases, fake_embedder: FakeEmbedder, tmp_path: Path
) -> None:
    """DATABASE_READ_URL pointing at nothing: the server is ready, every search is answered by the primary."""
    with psycopg.connect(dbs.primary) as conn:  # a port nothing listens on: the primary's, plus one free
        port = int(conn.info.port)
    nowhere = f"host=127.0.0.1 port={port + 1} user=postgres dbname=postgres connect_timeout=1"
    spec = replica_spec(tmp_path / "stack.yaml", fake_embedder.base_url)
    server = await start_reading_server(spec, dbs, read_dsn=nowhere)
    unavailable_before = fallbacks("unavailable")
    try:
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            for _ in range(5):
                status, _hits = await search(http, server, "anything")
                assert status == 200
            # No search waited for the replica pool: it was known to be down before they came.
            assert time.monotonic() - started < 5.0
    finally:
        await server.stop()
    assert fallbacks("unavailable") - unavailable_before == 5


async def test_primary_position_is_shared_by_concurrent_searches(dbs: Databases) -> None:
    """One query of the primary's WAL position serves every caller that asked before it was sent; a caller
    that asks afterwards gets a later one, which covers every commit it could have seen."""
    from psycopg_pool import AsyncConnectionPool

    async with AsyncConnectionPool(dbs.primary, min_size=1, max_size=2, open=False) as pool:
        await pool.open(wait=True)
        lsn = replicas.PrimaryLsn(pool)
        values = await asyncio.gather(*(lsn.read() for _ in range(50)))
        assert lsn.queries <= 2 and len(set(values)) <= 2

        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS lsn_probe (n int)")
            await conn.execute("INSERT INTO lsn_probe VALUES (1)")
            await conn.commit()
            cur = await conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
            row = await cur.fetchone()
            assert row is not None
            committed = int(row[0])
        assert await lsn.read() >= committed
        assert lsn.queries <= 3


@pytest.mark.parametrize("broken", ["cancel", "terminate"])
async def test_a_search_the_replica_breaks_is_answered_by_the_primary(
    dbs: Databases, replica_server: RunningServer, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica backend cancelled (as for a recovery conflict) or killed mid-query: the read runs again on
    the primary, and only a dead connection marks the replica down."""
    router = replica_server.app[READS]
    await wait_replica_up(replica_server)
    used: list[str] = []

    async def read(conn: psycopg.AsyncConnection[Any]) -> str:
        cur = await conn.execute("SELECT pg_is_in_recovery()")
        row = await cur.fetchone()
        assert row is not None
        used.append("replica" if row[0] else "primary")
        if row[0]:
            function = "pg_cancel_backend" if broken == "cancel" else "pg_terminate_backend"
            pid = conn.info.backend_pid

            async def interrupt() -> None:
                await asyncio.sleep(0.3)
                async with await psycopg.AsyncConnection.connect(dbs.standby, autocommit=True) as admin:
                    await admin.execute(f"SELECT {function}(%s)", [pid])

            interrupting = asyncio.create_task(interrupt())
            try:
                await conn.execute("SELECT pg_sleep(10)")
            finally:
                await interrupting
        return "ok"

    failed_before = fallbacks("failed")
    assert await router.run(read) == "ok"
    assert used == ["replica", "primary"]
    assert fallbacks("failed") - failed_before == 1
    marked_down = any("read replicas unavailable" in record.getMessage() for record in caplog.records)
    assert marked_down is (broken == "terminate")
    await wait_replica_up(replica_server)  # the probe finds it healthy again at once


async def test_serve_reads_the_replica_target_from_the_environment(
    dbs: Databases, fake_embedder: FakeEmbedder, tmp_path: Path
) -> None:
    """`vectorstore serve` with DATABASE_READ_URL holding only what differs from DATABASE_URL (the host and
    port, as the rendered `host=<cluster>-ro`): database and user come from the primary's settings."""
    from robustness.harness import KEYS, ServerProcess

    spec_path = tmp_path / "stack.yaml"
    replica_spec(spec_path, fake_embedder.base_url)
    standby_port = psycopg.conninfo.conninfo_to_dict(dbs.standby)["port"]
    server = ServerProcess(
        spec_path,
        dbs.primary,
        tmp_path / "server.log",
        env={"DATABASE_READ_URL": f"host=127.0.0.1 port={standby_port}"},
    ).start()
    try:
        await asyncio.to_thread(server.wait_ready)
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {KEYS['writer']}"}
            url = f"{server.base_url}/v1/vector_stores/{STORE_ID}/search"
            for _ in range(50):  # until the replica pool is up: searches are answered either way
                async with http.post(url, json={"query": "x"}, headers=headers) as response:
                    assert response.status == 200, await response.text()
                async with http.get(f"{server.base_url}/metrics") as response:
                    exposed = await response.text()
                if "vectorstore_replica_searches_total 1.0" in exposed:
                    break
                await asyncio.sleep(0.1)
            assert "vectorstore_replica_searches_total 1.0" in exposed
        assert "searches: read replicas (DATABASE_READ_URL)" in server.logs()
    finally:
        server.stop()
