"""An online migration with searches on a lagging streaming standby: no search reads a generation the standby
has not replayed (the swap and the new table reach the standby after the primary), none fails, none comes back
empty. The read-your-writes position is taken after the registry row is read, so it covers the swap."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from fakeembed import FakeEmbedder
from migration.conftest import (
    NEW_DIMS,
    NEW_MODEL,
    NEW_MODEL_STORE,
    SearchLoad,
    add_rows,
    migration_spec,
    openai_client,
    record_of,
    row_text,
    wait_phase,
)
from server.conftest import write_spec

from config import Spec
from replicas.conftest import Databases, start_reading_server
from vectorstore.migration import service


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "POLL_SECONDS", 0.2)


def _spec(path: Path, embed_url: str, *, new: bool) -> Spec:
    data = migration_spec(embed_url, store=NEW_MODEL_STORE if new else None)
    data["database"] = {"cluster": {"name": "pg", "instances": 2}, "read_replicas": True}
    return write_spec(path, data)


async def test_migration_with_searches_on_a_lagging_standby(
    dbs: Databases, fake_embedder: FakeEmbedder, tmp_path: Path
) -> None:
    fake_embedder.model_dimensions[NEW_MODEL] = NEW_DIMS
    old = _spec(tmp_path / "old.yaml", fake_embedder.base_url, new=False)
    server = await start_reading_server(old, dbs)
    try:
        async with aiohttp.ClientSession() as http:
            await add_rows(http, server.base_url, 0, 300)
    finally:
        await server.stop()
    # The standby replays 300 ms behind; searches wait up to the production 50 ms, then use the primary.
    dbs.pair.standby.set("recovery_min_apply_delay", "300ms")
    new = _spec(tmp_path / "new.yaml", fake_embedder.base_url, new=True)
    fake_embedder.delay_seconds = 0.02
    server = await start_reading_server(new, dbs, replica_wait_seconds=0.05)
    client = openai_client(server.base_url)
    try:
        load = SearchLoad([client], [row_text(i) for i in range(0, 300, 17)])
        searching = asyncio.create_task(load.run())
        done = await wait_phase(dbs.primary, "done", "paused")
        await asyncio.sleep(1.0)  # past the standby's delay: searches now run on the new generation there
        load.stop()
        await searching
        assert done.phase == "done", done.last_error
        assert not load.errors, load.errors[:5]
        assert not load.empty, load.empty[:5]
        record = await record_of(dbs.primary)
        assert record.dimensions == NEW_DIMS
        page = await client.vector_stores.search(record.id, query=row_text(34), max_num_results=1)
        assert page.data[0].content[0].text == row_text(34)
        async with aiohttp.ClientSession() as http, http.get(server.url("/metrics")) as response:
            scraped = await response.text()
        served = [line for line in scraped.splitlines() if line.startswith("vectorstore_replica_searches_total ")]
        assert served and float(served[0].split()[1]) > 0  # the standby did serve searches during it
    finally:
        dbs.pair.standby.set("recovery_min_apply_delay", "0")
        await client.close()
        await server.stop()
