"""The process's cache of decoded postings (search/postings_cache.py): a search through it is the exact BM25 top
k in every state of the blocks (written, merged, compacted, with chunks deleted), the rows it holds are really
left out of the fetch, a row held under a key that names another row is read again, and the cache keeps to its
budget, least recently used first out.

The stores here are small, so the cache is told to keep rows of 8 postings and more (the server's is 4,096)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psycopg
import pytest
from fakeembed import FakeEmbedder
from psycopg import sql
from server.conftest import WRITE_KEY, auth, spec_data, start_server, write_spec

from search.conftest import add_rows, new_store
from search.test_postings import assert_exact, blocks_rows, corpus, current, gone_count, stats_of
from vectorstore.observability import metrics
from vectorstore.search import postings, postings_compaction
from vectorstore.search import service as search_service
from vectorstore.search.postings_cache import ENTRY_OVERHEAD, DecodedRow, PostingsCache
from vectorstore.storage import stores

SMALL_ROWS = 8


def scored_postings(source: str) -> float:
    return metrics.REGISTRY.get_sample_value("vectorstore_keyword_postings_total", {"source": source}) or 0.0


def queries_of(texts: list[str], seed: int = 9) -> list[str]:
    rng = random.Random(seed)
    queries = []
    for _ in range(10):
        words = rng.choice(texts).split()
        start = rng.randrange(0, max(1, len(words) - 6))
        queries.append(" ".join(words[start : start + rng.randint(2, 6)]))
    return [*queries, "wabx wacx waax", "nothing here matches"]


async def fetched(
    conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, query: str, cache: PostingsCache
) -> list[Any]:
    """The fetch statement's rows for `query`, told what `cache` holds, as a search through it sends them."""
    cur = await conn.execute(
        postings.fetch_statement(record.layout),
        [record.language, query, cache.keys_literal(record.table_name), cache.min_postings],
        binary=True,
    )
    return await cur.fetchall()


async def assert_held_rows_are_left_out(
    conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, queries: list[str], cache: PostingsCache
) -> None:
    """Each query's rows: those with a key the cache holds come without postings, every other row with them; and
    some are held, so the searches before really went through the cache."""
    held = cache.rows(record.table_name)
    left_out = 0
    for query in queries:
        for lexeme, packed, _, kind, seg, xmin, key, n in await fetched(conn, record, query, cache):
            if kind != 0 or seg is None:
                continue
            if key in held:
                assert packed is None and held[key].is_row(lexeme, seg, xmin, n)
                left_out += 1
            else:
                assert packed is not None, (query, lexeme)
    assert left_out > 0


async def test_searches_through_the_cache_are_exact_in_every_state_of_the_blocks(
    db: psycopg.AsyncConnection[Any],
) -> None:
    texts = corpus(400)
    record = await new_store(db)
    for start in range(0, 400, 40):  # ten statements, as ten files would be written
        await add_rows(db, record, texts[start : start + 40], prefix=f"s{start}-")
    record = await current(db, record.id)
    queries = queries_of(texts)
    cache = PostingsCache(64 << 20, min_postings=SMALL_ROWS)

    async def check() -> None:
        # Twice: the first search reads and keeps the large rows, the second takes them from the cache.
        for _ in range(2):
            await assert_exact(db, record, queries, cache)
        await assert_held_rows_are_left_out(db, record, queries, cache)

    assert set(await blocks_rows(db, record)) == {2}
    counted = {source: scored_postings(source) for source in ("cache", "database")}
    await check()
    # vectorstore_keyword_postings_total counts both sources.
    assert all(scored_postings(source) > counted[source] for source in counted)
    await postings_compaction.compact(db, record.table_name, record.id, "minor")
    await check()
    await postings_compaction.compact(db, record.table_name, record.id, "major")
    assert set(await blocks_rows(db, record)) == {0}
    await check()
    # Deleted chunks: the held rows still hold their postings, and the search drops them by the gone ords.
    await db.execute(sql.SQL("DELETE FROM {t} WHERE id LIKE 's40-%'").format(t=record.layout.ident))
    await add_rows(db, record, texts[:5], prefix="again-")
    record = await current(db, record.id)
    assert await gone_count(db, record) == 40
    await check()
    # Compaction replaces the rows (new xmin, new keys): the old entries are no longer used, only aged out.
    before = set(cache.rows(record.table_name))
    await postings_compaction.compact_fully(db, record.table_name, record.id)
    await check()
    assert set(cache.rows(record.table_name)) - before


