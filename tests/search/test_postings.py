"""Keyword search through the postings: they follow every write, the top k is exact BM25 (checked against BM25
computed here from the rows' lexemes), whatever the reference length, and an old store gets them in the
background while it stays searchable."""

from __future__ import annotations

import math
import random
from typing import Any

import psycopg
import pytest
from fakeembed import fake_vector
from psycopg import sql

from search.conftest import DIMS, add_rows, drop_postings, new_store
from vectorstore.search import hybrid, postings, postings_upgrade, service, text
from vectorstore.search.filters import compile_filters
from vectorstore.storage import stores, tables


def stats_of(record: stores.StoreRecord) -> text.TextStats:
    return text.TextStats(record.id, record.analyzed_rows, record.text_avg_length, record.text_min_freq)


async def current(conn: psycopg.AsyncConnection[Any], store_id: str) -> stores.StoreRecord:
    record = await stores.get(conn, store_id)
    assert record is not None
    return record


async def assert_postings_match_fts(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> int:
    """The postings are exactly the rows' lexemes (by key) with their weight at the reference length, no more,
    no less."""
    p = sql.Identifier(tables.postings_table(record.table_name))
    cur = await conn.execute(sql.SQL("SELECT impact FROM {p} WHERE lexeme = 0 AND id IS NULL").format(p=p))
    ref = await cur.fetchone()
    assert ref is not None
    expected = sql.SQL(
        "SELECT hashtextextended(u.lexeme, 0), c.id,"
        " (coalesce(array_length(u.positions, 1), 1) * 2.2 / (coalesce(array_length(u.positions, 1), 1)"
        " + 1.2 * (0.25 + 0.75 * length(c.fts) / {ref}::real)))::real"
        " FROM {t} AS c, unnest(c.fts) AS u"
    ).format(t=sql.Identifier(record.table_name), ref=sql.Literal(float(ref[0])))
    stored = sql.SQL("SELECT lexeme, id, impact FROM {p} WHERE lexeme <> 0").format(p=p)
    for a, b in ((expected, stored), (stored, expected)):
        cur = await conn.execute(sql.SQL("SELECT count(*) FROM (({a}) EXCEPT ALL ({b})) AS d").format(a=a, b=b))
        assert await cur.fetchone() == (0,)
    cur = await conn.execute(sql.SQL("SELECT count(*) FROM {p} WHERE lexeme <> 0").format(p=p))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


def corpus(rows: int, seed: int = 5) -> list[str]:
    """Pseudo-word chunks with a Zipf law over 400 words, so queries mix common and rare terms."""
    rng = random.Random(seed)
    words = [f"w{chr(97 + i // 26)}{chr(97 + i % 26)}x" for i in range(400)]
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    return [" ".join(rng.choices(words, weights, k=rng.randint(8, 40))) for _ in range(rows)]


async def exact_bm25(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, query: str) -> dict[str, float]:
    """BM25 of every matching row, computed here from the rows' lexemes (the same definition as text.py, with
    the statistics the search uses: row count and mean length from ANALYZE, df counted exactly)."""
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
    n, avgdl = record.analyzed_rows, record.text_avg_length
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


async def assert_exact(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, queries: list[str]) -> None:
    assert await postings.is_ready(conn, record.table_name)
    for query in queries:
        truth = await exact_bm25(conn, record, query)
        ranked = sorted(truth.values(), reverse=True)
        for k in (10, 40):
            hits = (await hybrid.run_keyword(conn, record.layout, stats_of(record), query, limit=k)).hits
            assert len(hits) == min(k, len(truth)), query
            for hit in hits:
                # The stored document frequencies of common lexemes are ANALYZE's float4 fractions.
                assert hit.score == pytest.approx(truth[hit.id], rel=1e-4), (query, hit.id)
            # The k-th score is the k-th best there is: no row was left out of the top k.
            assert hits[-1].score == pytest.approx(ranked[len(hits) - 1], rel=1e-4), query


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
    # Content changed (a trigger-filled table's path; here the generated column follows it).
    await db.execute(sql.SQL("UPDATE {t} SET content = 'compressor stall' WHERE id = 'f0'").format(t=t))
    await assert_postings_match_fts(db, record)
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


@pytest.mark.parametrize("first_depth", [0, 1], ids=["default", "one-posting-a-term"])
async def test_top_k_is_exact_bm25(
    db: psycopg.AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch, first_depth: int
) -> None:
    """Exact whichever try finds the top k: with one posting a term read first, most queries can't be
    certified by it and go to MaxScore."""
    if first_depth:
        monkeypatch.setattr(postings, "per_term", lambda k: first_depth)
    texts = corpus(400)
    record = await new_store(db)
    await add_rows(db, record, texts)
    record = await current(db, record.id)
    # The first ANALYZE renormalised the weights to the store's mean length (statistics.renormalize_postings).
    cur = await db.execute(
        sql.SQL("SELECT impact FROM {p} WHERE lexeme = 0 AND id IS NULL").format(
            p=sql.Identifier(tables.postings_table(record.table_name))
        )
    )
    assert await cur.fetchone() == (pytest.approx(record.text_avg_length, rel=1e-6),)
    rng = random.Random(9)
    queries = []
    for _ in range(12):
        words = rng.choice(texts).split()
        start = rng.randrange(0, max(1, len(words) - 6))
        queries.append(" ".join(words[start : start + rng.randint(2, 6)]))
    await assert_exact(db, record, queries)


@pytest.mark.parametrize("reference", [5.0, 1000.0])
async def test_exact_whatever_the_reference_length(db: psycopg.AsyncConnection[Any], reference: float) -> None:
    """Impacts made with a reference length far from the store's mean still give the exact top k: the bound
    allows for the drift (search/postings.py)."""
    texts = corpus(300, seed=11)
    record = await new_store(db)
    await add_rows(db, record, texts)
    record = await current(db, record.id)
    p = sql.Identifier(tables.postings_table(record.table_name))
    async with db.transaction():
        await db.execute(sql.SQL("DELETE FROM {p} WHERE lexeme <> 0").format(p=p))
        await db.execute(sql.SQL("UPDATE {p} SET impact = %s WHERE lexeme = 0 AND id IS NULL").format(p=p), [reference])
        await db.execute(
            sql.SQL("INSERT INTO {p} (lexeme, impact, id) {rows}").format(
                p=p, rows=tables.postings_select(record.layout.ident, sql.SQL("%s::real"))
            ),
            [reference],
        )
    await assert_postings_match_fts(db, record)
    await assert_exact(db, record, [texts[0].split(" ", 3)[-1][:40], " ".join(texts[7].split()[:3]), "wabx wacx"])


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


@pytest.mark.parametrize("legacy", [False, True], ids=["no-postings", "0400-postings"])
async def test_an_old_store_is_upgraded_while_searchable(
    db: psycopg.AsyncConnection[Any], fresh_dsn: str, monkeypatch: pytest.MonkeyPatch, legacy: bool
) -> None:
    """A store from before any postings, or with 0400's (text lexemes, two b-trees), gets 0410's in the
    background, searchable throughout; 0400's table and triggers go once the new ones are complete."""
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
    if legacy:
        for statement in tables.legacy_postings_statements(record.layout):
            await db.execute(statement)
        await tables.copy_chunks(db, record.layout, [tables.ChunkRow("old", "fresh words", fake_vector("o", DIMS))])
    assert await postings_upgrade.pending(db) == [record]
    # The GIN path meanwhile (its idf of rare terms is ANALYZE's estimate, so its order may differ slightly).
    assert set(await ranking()) & set(expected)
    await postings_upgrade.create(db, record)
    # From here on the triggers keep new rows' postings; the backfill must not write them twice.
    async with db.transaction():
        await tables.copy_chunks(db, record.layout, [tables.ChunkRow("new", "fresh words", fake_vector("n", DIMS))])
    monkeypatch.setattr(postings_upgrade, "BACKFILL_BATCH", 7)
    last: str | None = ""
    batches = 0
    while last is not None:
        last = await postings_upgrade.backfill_batch(db, record, last)
        batches += 1
        postings.forget(record.table_name)
        assert not await postings.is_ready(db, record.table_name)
        assert set(await ranking()) & set(expected)
    assert batches == 9  # 51 (or 52) rows, 7 at a time, then one empty batch
    await assert_postings_match_fts(db, record)
    await service.upgrade_all(fresh_dsn)  # marks it ready, and is a no-op on the rows
    await assert_postings_match_fts(db, record)
    cur = await db.execute("SELECT to_regclass(%s)", [tables.legacy_postings_table(record.table_name)])
    assert await cur.fetchone() == (None,)
    # Only the new triggers write now: a delete leaves the new postings exact.
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
    cur = await db.execute(
        "SELECT pg_total_relation_size(to_regclass(%s)), pg_total_relation_size(to_regclass(%s))",
        [record.table_name, tables.postings_table(record.table_name)],
    )
    row = await cur.fetchone()
    assert row is not None
    table_bytes, postings_bytes = int(row[0]), int(row[1])
    assert postings_bytes > 0
    assert (await stores.usage_bytes(db, [record]))[record.id] == table_bytes + postings_bytes
    await drop_postings(db, record)
    assert (await stores.usage_bytes(db, [record]))[record.id] == table_bytes
