"""A change of a declared store's `chunking` on a store with data, on the real database: the files the store's
default chunked are cut again from their stored bytes into a new generation; a chunk whose text is unchanged
keeps its vector (counted at the fake upstream); files attached with a strategy of their own and the
prototype's /embeddings rows are carried over as they are; swapping back embeds nothing; a chunking change
with a model change is one migration; a refused chunk pauses it."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from fakeembed import FakeEmbedder
from openai import AsyncOpenAI
from server.conftest import auth, write_spec
from server.test_reconcile import plan_cli

from migration.conftest import (
    NEW_DIMS,
    NEW_MODEL,
    STORE_ID,
    SearchLoad,
    Serve,
    add_rows,
    migration_spec,
    openai_client,
    record_of,
    row_text,
    table_exists,
    upload,
    wait_phase,
)
from vectorstore.ingest.chunking import chunk_text
from vectorstore.migration import builder, service
from vectorstore.storage.strategy import Strategy

OLD = Strategy(100, 0)  # the chunking migration_spec declares
NEW = Strategy(110, 0)
NEW_CHUNKING = {"chunking": {"max_chunk_size_tokens": NEW.max_chunk_size_tokens, "chunk_overlap_tokens": 0}}
OWN: Any = {"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 0}}
ROWS = 20
_WORDS = ["harbour", "ferry", "lantern", "mooring", "tide", "gull", "rope", "anchor", "keel", "mast", "sail", "pier"]


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "POLL_SECONDS", 0.2)


def _paragraph(words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(words)) + "."


def document(seed: int) -> str:
    """Paragraphs cut the same way at 100 and 110 tokens, and two short ones that are cut differently."""
    sizes = (70, 70, 30, 30, 70, 70)
    return "\n\n".join(_paragraph(size, seed * 10 + i) for i, size in enumerate(sizes))


def cut(text: str, strategy: Strategy) -> list[str]:
    return [chunk.text for chunk in chunk_text(text, strategy)]


async def _chunks(dsn: str, file_id: str) -> list[str]:
    table = (await record_of(dsn)).table_name
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(f'SELECT content FROM "{table}" WHERE file_id = %s ORDER BY chunk_index', [file_id])
        return [str(row[0]) for row in await cur.fetchall()]


async def _file_rows(dsn: str) -> int:
    table = (await record_of(dsn)).table_name
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(f'SELECT count(*) FROM "{table}" WHERE file_id IS NULL')
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _files(client: AsyncOpenAI) -> dict[str, dict[str, Any]]:
    listed = await client.vector_stores.files.list(STORE_ID)
    return {item.id: item.model_dump() for item in listed.data}


async def _populate(serve: Serve) -> tuple[str, str, dict[str, dict[str, Any]], dict[str, Any]]:
    """A file the store's default chunks, one with its own strategy, and /embeddings rows (no file)."""
    async with serve() as server, aiohttp.ClientSession() as http:
        client = openai_client(server.base_url)
        default = await upload(client, "default.txt", document(1), team="harbour")
        own = await client.files.create(file=("own.txt", document(2).encode()), purpose="assistants")
        attached = await client.vector_stores.files.create_and_poll(
            own.id,
            vector_store_id=STORE_ID,
            chunking_strategy=OWN,
            poll_interval_ms=100,
        )
        assert attached.status == "completed"
        await add_rows(http, server.base_url, 0, ROWS)
        files = await _files(client)
        store = (await client.vector_stores.retrieve(STORE_ID)).model_dump()
        await client.close()
    return default, own.id, files, store


def _static(strategy: Strategy) -> dict[str, Any]:
    return {
        "type": "static",
        "static": {
            "max_chunk_size_tokens": strategy.max_chunk_size_tokens,
            "chunk_overlap_tokens": strategy.chunk_overlap_tokens,
        },
    }


