"""Calibration in running servers on the real database: real queries sampled, one server at a time, persisted
and shared, exported in /metrics and the status route; a target nothing reaches never fails a search."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from fakeembed import FakeEmbedder
from openai import AsyncOpenAI
from server.conftest import WRITE_KEY, RunningServer, auth, start_server, write_spec

from calibration.conftest import DIMS, ROWS, STORE_ID, calibration_row, fill_store, recall_spec_data
from vectorstore.calibration import measure, service

T = TypeVar("T")
POLL = 0.2


async def eventually(probe: Callable[[], Awaitable[T | None]], within: float = 60.0) -> T:
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {within}s"
        await asyncio.sleep(0.1)


async def search_many(server: RunningServer, count: int, filters: dict[str, Any] | None = None) -> list[int]:
    """`count` searches with distinct queries through the openai client; the number of hits of each."""
    client = AsyncOpenAI(base_url=server.url("/v1"), api_key=WRITE_KEY, max_retries=0, timeout=30)
    try:
        hits = []
        for i in range(count):
            kwargs: dict[str, Any] = {"filters": filters} if filters else {}
            page = await client.vector_stores.search(STORE_ID, query=f"question number {i}", **kwargs)
            hits.append(len(page.data))
        return hits
    finally:
        await client.close()


async def get_json(server: RunningServer, path: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(server.url(path), headers=auth()) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def metrics_text(server: RunningServer) -> str:
    async with aiohttp.ClientSession() as http, http.get(server.url("/metrics")) as response:
        return await response.text()


async def test_two_servers_calibrate_once_and_share_the_result(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path
) -> None:
    fake_embedder.dimensions = DIMS
    spec = write_spec(tmp_path / "stack.yaml", recall_spec_data(fake_embedder.base_url, target=0.9))
    first = await start_server(spec, fresh_dsn, calibration_poll_seconds=POLL, calibration_db_share=1.0)
    second = await start_server(spec, fresh_dsn, calibration_poll_seconds=POLL, calibration_db_share=1.0)
    try:
        status = await get_json(first, f"/v1/vector_stores/{STORE_ID}/recall")
        assert status["state"] == "pending" and status["target_recall"] == 0.9  # empty: nothing measured yet
        assert status["settings_in_use"] == {"all": {"ef_search": 100, "max_scan_tuples": 20000}}
        # Real queries first (kept in memory by the server that served them), then enough rows to calibrate.
        # Both get a full sample: a server with one calibrates again after a calibration without (`traffic`).
        assert await search_many(first, measure.QUERIES) == [0] * measure.QUERIES
        assert await search_many(second, measure.QUERIES) == [0] * measure.QUERIES
        await fill_store(fresh_dsn)
        await eventually(lambda: calibration_row(fresh_dsn))
        # Both servers poll every 0.2 s: give them many polls to run it again if they would.
        await eventually(lambda: _idle(first, second))
        await asyncio.sleep(15 * POLL)
        row = await calibration_row(fresh_dsn)
        assert row is not None and row["runs"] == 1, row
        for server in (first, second):
            await eventually(lambda s=server: _loaded(s))  # type: ignore[misc]
            status = await get_json(server, f"/v1/vector_stores/{STORE_ID}/recall")
            assert status["state"] == "measured" and status["runs"] == 1
            unfiltered = next(group for group in status["groups"] if group["filtered"] == "false")
            low, high = unfiltered["confidence_interval"]
            assert low <= unfiltered["recall"] <= high and unfiltered["queries"] == measure.QUERIES
            assert unfiltered["reached"] and status["settings_in_use"]["false"] == unfiltered["settings"]
            assert status["db_seconds"] > 0 and status["duration_seconds"] >= status["db_seconds"]
            exposed = await metrics_text(server)
            assert f'vectorstore_search_recall_estimate{{filtered="false",store="{STORE_ID}"}}' in exposed
            assert (
                f'vectorstore_search_recall_sample_size{{filtered="false",store="{STORE_ID}"}} {float(measure.QUERIES)}'
                in exposed
            )
            assert f'vectorstore_search_recall_target_reached{{store="{STORE_ID}"}} 1.0' in exposed
            assert "vectorstore_calibration_age_seconds" in exposed and "vectorstore_calibration_db_seconds" in exposed
        assert status["sample_source"] == "traffic"
        # Searches run with the chosen settings, filtered ones too.
        assert await search_many(second, 3) == [10] * 3
        assert await search_many(second, 3, {"type": "eq", "key": "hundred", "value": "h7"}) == [10] * 3
        # Growth past the fraction makes it due again: measured once more, by one of them.
        await fill_store(fresh_dsn, ROWS // 2, start=ROWS)
        await eventually(lambda: _runs(fresh_dsn, 2))
    finally:
        await second.stop()
        await first.stop()


async def _idle(*servers: RunningServer) -> bool:
    return all(not server.app[service.CALIBRATIONS].running for server in servers)


async def _loaded(server: RunningServer) -> bool:
    return STORE_ID in server.app[service.CALIBRATIONS].by_store


async def _runs(dsn: str, runs: int) -> bool:
    row = await calibration_row(dsn)
    return row is not None and row["runs"] >= runs


async def test_an_unreachable_target_is_reported_and_search_still_works(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path
) -> None:
    """ef_search 10 is written (it wins): target 1.0 can't be met with it, on hard (random) queries."""
    fake_embedder.dimensions = DIMS
    data = recall_spec_data(fake_embedder.base_url, target=1.0, index={"ef_search": 10})
    server = await start_server(
        write_spec(tmp_path / "stack.yaml", data), fresh_dsn, calibration_poll_seconds=POLL, calibration_db_share=1.0
    )
    try:
        await search_many(server, measure.QUERIES)
        await fill_store(fresh_dsn)
        await eventually(lambda: _loaded(server))
        status = await get_json(server, f"/v1/vector_stores/{STORE_ID}/recall")
        unfiltered = next(group for group in status["groups"] if group["filtered"] == "false")
        assert not status["reached"] and not unfiltered["reached"] and unfiltered["recall"] < 1.0
        assert unfiltered["settings"] == {"ef_search": 10, "max_scan_tuples": 20000}
        assert f'vectorstore_search_recall_target_reached{{store="{STORE_ID}"}} 0.0' in await metrics_text(server)
        assert await search_many(server, 5) == [10] * 5
    finally:
        await server.stop()