async def test_a_held_row_that_names_another_row_is_read_again(db: psycopg.AsyncConnection[Any]) -> None:
    """A 64-bit key could in principle name two rows. The fetch returns each row's lexeme, seg, xmin and count of
    postings: when the entry held under its key is another row (another xmin, or as many postings as another
    count), the search reads the rows again without the cache, and the entry is replaced by the row read."""
    texts = corpus(300)
    record = await new_store(db)
    await add_rows(db, record, texts)
    record = await current(db, record.id)
    queries = queries_of(texts, seed=3)
    cache = PostingsCache(64 << 20, min_postings=SMALL_ROWS)
    truth = [await postings.fetch_and_score(db, record.layout, stats_of(record), q, 10) for q in queries]
    for query in queries:
        await postings.fetch_and_score(db, record.layout, stats_of(record), query, 10, cache)
    held = cache.rows(record.table_name)
    assert held

    def other_xmin(row: DecodedRow) -> DecodedRow:  # another version of the row, with other weights
        ords, _ = row.pairs(1.0, 1.0)
        return DecodedRow(row.lexeme, row.seg, row.xmin - 1, ords, np.full(ords.size, 9), np.ones(ords.size))

    def other_count(row: DecodedRow) -> DecodedRow:  # the same lexeme, seg and xmin, with fewer postings
        ords, _ = row.pairs(1.0, 1.0)
        return DecodedRow(row.lexeme, row.seg, row.xmin, ords[:1], np.full(1, 9), np.ones(1))

    for other in (other_xmin, other_count):
        for key, row in held.items():
            cache.put(record.table_name, key, other(row))
        for query, expected in zip(queries, truth, strict=True):
            assert await postings.fetch_and_score(db, record.layout, stats_of(record), query, 10, cache) == expected
        restored = cache.rows(record.table_name)
        assert all(restored[key].is_row(row.lexeme, row.seg, row.xmin, row.postings) for key, row in held.items())
    # Without the cache, and with a cache of no bytes (`server.postings_cache_bytes: 0`), the same results.
    off = PostingsCache(0, min_postings=SMALL_ROWS)
    for query, expected in zip(queries, truth, strict=True):
        assert await postings.fetch_and_score(db, record.layout, stats_of(record), query, 10, off) == expected
    assert len(off) == 0 and off.keys_literal(record.table_name) == "{}"


def _row(lexeme: str, postings_count: int, *, seg: int = 0, xmin: int = 100) -> DecodedRow:
    """A sparse row: every other ord."""
    ords = np.arange(0, 2 * postings_count, 2, dtype=np.int64)
    return DecodedRow(lexeme, seg, xmin, ords, np.ones(postings_count), np.ones(postings_count))