async def test_chunking_change_recuts_default_files_embeds_only_new_texts_and_swaps_back_for_free(
    serve: Serve, fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path
) -> None:
    old_cut, new_cut = cut(document(1), OLD), cut(document(1), NEW)
    changed = [text for text in new_cut if text not in old_cut]
    # The test means something only if the change keeps some chunks and changes others.
    assert 0 < len(changed) < len(new_cut)

    default, own, files_before, store_before = await _populate(serve)
    assert await _chunks(fresh_dsn, default) == old_cut
    own_chunks = await _chunks(fresh_dsn, own)
    original = (await record_of(fresh_dsn)).table_name
    # `vectorstore plan` says what the change will do, before it is applied.
    spec_path = write_spec(tmp_path / "plan.yaml", migration_spec(fake_embedder.base_url, store=NEW_CHUNKING))
    planned = plan_cli(tmp_path / "plan.yaml", fresh_dsn)
    assert planned.returncode == 3, planned.stderr
    assert "migrate 'docs'" in planned.stdout and "chunk_max_tokens: 100 -> 110" in planned.stdout
    assert (
        f"re-chunk 1 file(s) chunked by the store's default from their stored bytes (110 tokens, 0 overlap):"
        f" {len(old_cut)} chunks become ~"
    ) in planned.stdout, planned.stdout
    # The other file's chunks and the rows without a file are copied.
    own_count = len(cut(document(2), Strategy(200, 0)))
    assert f"other chunks copied: {own_count + ROWS}," in planned.stdout, planned.stdout
    assert spec_path.stores[0].max_chunk_size_tokens == 110
    fake_embedder.calls.clear()

    async with serve(NEW_CHUNKING) as server:
        done = await wait_phase(fresh_dsn, "done", "paused")
        assert done.phase == "done", done.last_error
        assert done.work == "rechunk" and (done.files_done, done.files_total) == (1, 1)
        # One embedding per new chunk text; the unchanged ones kept their vectors, nothing else was embedded.
        assert sorted(fake_embedder.inputs) == sorted(changed)
        assert done.embedding_calls == len(fake_embedder.calls)
        assert await _chunks(fresh_dsn, default) == new_cut
        assert await _chunks(fresh_dsn, own) == own_chunks  # its own strategy: kept
        assert await _file_rows(fresh_dsn) == ROWS  # no file bytes: carried over as they were

        async with aiohttp.ClientSession() as http:
            async with http.get(server.url(f"/v1/vector_stores/{STORE_ID}/migration"), headers=auth()) as response:
                status = await response.json()
            async with http.get(server.url("/metrics")) as response:
                metrics_text = await response.text()
        assert (status["work"], status["files_done"], status["files_total"]) == ("rechunk", 1, 1)
        assert status["to"]["chunk_max_tokens"] == 110 and status["from"]["chunk_max_tokens"] == 100
        assert f'vectorstore_migration_files_done{{store="{STORE_ID}"}} 1.0' in metrics_text

        client = openai_client(server.base_url)
        files_after = await _files(client)
        assert files_after[default]["chunking_strategy"] == _static(NEW)
        assert files_after[own]["chunking_strategy"] == OWN
        for file_id, before in files_before.items():
            after = files_after[file_id]
            for key in ("id", "attributes", "created_at", "status", "vector_store_id"):
                assert after[key] == before[key], key
        store_after = (await client.vector_stores.retrieve(STORE_ID)).model_dump()
        for key in ("id", "created_at", "file_counts", "status"):
            assert store_after[key] == store_before[key], key
        # A reused vector and a new one both find their chunk, with the file's attributes.
        for text in (changed[0], next(t for t in new_cut if t in old_cut)):
            page = await client.vector_stores.search(
                STORE_ID, query=text, max_num_results=1, extra_body={"search_mode": "vector"}
            )
            assert page.data[0].content[0].text == text
            assert page.data[0].score == pytest.approx(1.0, abs=1e-3)
            assert page.data[0].attributes == {"team": "harbour"}
        await client.close()

    fake_embedder.calls.clear()
    async with serve() as server:
        back = await wait_phase(fresh_dsn, "done", "paused")
        assert back.phase == "done" and back.previous_table is not None
        assert (await record_of(fresh_dsn)).table_name == original
        assert fake_embedder.calls == []  # the kept generation still held the old chunks
        assert await _chunks(fresh_dsn, default) == old_cut
        client = openai_client(server.base_url)
        assert (await _files(client))[default]["chunking_strategy"] == _static(OLD)
        await client.close()


