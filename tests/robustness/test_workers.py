"""`vectorstore serve --workers 2`: two processes on one port, metrics summed over them, supervised together."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from robustness.harness import KEYS, ServerProcess, Upstream, write_spec


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid and b"spawn_main" in cmdline:
                found.append(int(entry))
    return sorted(found)


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@pytest.fixture
def workers(fresh_dsn: str, upstream: Upstream, tmp_path: Path) -> Iterator[ServerProcess]:
    spec = write_spec(tmp_path / "spec.yaml", upstream.base_url)
    server = ServerProcess(spec, fresh_dsn, tmp_path / "server.log", args=("--workers", "2")).start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop(grace=20.0)


async def _metric(base_url: str, pattern: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/metrics") as response:
        text = await response.text()
    match = re.search(pattern + r" ([0-9.e+]+)", text)
    return float(match.group(1)) if match else 0.0


async def test_two_workers_share_the_port_and_their_metrics(workers: ServerProcess) -> None:
    assert workers.process is not None
    children = _children(workers.process.pid)
    assert len(children) == 2, children
    before = {pid: _cpu_ticks(pid) for pid in children}
    requests = 200
    # A new connection per request: the kernel spreads connections (not requests) over the workers.
    connector = aiohttp.TCPConnector(force_close=True)
    headers = {"Authorization": f"Bearer {KEYS['reader']}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        for _ in range(requests):
            async with http.get(f"{workers.base_url}/v1/vector_stores") as response:
                assert response.status == 200
    assert all(_cpu_ticks(pid) > before[pid] for pid in children), "both workers served requests"
    # Whichever worker answers the scrape reports the requests of both.
    series = r'vectorstore_http_requests_total\{method="GET",route="/v1/vector_stores",status="200"\}'
    for _ in range(4):
        assert await _metric(workers.base_url, series) == requests
    assert "with 2 worker processes" in workers.logs()
    # The per-process gauges (pool, readiness) are every worker's, each with its `worker` label, whichever
    # worker answers (a new connection per scrape, so both do): before, they were the answering worker's alone,
    # and a saturated pool in the other one went unseen by VectorstorePoolSaturated. Another worker's values
    # are as of its last publication, up to WORKER_PUBLISH_SECONDS old by design: a worker that published just
    # before its startup finished shows `ready 0` until its next one (seen once in CI, on a loaded machine).
    deadline = time.monotonic() + 15
    while True:
        fresh = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=fresh) as http, http.get(f"{workers.base_url}/metrics") as response:
            text = await response.text()
        if all(f'vectorstore_ready{{worker="{w}"}} 1.0' in text for w in ("0", "1")) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    for _ in range(6):
        fresh = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=fresh) as http, http.get(f"{workers.base_url}/metrics") as response:
            text = await response.text()
        for worker in ("0", "1"):
            for name in ("size", "available", "in_use", "waiting", "max"):
                assert re.search(rf'^vectorstore_db_pool_{name}\{{worker="{worker}"\}} [0-9.]+$', text, re.M), name
            assert f'vectorstore_ready{{worker="{worker}"}} 1.0' in text
        assert not re.search(r"^vectorstore_(db_pool_in_use|ready) ", text, re.M), "no unlabelled copy"
        # The shared gauges (one table) stay one series.
        assert len(re.findall(r'^vectorstore_ingest_queue_depth\{state="ready"\}', text, re.M)) == 1


def test_a_worker_that_dies_takes_the_others_down(workers: ServerProcess) -> None:
    assert workers.process is not None
    children = _children(workers.process.pid)
    os.kill(children[0], signal.SIGKILL)
    code = workers.process.wait(40)
    assert code == 1
    assert "worker 0 exited with -9; stopping the others" in workers.logs()
    # The parent returns only after its other worker has stopped.
    assert not any(os.path.exists(f"/proc/{pid}") for pid in children[1:])


def test_sigterm_stops_every_worker_gracefully(workers: ServerProcess) -> None:
    assert workers.process is not None
    children = _children(workers.process.pid)
    workers.signal(signal.SIGTERM)
    code = workers.process.wait(40)
    assert code == 0
    assert not any(os.path.exists(f"/proc/{pid}") for pid in children)


async def test_ready_waits_for_every_worker(fresh_dsn: str, upstream: Upstream, tmp_path: Path) -> None:
    """Whichever worker answers /ready, it says ready only once every worker has marked itself ready: the
    kernel gives connections to all of them, and one still starting would answer the API with 503."""
    from server.conftest import start_server

    from config import load_spec
    from vectorstore import workers as workers_module

    ready_dir = tmp_path / "ready"
    ready_dir.mkdir()
    spec = load_spec(write_spec(tmp_path / "spec.yaml", upstream.base_url))
    server = await start_server(spec, fresh_dsn, workers_ready_dir=ready_dir, worker_count=2, worker_index=1)
    try:
        async with aiohttp.ClientSession() as http:
            for marked, expected in (((), 503), ((1,), 503), ((1, 0), 200)):
                for index in marked:
                    workers_module.mark_ready(ready_dir, index)
                async with http.get(server.url("/ready")) as response:
                    body = await response.json()
                    assert response.status == expected, body
                if expected == 503:
                    assert body["error"]["message"] == f"Not ready: {len(marked)} of 2 worker processes are ready."
    finally:
        await server.stop()