def test_the_cache_keeps_to_its_budget_least_recently_used_first() -> None:
    one = _row("a", 1000).nbytes
    assert one == 1000 * 16 + ENTRY_OVERHEAD  # 4 + 2 + 2 bytes a posting, and 8 for its weight
    # Chunks filling their span of ords: a slot an ord, 2 + 2 bytes and 8 for the weight, without the ords.
    full = DecodedRow("z", 0, 1, np.arange(5, 1005), np.ones(1000), np.ones(1000))
    assert full.dense and full.nbytes == 1000 * 12 + ENTRY_OVERHEAD
    cache = PostingsCache(3 * one)
    for key, lexeme in enumerate("abc"):
        cache.put("t1", key, _row(lexeme, 1000))
    assert len(cache) == 3 and cache.bytes == 3 * one
    assert cache.keys_literal("t1") == "{0,1,2}" and cache.keys_literal("t2") == "{}"
    snapshot = cache.rows("t1")
    cache.touch("t1", 0)  # "a" used again: "b" is now the least recently used
    cache.put("t2", 7, _row("d", 1000))
    assert set(cache.rows("t1")) == {0, 2} and set(cache.rows("t2")) == {7} and cache.bytes == 3 * one
    assert cache.keys_literal("t1") == "{0,2}" and cache.keys_literal("t2") == "{7}"
    # What a search took before the eviction stays usable by it.
    assert snapshot[1].lexeme == "b" and snapshot[1].postings == 1000
    # A row larger than the whole budget is not kept, and evicts nothing.
    cache.put("t1", 9, _row("huge", 4000))
    assert 9 not in cache.rows("t1") and len(cache) == 3
    cache.forget("t1")
    assert cache.rows("t1") == {} and cache.keys_literal("t1") == "{}" and cache.bytes == one
    # What /metrics shows of it (one per process: per worker under `serve --workers N`).
    gauges = metrics.postings_cache_gauges(lambda: cache.bytes, lambda: len(cache), cache.max_bytes)
    shown = {family.name: family.samples[0].value for family in gauges()}
    assert shown == {
        "vectorstore_postings_cache_bytes": one,
        "vectorstore_postings_cache_rows": 1,
        "vectorstore_postings_cache_max_bytes": 3 * one,
    }
    disabled = PostingsCache(0)
    disabled.put("t1", 1, _row("a", 10))
    assert not disabled.enabled and len(disabled) == 0
    # The arrays are shared by every search holding the row: none may change them.
    with pytest.raises(ValueError, match="read-only"):
        snapshot[1].tf[0] = 2
    with pytest.raises(ValueError, match="read-only"):
        snapshot[1].weights(1.5, 100.0)[0] = 2.0


def test_a_newer_version_of_a_row_replaces_the_older_and_entries_expire() -> None:
    now = [0.0]
    cache = PostingsCache(1 << 20, max_age=600.0, clock=lambda: now[0])
    cache.put("t", 1, _row("a", 10, seg=0, xmin=100))
    cache.put("t", 2, _row("a", 10, seg=1, xmin=100))
    cache.put("t", 3, _row("b", 10, seg=0, xmin=100))
    cache.put("u", 3, _row("b", 10, seg=0, xmin=100))  # another store's
    # Compaction rewrote "a"'s base row: its new version, once read, takes the old one's place.
    cache.put("t", 4, _row("a", 12, seg=0, xmin=200))
    held = [*cache.rows("t").values(), *cache.rows("u").values()]
    assert set(cache.rows("t")) == {2, 3, 4} and cache.bytes == sum(r.nbytes for r in held)
    now[0] = 500.0
    cache.put("t", 5, _row("c", 10))
    now[0] = 650.0  # rows 2, 3 and 4 were read 650 s ago: past MAX_AGE_SECONDS, no longer used
    # Looking up one store's entries drops every expired one, the other store's too.
    assert set(cache.rows("t")) == {5} and len(cache) == 1 and cache.keys_literal("t") == "{5}"
    assert cache.keys_literal("u") == "{}"
    now[0] = 1200.0
    assert cache.rows("t") == {} and cache.bytes == 0


async def test_a_deleted_store_leaves_the_server_cache(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path
) -> None:
    """The server's cache is sized by `server.postings_cache_bytes`, and deleting a store through the API drops
    what the process holds of it at once."""
    data = spec_data(fake_embedder.base_url, stores=[])
    data["server"] = {"postings_cache_bytes": 1 << 20}
    server = await start_server(write_spec(tmp_path / "stack.yaml", data), fresh_dsn)
    try:
        cache = server.app[search_service.POSTINGS_CACHE]
        assert cache.max_bytes == 1 << 20
        async with aiohttp.ClientSession(headers=auth(WRITE_KEY)) as http:
            async with http.post(server.url("/v1/vector_stores"), json={"name": "gone-soon"}) as response:
                store_id = (await response.json())["id"]
            async with await psycopg.AsyncConnection.connect(fresh_dsn) as conn:
                record = await stores.get(conn, store_id)
            assert record is not None
            cache.put(record.table_name, 1, _row("wing", 10))
            cache.put("another_table", 2, _row("wing", 10))
            async with http.delete(server.url(f"/v1/vector_stores/{store_id}")) as response:
                assert response.status == 200
        assert cache.rows(record.table_name) == {} and set(cache.rows("another_table")) == {2}
    finally:
        await server.stop()