async def test_chunking_and_model_in_one_edit_is_one_migration_and_a_refused_chunk_pauses_it(
    serve: Serve, fresh_dsn: str, fake_embedder: FakeEmbedder
) -> None:
    default, own, _files_before, _store = await _populate(serve)
    original = (await record_of(fresh_dsn)).table_name
    both = {**NEW_CHUNKING, "embedding": {"model": NEW_MODEL, "dimensions": NEW_DIMS}}
    fake_embedder.fail_status = 400
    async with serve(both) as server:
        paused = await wait_phase(fresh_dsn, "paused", "done")
        assert paused.phase == "paused" and "refused" in (paused.last_error or "")
        assert (await record_of(fresh_dsn)).table_name == original  # nothing swapped in with holes
        client = openai_client(server.base_url)
        assert (await _files(client))[default]["chunking_strategy"] == _static(OLD)
        await client.close()
    fake_embedder.fail_status = None
    fake_embedder.calls.clear()
    async with serve(both):
        done = await wait_phase(fresh_dsn, "done", "paused")
        assert done.phase == "done", done.last_error
    assert done.work == "rechunk+reembed"
    record = await record_of(fresh_dsn)
    assert (record.model, record.dimensions, record.chunk_max_tokens) == (NEW_MODEL, NEW_DIMS, 110)
    embedded = [text for call in fake_embedder.calls if call.model == NEW_MODEL for text in call.inputs]
    # Every chunk of the new generation once, with the new model: the re-cut file's, the other file's as it was,
    # and the rows without a file.
    new_rows = [*cut(document(1), NEW), *await _chunks(fresh_dsn, own), *(row_text(i) for i in range(ROWS))]
    assert sorted(embedded) == sorted(new_rows)
    assert await _chunks(fresh_dsn, default) == cut(document(1), NEW)


async def attach_documents(base_url: str, count: int) -> list[str]:
    """`count` files (`document(10)` on) that the store's default chunks, attached in one batch through the server
    at `base_url`."""
    client = openai_client(base_url)
    try:
        ids = [
            (await client.files.create(file=(f"d{i}.txt", document(10 + i).encode()), purpose="assistants")).id
            for i in range(count)
        ]
        batch = await client.vector_stores.file_batches.create_and_poll(
            vector_store_id=STORE_ID, file_ids=ids, poll_interval_ms=100
        )
        assert batch.file_counts.completed == count
    finally:
        await client.close()
    return ids


async def _many(serve: Serve, count: int) -> list[str]:
    async with serve() as server:
        return await attach_documents(server.base_url, count)


