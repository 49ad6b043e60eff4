"""The database goes away while serving, or is not there yet at startup (through a proxy the test cuts)."""

from __future__ import annotations

import asyncio
import re
import time

from robustness.conftest import Launcher
from robustness.dbproxy import proxy_for
from robustness.harness import Upstream, http_get

# The OpenAI client waits 600 s by default and LiteLLM 30 s or more; "fast" means a small fraction of that.
FAIL_FAST_SECONDS = 5.0
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
            # Several requests in a row: the first finds broken pooled connections, later ones an empty pool
            # that can't reconnect. Every one must be a quick 503 with the error envelope.
            for _ in range(4):
                started = time.monotonic()
                response = await http.get("/v1/vector_stores")
                elapsed = time.monotonic() - started
                assert response.status == 503, await response.text()
                error = (await response.json())["error"]
                assert error["type"] == "server_error" and "database" in error["message"].lower()
                assert elapsed < FAIL_FAST_SECONDS, f"503 took {elapsed:.1f}s"
            status, elapsed, _ = await _status_and_time(server.base_url, "/ready")
            assert status == 503 and elapsed < FAIL_FAST_SECONDS
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
        assert server.process is not None and server.process.poll() is None, "no restart: the same process recovered"


async def test_database_down_at_startup_retries_with_backoff_then_becomes_ready(
    fresh_dsn: str, upstream: Upstream, launch: Launcher
) -> None:
    with proxy_for(fresh_dsn, start=False) as proxy:
        server = launch(proxy.dsn(fresh_dsn), upstream.base_url, ready=False)
        # Unreachable for a few seconds: alive, not ready, saying why in its logs.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
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