def test_when_a_store_is_due() -> None:
    """Every reason to measure again, and none when nothing changed."""
    from vectorstore.calibration import plans
    from vectorstore.storage import stores

    record = stores.StoreRecord(
        id=STORE_ID,
        seq=1,
        name="docs",
        description=None,
        metadata={},
        declared=True,
        model="m",
        dimensions=DIMS,
        distance="cosine",
        vector_type="vector",
        hnsw_m=16,
        hnsw_ef_construction=64,
        ef_search=100,
        table_name="vs_a",
        expires_after=None,
        created_at=0,
        last_active_at=0,
        language="english",
        text_search="ready",
        analyzed_rows=10000.0,
        text_avg_length=0.0,
        text_min_freq=0.0,
        quantization="none",
    )
    found = plans.Calibration(
        store_id=STORE_ID,
        table_name="vs_a",
        target=0.95,
        declared_ef_search=None,
        rows_at=10000.0,
        index_node=7,
        groups={},
        sample_source="traffic",
        duration_seconds=1.0,
        db_seconds=0.5,
        calibrated_at=1000.0,
    )

    def due(**changes: Any) -> str | None:
        now = changes.pop("now", 1000.0)
        real = changes.pop("real_queries", 0)
        target = changes.pop("target", 0.95)
        node = changes.pop("node", 7)
        changed = dataclasses.replace(record, **changes)
        return service.due(found, changed, target, None, node, interval=3600.0, now=now, real_queries=real)

    assert due() is None
    assert service.due(None, record, 0.95, None, 7, interval=3600.0, now=0.0) == "first"
    assert due(table_name="vs_b") == "table"  # the store's rows moved to a new table (a model change)
    assert due(target=0.98) == "target"
    assert due(analyzed_rows=12500.0) == "rows" and due(analyzed_rows=7500.0) == "rows"
    assert due(analyzed_rows=11000.0) is None
    assert due(node=8) == "index"
    assert due(now=1000.0 + 3600.0) == "schedule"
    perturbed = dataclasses.replace(found, sample_source="perturbed")
    assert (
        service.due(perturbed, record, 0.95, None, 7, interval=3600.0, now=1000.0, real_queries=measure.QUERIES)
        == "traffic"
    )
    assert service.due(perturbed, record, 0.95, None, 7, interval=3600.0, now=1000.0, real_queries=10) is None


def test_recent_queries_are_bounded() -> None:
    """Per store (the newest kept) and in stores (the least recently searched forgotten)."""
    from vectorstore.calibration.samples import QuerySamples

    samples = QuerySamples(per_store=2, max_stores=2)
    for i in range(3):
        samples.record("a", [float(i), 1.0])
    assert samples.queries("a") == [[1.0, 1.0], [2.0, 1.0]]
    samples.record("b", [0.5, 0.5])
    samples.record("a", [3.0, 1.0])  # a is now the most recent store
    samples.record("c", [0.25, 0.25])
    assert samples.queries("b") == [] and samples.queries("a") == [[2.0, 1.0], [3.0, 1.0]]
    assert samples.filters("a") == []
