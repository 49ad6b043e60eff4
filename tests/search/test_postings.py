"""Keyword search through the packed postings (migration 0420): they follow every write, compaction keeps them
and drops deleted chunks, the top k is exact BM25 (checked against BM25 computed here from the rows' lexemes)
in every state of the blocks, and an old store gets them in the background while it stays searchable."""

from __future__ import annotations

import asyncio
import math
import random
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from fakeembed import fake_vector
from psycopg import sql
from psycopg.pq import TransactionStatus

from search.conftest import DIMS, add_rows, connect, drop_postings, new_store
from vectorstore.search import hybrid, postings, postings_cache, postings_compaction, postings_upgrade, service, text
from vectorstore.search.filters import compile_filters
from vectorstore.search.postings_cache import PostingsCache
from vectorstore.search.vector import NO_FILTER, run_search
from vectorstore.storage import stores, tables


def stats_of(record: stores.StoreRecord) -> text.TextStats:
    return text.TextStats(record.id, record.analyzed_rows, record.text_avg_length, record.text_min_freq)


async def current(conn: psycopg.AsyncConnection[Any], store_id: str) -> stores.StoreRecord:
    record = await stores.get(conn, store_id)
    assert record is not None
    return record


async def stored_postings(conn: psycopg.AsyncConnection[Any], table: str) -> list[tuple[str, int, int, int]]:
    """Every posting the blocks hold, as (lexeme, ord, tf, dl), minus the chunks recorded gone."""
    cur = await conn.execute(sql.SQL("SELECT ord FROM {g}").format(g=sql.Identifier(tables.gone_table(table))))
    gone = {int(row[0]) for row in await cur.fetchall()}
    cur = await conn.execute(
        sql.SQL("SELECT lexeme, postings FROM {b} WHERE lexeme <> ''").format(
            b=sql.Identifier(tables.blocks_table(table))
        ),
        binary=True,
    )
    found = []
    for lexeme, packed in await cur.fetchall():
        for (value,) in struct.iter_unpack(">Q", packed):
            ord_, tf, dl = value >> 32, (value >> 16) & 0xFFFF, value & 0xFFFF
            if ord_ not in gone:
                found.append((lexeme, ord_, tf, dl))
    return sorted(found)


