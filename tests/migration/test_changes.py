"""Each kind of change on a store with data, on the real database: swap back, cancel, quantization (no embedding),
language (fts rebuilt, no embedding), a refused chunk pauses, rate limits are waited out, API stores don't move."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import openai
import psycopg
import pytest
from fakeembed import FakeEmbedder

from migration.conftest import (
    NEW_DIMS,
    NEW_MODEL,
    NEW_MODEL_STORE,
    STORE_ID,
    Serve,
    add_rows,
    openai_client,
    record_of,
    row_text,
    table_exists,
    wait_phase,
)
from vectorstore.migration import builder, service

ROWS = 150


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "POLL_SECONDS", 0.2)


async def _populate(serve: Serve) -> str:
    async with serve() as server, aiohttp.ClientSession() as http:
        await add_rows(http, server.base_url, 0, ROWS)
    return (await record_of(server.dsn)).table_name


def _new_model_inputs(embedder: FakeEmbedder, model: str) -> list[str]:
    return [text for call in embedder.calls if call.model == model for text in call.inputs]


async def test_swap_back_within_keep_previous_embeds_nothing(
    serve: Serve, fresh_dsn: str, fake_embedder: FakeEmbedder
) -> None:
    original = await _populate(serve)
    async with serve(NEW_MODEL_STORE):
        assert (await wait_phase(fresh_dsn, "done", "paused")).phase == "done"
    assert len(_new_model_inputs(fake_embedder, NEW_MODEL)) == ROWS
    migrated = (await record_of(fresh_dsn)).table_name
    fake_embedder.calls.clear()
    async with serve() as server:
        back = await wait_phase(fresh_dsn, "done", "paused")
        record = await record_of(fresh_dsn)
        assert (record.model, record.dimensions, record.table_name) == ("fake-model", 8, original)
        assert back.embedding_calls == 0 and back.previous_table == migrated
        assert fake_embedder.calls == []  # the kept generation already held every chunk
        assert back.swap_seconds is not None and back.swap_seconds < 1.0
        client = openai_client(server.base_url)
        page = await client.vector_stores.search(STORE_ID, query=row_text(5), max_num_results=1)
        assert page.data[0].content[0].text == row_text(5)
        await client.close()


async def test_changing_back_mid_migration_cancels_it(
    serve: Serve, fresh_dsn: str, fake_embedder: FakeEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="vectorstore")
    original = await _populate(serve)
    fake_embedder.delay_seconds = 0.5
    async with serve(NEW_MODEL_STORE):
        partial = await wait_phase(fresh_dsn, "building")
    assert partial.build_table is not None
    fake_embedder.delay_seconds = 0
    fake_embedder.calls.clear()
    async with serve() as server:
        cancelled = await wait_phase(fresh_dsn, "cancelled")
        assert cancelled.build_table is None
        assert not await table_exists(fresh_dsn, partial.build_table)
        record = await record_of(fresh_dsn)
        assert (record.model, record.table_name) == ("fake-model", original)
        client = openai_client(server.base_url)
        assert (await client.vector_stores.retrieve(STORE_ID)).status == "completed"
        page = await client.vector_stores.search(STORE_ID, query=row_text(7), max_num_results=1)
        assert page.data[0].content[0].text == row_text(7)
        await client.close()
    assert _new_model_inputs(fake_embedder, NEW_MODEL) == []
    assert f"migration of store {STORE_ID}: cancelled" in caplog.text


async def test_quantization_and_index_changes_copy_vectors(
    serve: Serve, fresh_dsn: str, fake_embedder: FakeEmbedder
) -> None:
    await _populate(serve)
    fake_embedder.calls.clear()
    async with serve({"index": {"quantization": "halfvec", "m": 24}}) as server:
        done = await wait_phase(fresh_dsn, "done", "paused")
        assert done.phase == "done" and not done.reembed and done.embedding_calls == 0
        record = await record_of(fresh_dsn)
        assert (record.quantization, record.vector_type, record.hnsw_m) == ("halfvec", "halfvec", 24)
        client = openai_client(server.base_url)
        page = await client.vector_stores.search(
            STORE_ID, query=row_text(11), max_num_results=1, extra_body={"search_mode": "vector"}
        )
        assert page.data[0].content[0].text == row_text(11)
        await client.close()
    # Only the searches' queries were embedded: no chunk.
    assert all(call.inputs == [row_text(11)] for call in fake_embedder.calls)


async def test_language_change_rebuilds_fts_without_embedding(
    serve: Serve, fresh_dsn: str, fake_embedder: FakeEmbedder
) -> None:
    await _populate(serve)
    fake_embedder.calls.clear()
    async with serve({"search": {"language": "simple"}}):
        done = await wait_phase(fresh_dsn, "done", "paused")
        assert done.phase == "done" and done.embedding_calls == 0
    assert fake_embedder.calls == []
    record = await record_of(fresh_dsn)
    assert record.language == "simple"
    async with await psycopg.AsyncConnection.connect(fresh_dsn) as conn:
        # `about` and `with` are English stop words: only the `simple` configuration keeps them.
        cur = await conn.execute(f"SELECT count(*) FROM \"{record.table_name}\" WHERE fts @@ 'about & with'::tsquery")
        row = await cur.fetchone()
    assert row == (ROWS,)


async def test_refused_chunk_pauses_and_rate_limits_are_waited_out(
    serve: Serve, fresh_dsn: str, fake_embedder: FakeEmbedder
) -> None:
    original = await _populate(serve)
    fake_embedder.fail_status = 400
    async with serve(NEW_MODEL_STORE) as server:
        paused = await wait_phase(fresh_dsn, "paused", "done")
        assert paused.phase == "paused" and "refused" in (paused.last_error or "")
        assert "upstream-key" not in (paused.last_error or "")
        assert (await record_of(fresh_dsn)).table_name == original  # no store with holes swapped in
        client = openai_client(server.base_url)
        assert (await client.vector_stores.retrieve(STORE_ID)).status == "in_progress"
        await client.close()
    # Restarted with the upstream fixed but rate limiting: the migration resumes and waits the 429s out.
    fake_embedder.fail_status = None
    fake_embedder.rate_limit_times = 6
    async with serve(NEW_MODEL_STORE):
        done = await wait_phase(fresh_dsn, "done", "paused")
        assert done.phase == "done", done.last_error
    assert fake_embedder.rate_limit_times == 0
    assert (await record_of(fresh_dsn)).dimensions == NEW_DIMS


async def test_stores_created_through_the_api_never_migrate(
    serve: Serve, fresh_dsn: str, fake_embedder: FakeEmbedder
) -> None:
    async with serve() as server:
        client = openai_client(server.base_url)
        created = await client.vector_stores.create(name="mine")
        await client.close()
    async with serve(embedding={"base_url": fake_embedder.base_url, "model": NEW_MODEL, "dimensions": NEW_DIMS}):
        pass
    async with await psycopg.AsyncConnection.connect(fresh_dsn) as conn:
        cur = await conn.execute("SELECT model, dimensions FROM vector_stores WHERE id = %s", [created.id])
        assert await cur.fetchone() == ("fake-model", 8)
        cur = await conn.execute("SELECT count(*) FROM store_migrations WHERE vector_store_id = %s", [created.id])
        assert await cur.fetchone() == (0,)


async def test_old_model_gone_keyword_fallback_for_hybrid_503_for_vector(
    serve: Serve, fresh_dsn: str, fake_embedder: FakeEmbedder
) -> None:
    await _populate(serve)
    # The upstream dropped the old model (and refuses the new one too, so the migration stays paused).
    fake_embedder.fail_status = 404
    async with serve(NEW_MODEL_STORE) as server:
        await wait_phase(fresh_dsn, "paused")
        client = openai_client(server.base_url)
        page = await client.vector_stores.search(STORE_ID, query="lantern12 topic", max_num_results=3)
        assert page.data and "lantern12" in page.data[0].content[0].text  # keyword ranking of the old generation
        with pytest.raises(openai.InternalServerError) as info:
            await client.vector_stores.search(STORE_ID, query="lantern13", extra_body={"search_mode": "vector"})
        assert info.value.status_code == 503
        assert info.value.code == "store_migrating"
        message = str(info.value)
        assert STORE_ID in message and "fake-model" in message and "migrating" in message
        async with aiohttp.ClientSession() as http, http.get(server.url("/metrics")) as response:
            metrics_text = await response.text()
        assert 'vectorstore_searches_total{fallback="old_model_unavailable",mode="keyword"}' in metrics_text
        await client.close()


async def test_previous_generation_dropped_after_keep_previous(
    serve: Serve, fresh_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builder, "MIN_KEEP_SECONDS", 0.5)
    original = await _populate(serve)
    async with serve(NEW_MODEL_STORE, migration={"keep_previous": "0"}):
        done = await wait_phase(fresh_dsn, "done")
        assert done.previous_table == original
        deadline = asyncio.get_running_loop().time() + 20
        while await table_exists(fresh_dsn, original):
            assert asyncio.get_running_loop().time() < deadline, "the previous generation was never dropped"
            await asyncio.sleep(0.1)
    migration = await wait_phase(fresh_dsn, "done")
    assert migration.previous_table is None


async def test_a_source_sync_during_the_build_lands_in_the_new_generation(
    serve: Serve, fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path
) -> None:
    await _populate(serve)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The ferry timetable changes in winter.")
    (docs / "b.txt").write_text("Moorings are assigned by the harbour office.")
    fake_embedder.delay_seconds = 0.3
    # The new spec adds a source: its first sync runs at startup, while the store is being rebuilt.
    async with serve({**NEW_MODEL_STORE, "sources": [{"name": "docs", "path": str(docs)}]}) as server:
        done = await wait_phase(fresh_dsn, "done", "paused")
        assert done.phase == "done", done.last_error
        fake_embedder.delay_seconds = 0
        client = openai_client(server.base_url)
        files = (await client.vector_stores.files.list(STORE_ID)).data
        assert sorted(f.status for f in files) == ["completed", "completed"]
        page = await client.vector_stores.search(
            STORE_ID, query="Moorings are assigned by the harbour office.", extra_body={"search_mode": "vector"}
        )
        assert page.data[0].filename == "b.txt" and page.data[0].score == pytest.approx(1.0, abs=1e-4)
        await client.close()
    # Ingested during the build, so into the old generation with the old model, then replayed into the new one
    # with the new model.
    text = "The ferry timetable changes in winter."
    assert text in _new_model_inputs(fake_embedder, "fake-model")
    assert text in _new_model_inputs(fake_embedder, NEW_MODEL)
    record = await record_of(fresh_dsn)
    assert record.model == NEW_MODEL
    async with await psycopg.AsyncConnection.connect(fresh_dsn) as conn:
        cur = await conn.execute(f'SELECT count(*) FROM "{record.table_name}" WHERE file_id IS NOT NULL')
        assert await cur.fetchone() == (2,)