async def _marks(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT count(*) FROM store_migration_files")
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def test_writes_during_a_rechunk_land_in_the_new_generation(
    serve: Serve, fresh_dsn: str, fake_embedder: FakeEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await _many(serve, 12)
    monkeypatch.setattr(builder, "FILES_PER_BATCH", 1)  # one file a batch: the build takes a while
    fake_embedder.delay_seconds = 0.4
    queries = [cut(document(10 + n), OLD)[0] for n in range(4)]
    async with serve(NEW_CHUNKING, migration={"concurrency": 1}) as server:
        client = openai_client(server.base_url)
        # Searches throughout, answered from the old generation until the swap, then from the new one.
        async with SearchLoad([client], queries).running() as load:
            await wait_phase(fresh_dsn, "building")
            # An upload (it takes the new chunking at once), a detach and an attribute update, during the build.
            added = await upload(client, "added.txt", document(99))
            await client.vector_stores.files.delete(ids[-1], vector_store_id=STORE_ID)
            await client.vector_stores.files.update(ids[-2], vector_store_id=STORE_ID, attributes={"edited": True})
            during = await wait_phase(fresh_dsn, "building", "swapping", "done", "paused")
            assert during.phase == "building", "the build ended before the writes: the test proves nothing"
            fake_embedder.delay_seconds = 0
            done = await wait_phase(fresh_dsn, "done", "paused")
            assert done.phase == "done", done.last_error
        files = await _files(client)
        await client.close()
    assert load.errors == [] and load.empty == []
    assert load.done > 0
    assert set(files) == {*ids[:-1], added}
    assert all(item["chunking_strategy"] == _static(NEW) for item in files.values())
    for n, file_id in enumerate(ids[:-1]):
        assert await _chunks(fresh_dsn, file_id) == cut(document(10 + n), NEW), file_id
    assert await _chunks(fresh_dsn, added) == cut(document(99), NEW)
    assert await _chunks(fresh_dsn, ids[-1]) == []
    table = (await record_of(fresh_dsn)).table_name
    async with await psycopg.AsyncConnection.connect(fresh_dsn) as conn:
        cur = await conn.execute(f'SELECT DISTINCT attributes FROM "{table}" WHERE file_id = %s', [ids[-2]])
        assert await cur.fetchall() == [({"edited": True},)]


async def test_changing_chunking_back_mid_build_cancels_it(
    serve: Serve, fresh_dsn: str, fake_embedder: FakeEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await _many(serve, 6)
    original = (await record_of(fresh_dsn)).table_name
    monkeypatch.setattr(builder, "FILES_PER_BATCH", 1)
    fake_embedder.delay_seconds = 0.4
    async with serve(NEW_CHUNKING, migration={"concurrency": 1}):
        partial = await wait_phase(fresh_dsn, "building")
        for _ in range(600):
            if (await wait_phase(fresh_dsn, "building", "done")).files_done >= 1:
                break
            await asyncio.sleep(0.05)
    assert partial.build_table is not None and await _marks(fresh_dsn) >= 1
    fake_embedder.delay_seconds = 0
    fake_embedder.calls.clear()
    async with serve() as server:
        cancelled = await wait_phase(fresh_dsn, "cancelled")
        assert cancelled.build_table is None and not await table_exists(fresh_dsn, partial.build_table)
        assert await _marks(fresh_dsn) == 0
        assert (await record_of(fresh_dsn)).table_name == original
        client = openai_client(server.base_url)
        files = await _files(client)
        await client.close()
    assert all(item["chunking_strategy"] == _static(OLD) for item in files.values())
    assert await _chunks(fresh_dsn, ids[0]) == cut(document(10), OLD)
    assert fake_embedder.calls == []


async def test_files_from_before_the_flag_are_decided_once_by_their_strategy(
    serve: Serve, fresh_dsn: str, fake_embedder: FakeEmbedder
) -> None:
    default, own, _files_before, _store = await _populate(serve)
    # As a database from before migration 0310 looks: neither the store's chunking nor the files' origin known.
    async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
        await conn.execute("UPDATE vector_stores SET chunk_max_tokens = NULL, chunk_overlap_tokens = NULL")
        await conn.execute("UPDATE vector_store_files SET chunking_default = NULL")
    async with serve():
        pass
    async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT file_id, chunking_default FROM vector_store_files ORDER BY file_id")
        assert dict(await cur.fetchall()) == {default: True, own: False}
        cur = await conn.execute("SELECT count(*) FROM store_migrations")
        assert await cur.fetchone() == (0,)  # recording the chunking migrates nothing
    assert (await record_of(fresh_dsn)).chunk_max_tokens == OLD.max_chunk_size_tokens
    async with serve(NEW_CHUNKING):
        done = await wait_phase(fresh_dsn, "done", "paused")
        assert done.phase == "done" and (done.files_done, done.files_total) == (1, 1)
    assert await _chunks(fresh_dsn, default) == cut(document(1), NEW)
    assert await _chunks(fresh_dsn, own) == cut(document(2), Strategy(200, 0))