async def assert_postings_match_fts(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> int:
    """The postings are exactly the rows' lexemes with their tf and length, under each row's ord: no more, no
    less, and no two rows share an ord."""
    cur = await conn.execute(
        sql.SQL(
            "SELECT u.lexeme, c.ord, coalesce(array_length(u.positions, 1), 1), length(c.fts)"
            " FROM {t} AS c, unnest(c.fts) AS u"
        ).format(t=sql.Identifier(record.table_name))
    )
    expected = sorted((str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in await cur.fetchall())
    assert await stored_postings(conn, record.table_name) == expected
    cur = await conn.execute(
        sql.SQL("SELECT count(*), count(DISTINCT ord), count(ord) FROM {t}").format(t=sql.Identifier(record.table_name))
    )
    rows, distinct, with_ord = await cur.fetchone() or (0, 0, 0)
    assert rows == distinct == with_ord
    # The totals a search takes N and the mean length from: exactly the live rows'.
    cur = await conn.execute(
        sql.SQL(
            "SELECT (SELECT count(*) FROM {t} WHERE fts IS NOT NULL), (SELECT coalesce(sum(length(fts)), 0) FROM {t}),"
            " (SELECT coalesce(sum(chunks), 0) FROM {s}), (SELECT coalesce(sum(lengths), 0) FROM {s})"
        ).format(t=sql.Identifier(record.table_name), s=sql.Identifier(tables.totals_table(record.table_name)))
    )
    live_rows, live_lengths, total_rows, total_lengths = await cur.fetchone() or (0, 0, 0, 0)
    assert (total_rows, total_lengths) == (live_rows, live_lengths)
    return len(expected)


async def blocks_rows(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> dict[int, int]:
    """Rows of the blocks by level: 0 (base), 1 (recent merged), 2 (as written)."""
    cur = await conn.execute(
        sql.SQL("SELECT least(seg, 2), count(*) FROM {b} WHERE lexeme <> '' GROUP BY 1").format(
            b=sql.Identifier(tables.blocks_table(record.table_name))
        )
    )
    return {int(level): int(count) for level, count in await cur.fetchall()}


async def gone_count(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> int:
    cur = await conn.execute(
        sql.SQL("SELECT count(*) FROM {g}").format(g=sql.Identifier(tables.gone_table(record.table_name)))
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def corpus(rows: int, seed: int = 5) -> list[str]:
    """Pseudo-word chunks with a Zipf law over 400 words, so queries mix common and rare terms."""
    rng = random.Random(seed)
    words = [f"w{chr(97 + i // 26)}{chr(97 + i % 26)}x" for i in range(400)]
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    return [" ".join(rng.choices(words, weights, k=rng.randint(8, 40))) for _ in range(rows)]


async def exact_bm25(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, query: str) -> dict[str, float]:
    """BM25 of every matching row, computed here from the rows' lexemes (the same definition as text.py, with
    exact row count, mean length and document frequencies)."""
    cur = await conn.execute(
        sql.SQL(
            "SELECT c.id, u.lexeme, coalesce(array_length(u.positions, 1), 1) FROM {t} AS c, unnest(c.fts) AS u"
        ).format(t=sql.Identifier(record.table_name))
    )
    docs: dict[str, dict[str, int]] = {}
    for row_id, lexeme, tf in await cur.fetchall():
        docs.setdefault(row_id, {})[lexeme] = tf
    cur = await conn.execute("SELECT lexeme FROM unnest(to_tsvector(%s::regconfig, %s))", [record.language, query])
    terms = [row[0] for row in await cur.fetchall()]
    n, avgdl = len(docs), sum(len(d) for d in docs.values()) / max(1, len(docs))
    idfs = {}
    for term in terms:
        df = sum(1 for d in docs.values() if term in d)
        idfs[term] = math.log(1 + max(n - df + 0.5, 0) / (df + 0.5))
    scores: dict[str, float] = {}
    for term, idf in idfs.items():
        for row_id, d in docs.items():
            if term in d:
                tf = d[term]
                weight = tf * (text.K1 + 1) / (tf + text.K1 * (1 - text.B + text.B * len(d) / avgdl))
                scores[row_id] = scores.get(row_id, 0.0) + idf * weight
    top = sum(idfs.values()) * (text.K1 + 1)  # a hit's score is its BM25 over the query's largest possible
    return {row_id: score / top for row_id, score in scores.items()}


async def assert_exact(
    conn: psycopg.AsyncConnection[Any],
    record: stores.StoreRecord,
    queries: list[str],
    cache: PostingsCache | None = None,
) -> None:
    """Each query's keyword search (through `cache` if given) is the exact BM25 top k, for k = 10 and 40."""
    assert await postings.is_ready(conn, record.table_name)
    for query in queries:
        truth = await exact_bm25(conn, record, query)
        ranked = sorted(truth.values(), reverse=True)
        for k in (10, 40):
            hits = (await hybrid.run_keyword(conn, record.layout, stats_of(record), query, limit=k, cache=cache)).hits
            assert len(hits) == min(k, len(truth)), query
            for hit in hits:
                assert hit.score == pytest.approx(truth[hit.id], rel=1e-9), (query, hit.id)
            if not hits:
                continue
            # The k-th score is the k-th best there is: no row was left out of the top k.
            assert hits[-1].score == pytest.approx(ranked[len(hits) - 1], rel=1e-9), query
            # Ties in score are ordered by id, as on the GIN path.
            assert [(-round(h.score, 12), h.id) for h in hits] == sorted((-round(h.score, 12), h.id) for h in hits)


async def test_postings_follow_every_write(db: psycopg.AsyncConnection[Any]) -> None:
    record = await new_store(db)
    await add_rows(db, record, corpus(60))
    assert await assert_postings_match_fts(db, record) > 60
    t = sql.Identifier(record.table_name)
    # Rows of a file, written as the ingestion worker does, then their attributes changed as the API does.
    rows = [
        tables.ChunkRow(f"f{i}", f"turbine blade note {i}", fake_vector(str(i), DIMS), "file-1", i) for i in range(5)
    ]
    async with db.transaction():
        await tables.copy_chunks(db, record.layout, rows)
    async with db.transaction():
        await db.execute(sql.SQL("UPDATE {t} SET attributes = '{{\"a\": 1}}' WHERE file_id = 'file-1'").format(t=t))
    await assert_postings_match_fts(db, record)
    assert await gone_count(db, record) == 0  # an attribute update leaves the postings alone
    # Content changed (a trigger-filled table's path; here the generated column follows it): the row gets a new
    # ord, its old postings are gone by the old one.
    cur = await db.execute(sql.SQL("SELECT ord FROM {t} WHERE id = 'f0'").format(t=t))
    old_ord = (await cur.fetchone() or [0])[0]
    await db.execute(sql.SQL("UPDATE {t} SET content = 'compressor stall' WHERE id = 'f0'").format(t=t))
    await assert_postings_match_fts(db, record)
    cur = await db.execute(sql.SQL("SELECT ord FROM {t} WHERE id = 'f0'").format(t=t))
    assert (await cur.fetchone() or [0])[0] != old_ord
    async with db.transaction():
        assert await tables.delete_file_chunks(db, record.layout, "file-1") == 5
    before = await assert_postings_match_fts(db, record)
    await db.execute(sql.SQL("DELETE FROM {t} WHERE id = 'r3'").format(t=t))
    assert await assert_postings_match_fts(db, record) < before
    # A rolled-back write leaves no postings behind.
    with pytest.raises(psycopg.errors.UniqueViolation):
        async with db.transaction():
            await tables.copy_chunks(db, record.layout, [tables.ChunkRow("r0", "duplicate id", fake_vector("x", DIMS))])
    await assert_postings_match_fts(db, record)
    # Compaction: the recent rows merge into level 1, then everything into the base without the gone chunks.
    # 5 of the file, r3, and f0's first ord twice (recorded with its old lexemes, and by the nested update)
    assert await gone_count(db, record) == 8
    levels = await blocks_rows(db, record)
    assert set(levels) == {2}
    await postings_compaction.compact(db, record.table_name, record.id, "minor")
    await assert_postings_match_fts(db, record)
    assert set(await blocks_rows(db, record)) == {1} and await gone_count(db, record) == 8
    await postings_compaction.compact(db, record.table_name, record.id, "major")
    await assert_postings_match_fts(db, record)
    assert set(await blocks_rows(db, record)) == {0} and await gone_count(db, record) == 0
    # Every posting left belongs to a live row (the gone ones were removed, not only hidden).
    cur = await db.execute(sql.SQL("SELECT count(*) FROM {t}, unnest(fts)").format(t=t))
    assert len(await stored_postings(db, record.table_name)) == (await cur.fetchone() or [0])[0]


async def test_top_k_is_exact_bm25_in_every_state_of_the_blocks(db: psycopg.AsyncConnection[Any]) -> None:
    """As written (a row a lexeme and statement), merged to level 1, merged to the base, and with deleted chunks
    waiting for compaction: the same exact top k."""
    texts = corpus(400)
    record = await new_store(db)
    for start in range(0, 400, 40):  # ten statements, as ten files would be written
        await add_rows(db, record, texts[start : start + 40], prefix=f"s{start}-")
    record = await current(db, record.id)
    rng = random.Random(9)
    queries = []
    for _ in range(12):
        words = rng.choice(texts).split()
        start = rng.randrange(0, max(1, len(words) - 6))
        queries.append(" ".join(words[start : start + rng.randint(2, 6)]))
    queries += ["wabx wacx", "nothing here matches"]
    assert set(await blocks_rows(db, record)) == {2}
    await assert_exact(db, record, queries)
    await postings_compaction.compact(db, record.table_name, record.id, "minor")
    await assert_exact(db, record, queries)
    await postings_compaction.compact(db, record.table_name, record.id, "major")
    assert set(await blocks_rows(db, record)) == {0}
    await assert_exact(db, record, queries)
    # Deleted chunks are dropped by the search before compaction forgets them: df and the top k stay exact.
    await db.execute(sql.SQL("DELETE FROM {t} WHERE id LIKE 's40-%'").format(t=record.layout.ident))
    await add_rows(db, record, texts[:5], prefix="again-")
    record = await current(db, record.id)
    assert await gone_count(db, record) == 40
    await assert_exact(db, record, queries)
    await postings_compaction.compact_fully(db, record.table_name, record.id)
    await assert_exact(db, record, queries)


async def test_compaction_keeps_what_is_written_meanwhile(db: psycopg.AsyncConnection[Any], fresh_dsn: str) -> None:
    """A compaction deletes exactly the rows it read: a write that commits during it keeps its postings, and a
    delete during it is not forgotten."""
    record = await new_store(db)
    await add_rows(db, record, corpus(80, seed=2))
    writer = await connect(fresh_dsn)
    await writer.set_autocommit(False)
    try:
        await tables.copy_chunks(
            writer, record.layout, [tables.ChunkRow("late", "wabx late words", fake_vector("l", DIMS))]
        )
        await writer.execute(sql.SQL("DELETE FROM {t} WHERE id = 'r1'").format(t=record.layout.ident))
        # The writer's transaction is open (not committed) while both compactions run.
        await postings_compaction.compact(db, record.table_name, record.id, "minor")
        await postings_compaction.compact(db, record.table_name, record.id, "major")
        await writer.commit()
    finally:
        await writer.close()
    await assert_postings_match_fts(db, record)
    assert await gone_count(db, record) == 1
    await postings_compaction.compact(db, record.table_name, record.id, "major")
    await assert_postings_match_fts(db, record)
    assert await gone_count(db, record) == 0


async def compact_in_background_until(dsn: str, done: Callable[[], Awaitable[bool]]) -> None:
    """Run the server's compaction loop (checking every 50 ms) until `done()`, at most 10 s, then stop it."""
    task = asyncio.create_task(service.compact_forever(dsn, every=0.05))
    try:
        for _ in range(200):
            if await done():
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_compaction_is_due_by_backlog_and_runs_in_the_background(
    db: psycopg.AsyncConnection[Any], fresh_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = await new_store(db)
    for start in range(3):
        await add_rows(db, record, corpus(5, seed=start), prefix=f"b{start}-")
    waiting = await postings_compaction.backlog(db, record.table_name)
    assert waiting is not None and waiting.segments == 3 and waiting.gone == 0
    assert postings_compaction.due(waiting) is None
    monkeypatch.setattr(postings_compaction, "MINOR_SEGMENTS", 3)
    assert postings_compaction.due(waiting) == "minor"
    await db.execute(sql.SQL("DELETE FROM {t} WHERE id = 'b0-0'").format(t=record.layout.ident))
    waiting = await postings_compaction.backlog(db, record.table_name)
    assert waiting is not None and postings_compaction.due(waiting) == "minor"  # writes first, gone when quiet

    async def compacted() -> bool:
        return await gone_count(db, record) == 0 and set(await blocks_rows(db, record)) == {0}

    await compact_in_background_until(fresh_dsn, compacted)
    assert set(await blocks_rows(db, record)) == {0} and await gone_count(db, record) == 0
    await assert_postings_match_fts(db, record)


async def test_one_store_failing_its_compaction_leaves_the_others_compacted(
    db: psycopg.AsyncConnection[Any], fresh_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = await new_store(db, "vs_broken01")
    healthy = await new_store(db, "vs_healthy01")
    for record in (broken, healthy):
        for start in range(3):
            await add_rows(db, record, corpus(4, seed=start), prefix=f"b{start}-")
    # A defect's stand-in: the broken store's gone table is missing, so reading its backlog fails.
    await db.execute(sql.SQL("DROP TABLE {g}").format(g=sql.Identifier(tables.gone_table(broken.table_name))))
    monkeypatch.setattr(postings_compaction, "MINOR_SEGMENTS", 3)

    async def merged() -> bool:
        return 2 not in await blocks_rows(db, healthy)

    await compact_in_background_until(fresh_dsn, merged)
    assert 2 not in await blocks_rows(db, healthy)  # the rows as written were merged
    await assert_postings_match_fts(db, healthy)
    assert any("postings compaction of store vs_broken01" in r.getMessage() for r in caplog.records)


async def test_filtered_keyword_and_hybrid_still_fill_the_page(db: psycopg.AsyncConnection[Any]) -> None:
    texts = corpus(200)
    record = await new_store(db)
    await add_rows(db, record, texts, [{"n": i % 10} for i in range(len(texts))])
    record = await current(db, record.id)
    where, params = compile_filters({"type": "eq", "key": "n", "value": 3})
    query = " ".join(texts[3].split()[:3])
    keyword = await hybrid.run_keyword(
        db, record.layout, stats_of(record), query, limit=10, where=where, where_params=params
    )
    fused = await hybrid.run_hybrid(
        db,
        record.layout,
        stats_of(record),
        query,
        fake_vector(query, DIMS),
        limit=15,
        depth=hybrid.depth_for(15),
        ef_search=40,
        where=where,
        where_params=params,
    )
    assert keyword.hits and all(hit.attributes["n"] == 3 for hit in keyword.hits)
    assert len(fused.hits) == 15 and all(hit.attributes["n"] == 3 for hit in fused.hits)


@pytest.mark.parametrize("mode", ["keyword", "keyword, filtered", "hybrid", "hybrid, filtered", "vector"])
async def test_a_search_on_a_transactional_connection_leaves_no_transaction_open(
    db: psycopg.AsyncConnection[Any], mode: str
) -> None:
    """The pool's connections are transactional (not autocommit). A search statement run there began a
    transaction: psycopg sent BEGIN first, a round trip of its own, and the pool a COMMIT when the connection
    went back (keyword mode did, four round trips a search instead of two). Every statement of a search goes
    out in autocommit, and the connection is given back as it came."""
    texts = corpus(60)
    record = await new_store(db)
    await add_rows(db, record, texts, [{"n": i % 3} for i in range(len(texts))])
    record = await current(db, record.id)
    where, params = compile_filters({"type": "eq", "key": "n", "value": 1}) if "filtered" in mode else (NO_FILTER, [])
    query = " ".join(texts[4].split()[:3])
    await db.set_autocommit(False)
    if mode.startswith("keyword"):
        result = await hybrid.run_keyword(
            db, record.layout, stats_of(record), query, limit=5, where=where, where_params=params
        )
        hits = result.hits
    elif mode.startswith("hybrid"):
        fused = await hybrid.run_hybrid(
            db, record.layout, stats_of(record), query, fake_vector(query, DIMS), limit=5,
            depth=hybrid.depth_for(5), ef_search=40, where=where, where_params=params,
        )  # fmt: skip
        hits = fused.hits
    else:
        hits = await run_search(db, record.layout, fake_vector(query, DIMS), limit=5, ef_search=40)
    assert len(hits) == 5
    assert db.info.transaction_status == TransactionStatus.IDLE
    assert db.autocommit is False


@pytest.mark.parametrize("older", ["none", "0400", "0410"])
async def test_an_old_store_is_upgraded_while_searchable(
    db: psycopg.AsyncConnection[Any], fresh_dsn: str, monkeypatch: pytest.MonkeyPatch, older: str
) -> None:
    """A store from before any postings, or with 0400's or 0410's, gets its ords and packed postings in the
    background, searchable throughout; the older postings' tables and triggers go once the new ones are complete."""
    texts = corpus(50, seed=3)
    record = await new_store(db)
    await add_rows(db, record, texts)
    record = await current(db, record.id)
    query = " ".join(texts[4].split()[:3])

    async def ranking() -> list[str]:
        result = await hybrid.run_keyword(db, record.layout, stats_of(record), query, limit=10)
        return [hit.id for hit in result.hits]

    expected = await ranking()
    await drop_postings(db, record)
    cur = await db.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = %s AND column_name = 'ord'",
        [record.table_name],
    )
    assert await cur.fetchone() == (0,)
    if older != "none":
        statements = (
            tables.legacy_postings_statements(record.layout)
            if older == "0400"
            else tables.impacts_statements(record.layout)
        )
        for statement in statements:
            await db.execute(statement)
        await tables.copy_chunks(db, record.layout, [tables.ChunkRow("old", "fresh words", fake_vector("o", DIMS))])
    assert await postings_upgrade.pending(db) == [record]
    # The GIN path meanwhile (its idf of rare terms is ANALYZE's estimate, so its order may differ slightly).
    assert set(await ranking()) & set(expected)
    await postings_upgrade.create(db, record)
    # From here on new rows get an ord and their postings from the triggers; the backfill gives the others theirs.
    async with db.transaction():
        await tables.copy_chunks(db, record.layout, [tables.ChunkRow("new", "fresh words", fake_vector("n", DIMS))])
    monkeypatch.setattr(postings_upgrade, "BACKFILL_BATCH", 7)
    filled = []
    while batch := await postings_upgrade.backfill_batch(db, record):
        filled.append(batch)
        postings.forget(record.table_name)
        assert not await postings.is_ready(db, record.table_name)
        assert set(await ranking()) & set(expected)
    assert sum(filled) == 50 + (older != "none") and max(filled) == 7
    await assert_postings_match_fts(db, record)
    await service.upgrade_all(fresh_dsn)  # the ord index, ready, the older postings dropped; no row is refilled
    await assert_postings_match_fts(db, record)
    for older_table in (tables.legacy_postings_table(record.table_name), tables.impacts_table(record.table_name)):
        cur = await db.execute("SELECT to_regclass(%s)", [older_table])
        assert await cur.fetchone() == (None,)
    cur = await db.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal", [record.table_name]
    )
    assert await cur.fetchone() == (3,)  # only the new triggers write now
    await db.execute(sql.SQL("DELETE FROM {t} WHERE id = 'new'").format(t=record.layout.ident))
    await assert_postings_match_fts(db, record)
    assert await postings_upgrade.pending(db) == []
    postings.forget(record.table_name)
    assert await postings.is_ready(db, record.table_name)
    assert await ranking() == expected


async def test_usage_bytes_counts_the_postings(db: psycopg.AsyncConnection[Any]) -> None:
    """A store's usage_bytes is what it occupies on disk, and its postings are part of it: a store's size in the
    API and the console grows with them, and a store from before them counts its table alone."""
    record = await new_store(db)
    await add_rows(db, record, [f"turbine blade report number {i} with several distinct words" for i in range(300)])
    record = await current(db, record.id)
    await db.execute(sql.SQL("DELETE FROM {t} WHERE id = 'r0'").format(t=record.layout.ident))
    names = [
        record.table_name,
        tables.blocks_table(record.table_name),
        tables.gone_table(record.table_name),
        tables.totals_table(record.table_name),
    ]
    cur = await db.execute("SELECT pg_total_relation_size(to_regclass(n)) FROM unnest(%s::text[]) AS n", [names])
    sizes = [int(row[0]) for row in await cur.fetchall()]
    assert all(size > 0 for size in sizes)
    assert (await stores.usage_bytes(db, [record]))[record.id] == sum(sizes)
    await drop_postings(db, record)
    cur = await db.execute("SELECT pg_total_relation_size(to_regclass(%s))", [record.table_name])
    assert (await stores.usage_bytes(db, [record]))[record.id] == int((await cur.fetchone() or [0])[0])


def _packed(postings: list[tuple[int, int, int]]) -> bytes:
    return b"".join(struct.pack(">IHH", ord_, tf, dl) for ord_, tf, dl in postings)


def _bm25(n: float, avgdl: float, by_term: dict[str, list[tuple[int, int, int]]], gone: set[int]) -> dict[int, float]:
    scores: dict[int, float] = {}
    for postings_of_term in by_term.values():
        live = [p for p in postings_of_term if p[0] not in gone]
        idf = math.log(1 + max(n - len(live) + 0.5, 0) / (len(live) + 0.5))
        for ord_, tf, dl in live:
            weight = tf * (text.K1 + 1) / (tf + text.K1 * (1 - text.B + text.B * dl / avgdl))
            scores[ord_] = scores.get(ord_, 0.0) + idf * weight
    return scores


@pytest.mark.parametrize("spread", [1, 10**9 // 400], ids=["dense-ords", "sparse-ords"])
def test_score_is_bm25_over_the_packed_runs(spread: int) -> None:
    """`postings.score` on rows as the fetch returns them: several runs a term, gone chunks, the totals; ords
    close together (counted in a dense array) and far apart (an ord near 2^32, counted by np.unique)."""
    rng = random.Random(4)
    by_term = {
        term: [(1 + spread * i, rng.randint(1, 4), rng.randint(5, 60)) for i in rng.sample(range(400), size)]
        for term, size in (("common", 300), ("middle", 60), ("rare", 5))
    }
    gone = {ord_ for ord_, _, _ in by_term["common"][:20]}
    rows: list[tuple[Any, ...]] = []
    for term, postings_of_term in by_term.items():
        half = len(postings_of_term) // 2  # two runs, as a lexeme has before compaction
        rows += [(term, _packed(postings_of_term[:half]), None, 0), (term, _packed(postings_of_term[half:]), None, 0)]
    rows.append(("absent", None, None, 0))
    rows.append((None, None, b"".join(struct.pack(">Q", ord_) for ord_ in sorted(gone)), 1))
    rows.append((None, None, struct.pack(">qq", 380, 380 * 30), 2))
    truth = _bm25(380, 30.0, by_term, gone)
    for k in (1, 10, 40, 1000):
        scored = postings.score(rows, text.TextStats("s", 0, 0, 0), k)
        assert scored.words == ["absent", "common", "middle", "rare"]
        got = dict(zip(scored.ords, scored.scores, strict=True))
        assert not set(got) & gone
        assert len(got) == min(k, len(truth))  # random weights: no ties at the k-th score
        best = sorted(truth.values(), reverse=True)[: len(got)]
        assert sorted(got.values(), reverse=True) == pytest.approx(best, rel=1e-12)
        assert all(got[ord_] == pytest.approx(truth[ord_], rel=1e-12) for ord_ in got)


@pytest.mark.parametrize(
    ("chunks", "offset"),
    [(380, 0), (100, 0), (380, 10**9), (100, 10**9)],
    ids=["bm25", "a-term-in-every-chunk", "far-ords", "far-ords-in-every-chunk"],
)
def test_held_rows_dense_or_sparse_score_as_the_rows_read(chunks: int, offset: int) -> None:
    """Rows the cache holds score as the same rows read from the database: a common word's row kept as one slot
    an ord (dense), a rarer one's a posting each (sparse), a word with one row held and one read, chunks deleted
    since compaction in both, and the weights each row keeps used again while the store's statistics stay and
    computed again when they change. With 100 live chunks the common words have an idf of 0: their chunks still
    match, at score 0. With ords near 10^9 the sums are not kept in a slot an ord (np.unique), and the dense row
    gives its postings one by one."""
    rng = random.Random(6)
    by_term = {
        "common": [(offset + o, rng.randint(1, 4), rng.randint(5, 60)) for o in range(1, 401) if o % 10],
        "middle": [(ord_, rng.randint(1, 4), rng.randint(5, 60)) for ord_ in range(2, 401, 3)],
        "rare": [(ord_, rng.randint(1, 4), rng.randint(5, 60)) for ord_ in (7, 77, 300)],
    }
    gone = {offset + 11, offset + 12, 77, 200, 203}
    gone_row = (None, None, b"".join(struct.pack(">Q", ord_) for ord_ in sorted(gone)), 1)
    # The rows as a search holds them: common's and the first half of middle's; middle's second half and rare's
    # are read. Without the cache every row is read.
    rows_of: dict[str, list[tuple[int | None, list[tuple[int, int, int]]]]] = {
        "common": [(0, by_term["common"])],
        "middle": [(1, by_term["middle"][:60]), (None, by_term["middle"][60:])],
        "rare": [(None, by_term["rare"])],
    }
    held = {
        key: postings.decode(term, seg, 5, _packed(p))
        for term, rows in rows_of.items()
        for seg, (key, p) in enumerate(rows)
        if key is not None
    }
    assert [row.dense for row in held.values()] == [True, False]
    read: list[tuple[Any, ...]] = []
    through_cache: list[tuple[Any, ...]] = []
    for term, rows in rows_of.items():
        for seg, (key, p) in enumerate(rows):
            read.append((term, _packed(p), None, 0, seg, 5, None, len(p)))
            packed = None if key is not None else _packed(p)
            through_cache.append((term, packed, None, 0, seg, 5, key, len(p)))
    for mean_length in (30.0, 24.5):  # a write between two searches changes the mean length
        totals = (None, None, struct.pack(">qq", chunks, int(chunks * mean_length)), 2)
        truth = _bm25(chunks, int(chunks * mean_length) / chunks, by_term, gone)
        kept_before = held[0]._weights
        for k in (5, 1000):
            from_db = postings.score([*read, gone_row, totals], text.TextStats("s", 0, 0, 0), k)
            cached = postings.score([*through_cache, gone_row, totals], text.TextStats("s", 0, 0, 0), k, held)
            assert cached == from_db
            got = dict(zip(cached.ords, cached.scores, strict=True))
            assert not set(got) & gone
            ranked = sorted(truth.values(), reverse=True)
            assert set(got) == {ord_ for ord_, value in truth.items() if value >= ranked[min(k, len(ranked)) - 1]}
            assert all(got[ord_] == pytest.approx(truth[ord_], rel=1e-12, abs=1e-12) for ord_ in got)
            kept = held[0]._weights
            # The first search with these statistics computes the dense row's weights, the next one reuses them.
            assert kept is not None and (kept is not kept_before) == (k == 5)
            kept_before = kept
        if chunks == 100:  # a term in every chunk: weights of 0, and every chunk holding a query term matches
            assert kept is not None and kept[0] == 0.0 and len(got) == len(truth)


def test_a_dense_rows_empty_slots_weigh_nothing_whatever_b(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dense row's slots of chunks without the term have tf and length 0: with b = 1 their BM25 denominator is 0
    too, and they must still add 0 (not NaN, which would drop the other terms' chunks in the row's span)."""
    monkeypatch.setattr(text, "B", 1.0)
    dense = [(ord_, 2, 10) for ord_ in range(10) if ord_ != 4]
    held = {1: postings.decode("w", 0, 5, _packed(dense))}
    assert held[1].dense
    other = ("v", _packed([(4, 1, 10)]), None, 0, 0, 5, None, 1)
    totals = (None, None, struct.pack(">qq", 20, 200), 2)
    read = postings.score(
        [("w", _packed(dense), None, 0, 0, 5, None, 9), other, totals], text.TextStats("s", 0, 0, 0), 20
    )
    cached = postings.score([("w", None, None, 0, 0, 5, 1, 9), other, totals], text.TextStats("s", 0, 0, 0), 20, held)
    assert cached == read and sorted(cached.ords) == list(range(10))


def test_score_keeps_every_tie_at_the_kth_score() -> None:
    """Chunks tied at the k-th score all go back (SQL orders ties by id), up to k + MAX_TIES."""
    rows: list[tuple[Any, ...]] = [("word", _packed([(ord_, 1, 10) for ord_ in range(1, 51)]), None, 0)]
    rows.append((None, None, None, 1))
    rows.append((None, None, struct.pack(">qq", 100, 1000), 2))
    scored = postings.score(rows, text.TextStats("s", 0, 0, 0), 10)
    assert sorted(scored.ords) == list(range(1, 51)) and len(set(scored.scores)) == 1


def test_score_of_a_large_store_bounds_the_kth_from_a_sample_and_stays_exact() -> None:
    """Past postings.SAMPLED_FROM chunks, the k best are picked among those at or above the k-th best of a
    sample: the same chunks and scores as BM25 over everything, ties at the k-th score included."""
    rng = random.Random(8)
    chunks = 200_000
    assert chunks >= postings.SAMPLED_FROM
    by_term = {
        term: [(ord_, rng.randint(1, 4), rng.randint(5, 60)) for ord_ in sorted(rng.sample(range(1, chunks), size))]
        for term, size in (("common", 120_000), ("middle", 30_000), ("rare", 2_000))
    }
    rows: list[tuple[Any, ...]] = [(term, _packed(p), None, 0) for term, p in by_term.items()]
    rows.append((None, None, None, 1))
    rows.append((None, None, struct.pack(">qq", chunks, chunks * 30), 2))
    truth = _bm25(chunks, 30.0, by_term, set())
    ranked = sorted(truth.values(), reverse=True)
    for k in (1, 10, 40, 100):
        scored = postings.score(rows, text.TextStats("s", 0, 0, 0), k)
        got = dict(zip(scored.ords, scored.scores, strict=True))
        # Every chunk scoring at least the k-th best is there (random tf and lengths tie often here).
        assert set(got) == {ord_ for ord_, value in truth.items() if value >= ranked[k - 1] - 1e-12}, k
        assert all(got[ord_] == pytest.approx(truth[ord_], rel=1e-12) for ord_ in got)
    # One term, every chunk the same score: all tied at the k-th, so up to k + MAX_TIES come back.
    flat = [("flat", _packed([(ord_, 1, 10) for ord_ in range(1, chunks)]), None, 0), rows[-2], rows[-1]]
    scored = postings.score(flat, text.TextStats("s", 0, 0, 0), 10)
    assert len(scored.ords) == 10 + postings.MAX_TIES and len(set(scored.scores)) == 1


def test_the_sums_a_thread_keeps_start_at_zero_for_every_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread keeps its sums array between searches (postings._zeroed): a search after another, and after one
    that failed halfway through adding, scores as a search with nothing held (which doesn't use the array)."""
    rng = random.Random(12)
    common = [(o, rng.randint(1, 4), rng.randint(5, 60)) for o in range(1, 5_000)]
    rare = [(o, 1, 10) for o in range(7, 5_000, 50)]
    held = {1: postings.decode("common", 0, 5, _packed(common))}
    totals = (None, None, struct.pack(">qq", 5_000, 5_000 * 30), 2)
    gone = (None, None, b"", 1)
    read = [
        ("common", _packed(common), None, 0, 0, 5, None, len(common)),
        ("rare", _packed(rare), None, 0, 0, 5, None, len(rare)),
    ]
    through_cache = [("common", None, None, 0, 0, 5, 1, len(common)), read[1]]
    stats = text.TextStats("s", 0, 0, 0)
    expected = postings.score([*read, gone, totals], stats, 10)
    assert postings.score([*through_cache, gone, totals], stats, 10, held) == expected
    assert postings.score([*through_cache, gone, totals], stats, 10, held) == expected

    def add_then_fail(row: Any, sums: Any, idf: float, avgdl: float) -> None:
        sums += 1.0
        raise RuntimeError("halfway")

    with monkeypatch.context() as patch:
        patch.setattr(postings_cache.DecodedRow, "add_to", add_then_fail)
        with pytest.raises(RuntimeError, match="halfway"):
            postings.score([*through_cache, gone, totals], stats, 10, held)
    assert postings.score([*through_cache, gone, totals], stats, 10, held) == expected
