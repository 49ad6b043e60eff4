"""A new embedding model on a store that holds data, online (issue 15's opening scenario).

Server A runs the old spec and keeps serving; server B starts on the same database with the new spec (a rolling
update): its reconcile records the migration instead of refusing, one of the two builds the new generation, and
both keep answering every search throughout, from the old generation with the old model until the swap.
Uploads, deletes, attribute updates and /embeddings rows made during the build all land in the new generation.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from fakeembed import FakeEmbedder
from server.conftest import auth, start_server, write_spec

from migration.conftest import (
    NEW_DIMS,
    NEW_MODEL,
    NEW_MODEL_STORE,
    STORE_ID,
    SearchLoad,
    add_rows,
    migration_of,
    migration_spec,
    openai_client,
    record_of,
    row_text,
    table_exists,
    upload,
    wait_phase,
)
from vectorstore.migration import service

ROWS = 600
OTHER_ID = "vs_other0001"


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "POLL_SECONDS", 0.2)


async def test_new_model_online_with_writes_and_two_servers(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="vectorstore")
    fake_embedder.model_dimensions[NEW_MODEL] = NEW_DIMS
    other = {"name": "other", "id": OTHER_ID}
    old_data = migration_spec(fake_embedder.base_url)
    old_data["stores"].append(other)
    old_spec = write_spec(tmp_path / "old.yaml", old_data)
    a = await start_server(old_spec, fresh_dsn)
    b = None
    client_a = openai_client(a.base_url)
    try:
        async with aiohttp.ClientSession() as http:
            kept = await upload(client_a, "kept.txt", "The lighthouse keeper polishes the brass lamp.", team="a")
            dropped = await upload(client_a, "dropped.txt", "A paragraph that will be deleted mid-migration.")
            retagged = await upload(client_a, "retagged.txt", "Attributes of this file change during it.", v="1")
            await add_rows(http, a.base_url, 0, ROWS)
            before = await client_a.vector_stores.retrieve(STORE_ID)
            old_record = await record_of(fresh_dsn)
            queries = [row_text(i) for i in range(0, ROWS, 37)] + ["lighthouse keeper brass lamp"]
            for query in queries:
                assert (await client_a.vector_stores.search(STORE_ID, query=query)).data, query

            # The new model is slow enough that the build takes seconds: the writes below happen during it.
            fake_embedder.delay_seconds = 0.05
            calls_before = len(fake_embedder.calls)
            # Paced by request count, not by the machine: ~80 sequential requests of 8 chunks at 50 ms each, a few
            # seconds against the ~1 s the writes below take. With the default 64 x 2 in flight the build took
            # ~0.3 s and, on a busy machine, sometimes finished before the writes did.
            new_data = migration_spec(
                fake_embedder.base_url,
                store={**NEW_MODEL_STORE, "migration": {"concurrency": 1}},
            )
            new_data["embedding"]["batch_size"] = 8
            new_data["stores"].append(other)
            new_spec = write_spec(tmp_path / "new.yaml", new_data)
            b = await start_server(new_spec, fresh_dsn)
            client_b = openai_client(b.base_url)
            load = SearchLoad([client_a, client_b], queries)
            async with load.running():
                building = await wait_phase(fresh_dsn, "building", "swapping", "done")
                assert building.phase == "building", "the build finished before the writes; slow the upstream down"
                during = await client_b.vector_stores.retrieve(STORE_ID)
                assert during.status == "in_progress"
                # Writes during the build, on both servers: upload, delete, attribute update, /embeddings rows.
                added = await upload(client_b, "added.txt", "Written while the store migrates: the harbour bell rings.")
                await client_a.vector_stores.files.delete(dropped, vector_store_id=STORE_ID)
                await client_b.vector_stores.files.update(retagged, vector_store_id=STORE_ID, attributes={"v": "2"})
                extra = await add_rows(http, a.base_url, ROWS, 50)
                # Another store is neither blocked nor touched: it takes writes and answers searches meanwhile.
                async with http.post(
                    f"{b.base_url}/v1/vector_stores/{OTHER_ID}/embeddings",
                    json={"content": "another store's row"},
                    headers=auth(),
                ) as response:
                    assert response.status == 200
                other_page = await client_b.vector_stores.search(OTHER_ID, query="another store's row")
                still = await migration_of(fresh_dsn)
                assert other_page.data and still is not None and still.phase in ("building", "swapping")

                done = await wait_phase(fresh_dsn, "done", "paused")
                assert done.phase == "done", done.last_error
                await asyncio.sleep(0.5)  # searches keep running across the swap
            assert not load.errors, load.errors[:5]
            assert not load.empty, load.empty[:5]
            assert load.done > 50

            record = await record_of(fresh_dsn)
            assert (record.id, record.model, record.dimensions) == (STORE_ID, NEW_MODEL, NEW_DIMS)
            assert record.table_name != old_record.table_name
            assert record.created_at == old_record.created_at
            # Every chunk was embedded once by the new model, in batches (plus what the writes during it needed).
            new_calls = [call for call in fake_embedder.calls[calls_before:] if call.model == NEW_MODEL]
            embedded = [text for call in new_calls for text in call.inputs]
            assert done.chunks_total <= len(embedded) <= done.chunks_total + 2  # + the deleted file's chunk
            assert len(new_calls) < len(embedded)  # batched
            assert done.embedding_calls > 0 and done.chunks_done == done.chunks_total

            after = await client_b.vector_stores.retrieve(STORE_ID)
            assert after.status == "completed"
            assert (after.id, after.created_at) == (before.id, before.created_at)
            assert after.file_counts.completed == before.file_counts.completed  # one added, one deleted
            files = {item.id: item for item in (await client_b.vector_stores.files.list(STORE_ID)).data}
            assert set(files) == {kept, retagged, added}
            assert files[retagged].attributes == {"v": "2"}

            # The new generation answers with the new model: a chunk's own text finds it with score 1.
            fake_embedder.delay_seconds = 0
            for text, want in (
                ("Written while the store migrates: the harbour bell rings.", added),
                ("The lighthouse keeper polishes the brass lamp.", kept),
            ):
                page = await client_b.vector_stores.search(STORE_ID, query=text, extra_body={"search_mode": "vector"})
                assert page.data[0].file_id == want and page.data[0].score == pytest.approx(1.0, abs=1e-4)
            hit = await client_a.vector_stores.search(STORE_ID, query=row_text(ROWS + 3), max_num_results=1)
            assert hit.data[0].content[0].text == row_text(ROWS + 3)
            page = await client_b.vector_stores.search(
                STORE_ID, query="paragraph that will be deleted", extra_body={"search_mode": "keyword"}
            )
            assert all(item.file_id != dropped for item in page.data)
            retagged_hits = await client_b.vector_stores.search(
                STORE_ID, query="Attributes of this file change", filters={"type": "eq", "key": "v", "value": "2"}
            )
            assert [item.file_id for item in retagged_hits.data] == [retagged]
            async with http.get(f"{b.base_url}/v1/vector_stores/{STORE_ID}/migration", headers=auth()) as response:
                status = await response.json()
            assert status["phase"] == "done" and status["to"]["dimensions"] == NEW_DIMS
            assert status["previous"]["model"] == "fake-model"
            assert await table_exists(fresh_dsn, old_record.table_name)  # kept for keep_previous
            assert len(extra) == 50
            async with http.get(f"{a.base_url}/metrics") as response:
                text = await response.text()
            assert f'vectorstore_migration_phase{{phase="done",store="{STORE_ID}"}} 1.0' in text
            for line in ("requested", "building", "swapped to"):
                assert f"migration of store {STORE_ID}: {line}" in caplog.text
            await client_b.close()
    finally:
        await client_a.close()
        await a.stop()
        if b is not None:
            await b.stop()
