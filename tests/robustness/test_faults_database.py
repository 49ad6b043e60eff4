"""The database goes away while serving, or is not there yet at startup (through a proxy the test cuts)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from robustness.conftest import Launcher
from robustness.dbproxy import proxy_for
from robustness.harness import Upstream, http_get
from vectorstore.storage.database import DatabaseUnavailable, GuardedPool, autocommit

# The OpenAI client waits 600 s by default and LiteLLM 30 s or more; "fast" means a small fraction of that.
FAIL_FAST_SECONDS = 5.0
# Once the server knows the database is gone, a 503 comes at once: well under the pool's 3 s wait.
KNOWN_DOWN_SECONDS = 1.0
RECOVER_SECONDS = 15.0


async def _status_and_time(server_url: str, path: str) -> tuple[int, float, str]:
    started = time.monotonic()
    status, body = await asyncio.to_thread(http_get, server_url + path, FAIL_FAST_SECONDS * 3)
    return status, time.monotonic() - started, body


async def test_database_down_while_serving_fails_fast_then_recovers(
    fresh_dsn: str, upstream: Upstream, launch: Launcher
) -> None:
    with proxy_for(fresh_dsn) as proxy:
        server = launch(proxy.dsn(fresh_dsn), upstream.base_url)
        async with server.session() as http:
            response = await http.get("/v1/vector_stores")
            assert response.status == 200
            before = (await response.json())["data"]

            proxy.cut()
            # Several requests in a row: the first finds a broken pooled connection, which tells the server the
            # database is gone; every later one must get its 503 at once, not after the pool's whole wait.
            for attempt in range(6):
                started = time.monotonic()
                response = await http.get("/v1/vector_stores")
                elapsed = time.monotonic() - started
                assert response.status == 503, await response.text()
                error = (await response.json())["error"]
                assert error["type"] == "server_error" and "database" in error["message"].lower()
                assert elapsed < (FAIL_FAST_SECONDS if attempt == 0 else KNOWN_DOWN_SECONDS), f"503 took {elapsed:.1f}s"
            # Concurrent requests too (searches, store reads), all at once.
            started = time.monotonic()
            responses = await asyncio.gather(*(http.get("/v1/vector_stores") for _ in range(20)))
            assert {response.status for response in responses} == {503}
            assert time.monotonic() - started < KNOWN_DOWN_SECONDS * 2
            status, elapsed, _ = await _status_and_time(server.base_url, "/ready")
            assert status == 503 and elapsed < KNOWN_DOWN_SECONDS
            logs = server.logs()
            assert "database unavailable" in logs and "requests get 503 at once" in logs, logs[-2000:]
            status, _, _ = await _status_and_time(server.base_url, "/health")
            assert status == 200, "/health is about the process, not the database"

            proxy.restore()
            deadline = time.monotonic() + RECOVER_SECONDS
            while True:
                response = await http.get("/v1/vector_stores")
                if response.status == 200:
                    break
                assert time.monotonic() < deadline, f"no recovery within {RECOVER_SECONDS}s: {await response.text()}"
                await asyncio.sleep(0.2)
            assert (await response.json())["data"] == before
            status, _, _ = await _status_and_time(server.base_url, "/ready")
            assert status == 200
            assert "database reachable again" in server.logs()
        assert server.process is not None and server.process.poll() is None, "no restart: the same process recovered"


async def test_database_down_at_startup_retries_with_backoff_then_becomes_ready(
    fresh_dsn: str, upstream: Upstream, launch: Launcher
) -> None:
    with proxy_for(fresh_dsn, start=False) as proxy:
        server = launch(proxy.dsn(fresh_dsn), upstream.base_url, ready=False)
        # Unreachable for a few seconds: alive, not ready, saying why in its logs. At least 3 s, and until two
        # retries were announced (a loaded machine starts the process slowly; the backoff is what is checked).
        started = time.monotonic()
        while time.monotonic() < started + 3.0 or (
            len(re.findall(r"retrying in", server.logs())) < 2 and time.monotonic() < started + 20.0
        ):
            assert http_get(server.base_url + "/ready")[0] in (0, 503)
            await asyncio.sleep(0.2)
        assert server.process is not None and server.process.poll() is None
        assert http_get(server.base_url + "/health")[0] == 200
        logs = server.logs()
        assert "not reachable" in logs and "Connection refused" in logs, logs
        # Backoff: the announced delays grow.
        delays = [float(delay) for delay in re.findall(r"retrying in ([0-9.]+)s", logs)]
        assert len(delays) >= 2 and delays == sorted(delays) and delays[-1] > delays[0], logs

        proxy.restore()
        started = time.monotonic()
        server.wait_ready(timeout=20.0)
        assert time.monotonic() - started < 15.0
        async with server.session() as http:
            response = await http.get("/v1/vector_stores")
            assert response.status == 200
            assert len((await response.json())["data"]) == 2, "reconciled the declared stores once it could"


async def test_a_busy_pool_is_not_taken_for_a_dead_database(fresh_dsn: str) -> None:
    """All connections lent out: a waiting request times out as before (503 after the pool's wait), and the
    probe that timeout starts finds the database up, so nothing is marked down."""
    pool = GuardedPool(fresh_dsn, min_size=1, max_size=1, timeout=0.3, open=False)
    await pool.open(wait=True)
    try:
        async with pool.connection():
            with pytest.raises(PoolTimeout) as caught:
                await pool.getconn()
            assert not isinstance(caught.value, DatabaseUnavailable)
            await asyncio.sleep(0.5)  # the probe's time to connect
            assert pool.down_reason is None
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
    finally:
        await pool.close()


async def test_requests_waiting_for_a_connection_are_released_when_the_database_goes(fresh_dsn: str) -> None:
    with proxy_for(fresh_dsn) as proxy:
        pool = GuardedPool(proxy.dsn(fresh_dsn), min_size=1, max_size=1, timeout=10.0, open=False)
        await pool.open(wait=True)
        try:
            held = await pool.getconn()
            waiter = asyncio.create_task(pool.getconn())
            await asyncio.sleep(0.1)
            proxy.cut()
            with contextlib.suppress(psycopg.OperationalError):
                await held.execute("SELECT 1")
            started = time.monotonic()
            await pool.putconn(held)  # broken: the pool suspects an outage, its probe confirms it
            with pytest.raises(DatabaseUnavailable):
                await waiter
            assert time.monotonic() - started < KNOWN_DOWN_SECONDS, "released at once, not after 10 s"
            assert pool.down_reason is not None and "broke" in pool.down_reason
            with pytest.raises(DatabaseUnavailable):
                await pool.getconn()

            proxy.restore()
            deadline = time.monotonic() + RECOVER_SECONDS
            while pool.down_reason is not None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
        finally:
            await pool.close()


async def test_a_statement_in_autocommit_keeps_its_own_error_when_the_connection_goes(fresh_dsn: str) -> None:
    """`autocommit(conn)` makes a pooled connection transactional again after the block. When the database goes
    mid-statement, the statement's own OperationalError is what comes out (the edge answers it 503), not
    psycopg's "the connection is lost" from switching a broken connection back. Every search statement runs in
    that block."""
    with proxy_for(fresh_dsn) as proxy:
        conn = await psycopg.AsyncConnection.connect(proxy.dsn(fresh_dsn))  # transactional, as the pool's are
        try:

            async def cut_soon() -> None:
                await asyncio.sleep(0.3)
                proxy.cut()

            cutting = asyncio.create_task(cut_soon())
            with pytest.raises(psycopg.OperationalError) as caught:
                async with autocommit(conn):
                    await conn.execute("SELECT pg_sleep(5)")
            await cutting
            assert "the connection is lost" not in str(caught.value)
            assert not isinstance(caught.value.__context__, psycopg.Error)
            assert conn.broken
        finally:
            await conn.close()


async def test_a_cancelled_statement_in_autocommit_is_cancelled(fresh_dsn: str) -> None:
    """A search cancelled mid-statement (its client went away: the access log's 499) ends with CancelledError,
    and its connection is idle and transactional again, ready for the next search."""
    conn = await psycopg.AsyncConnection.connect(fresh_dsn)
    try:

        async def statement() -> None:
            async with autocommit(conn):
                await conn.execute("SELECT pg_sleep(5)")

        task = asyncio.create_task(statement())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.autocommit is False
        await conn.execute("SELECT 1")
    finally:
        await conn.close()
