"""Keyword (BM25) and hybrid statements against a real table: ranking, scores, filters, hostile queries."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from fakeembed import fake_vector

from search.conftest import DIMS, add_rows, new_store
from vectorstore.search import hybrid, text
from vectorstore.search.filters import compile_filters
from vectorstore.storage import stores

FILLER = [f"ordinary note {i} about the weather and the garden" for i in range(60)]


def stats_of(record: stores.StoreRecord) -> text.TextStats:
    return text.TextStats(record.id, record.analyzed_rows, record.text_avg_length, record.text_min_freq)


async def fresh(conn: psycopg.AsyncConnection[Any], store_id: str) -> stores.StoreRecord:
    record = await stores.get(conn, store_id)
    assert record is not None
    return record


async def keyword(
    conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, query: str, limit: int = 10, **kw: Any
) -> hybrid.Result:
    return await hybrid.run_keyword(conn, record.layout, stats_of(record), query, limit=limit, **kw)


async def fused(
    conn: psycopg.AsyncConnection[Any],
    record: stores.StoreRecord,
    query: str,
    vector_of: str,
    *,
    limit: int = 5,
    depth: int = 40,
    **kw: Any,
) -> hybrid.Result:
    """A hybrid search for `query` whose query vector is the fake embedder's vector of `vector_of`."""
    vector = fake_vector(vector_of, DIMS)
    return await hybrid.run_hybrid(
        conn, record.layout, stats_of(record), query, vector, limit=limit, depth=depth, ef_search=40, **kw
    )


async def test_statistics_feed_bm25(db: psycopg.AsyncConnection[Any]) -> None:
    record = await new_store(db)
    await add_rows(db, record, [*FILLER, "the supersonic boundary layer"])
    record = await fresh(db, record.id)
    assert record.analyzed_rows == len(FILLER) + 1
    assert record.text_avg_length > 0 and 0 < record.text_min_freq <= 1
    cur = await db.execute("SELECT freq FROM text_stats WHERE vector_store_id = %s AND lexeme = 'weather'", [record.id])
    row = await cur.fetchone()
    assert row is not None and row[0] == pytest.approx(len(FILLER) / (len(FILLER) + 1), rel=0.01)


async def test_rare_terms_outweigh_common_ones(db: psycopg.AsyncConnection[Any]) -> None:
    record = await new_store(db)
    ids = await add_rows(
        db,
        record,
        [*FILLER, "garden garden garden weather weather", "a single mention of the shockwave", "shockwave and garden"],
    )
    record = await fresh(db, record.id)
    result = await keyword(db, record, "shockwave garden")
    ranked = [hit.id for hit in result.hits]
    assert result.terms == 2
    # Both terms first, then the rare term alone, and only then the common term three times over.
    assert ranked[:3] == [ids[-1], ids[-2], ids[-3]]
    assert all(0.0 < hit.score < 1.0 for hit in result.hits)
    assert [hit.score for hit in result.hits] == sorted((hit.score for hit in result.hits), reverse=True)


async def test_english_stems_and_simple_does_not(db: psycopg.AsyncConnection[Any]) -> None:
    english = await new_store(db, "vs_english")
    simple = await new_store(db, "vs_simple", language="simple")
    for record in (english, simple):
        await add_rows(db, record, [*FILLER, "the engines were running hot"])
    english, simple = await fresh(db, "vs_english"), await fresh(db, "vs_simple")
    assert [hit.content for hit in (await keyword(db, english, "engine runs")).hits] == ["the engines were running hot"]
    assert (await keyword(db, simple, "engine runs")).hits == []
    assert [hit.content for hit in (await keyword(db, simple, "engines")).hits] == ["the engines were running hot"]


@pytest.mark.parametrize(
    "query",
    [
        "it's O'Neil's \\ backslash \\\\ 'quoted'",
        "a & b | !c <-> d:* (e) 'f':A",
        "погранслой сверхзвуковой",
        "超音速の境界層",
        "😀 🚀 \u200b\ufeff",
    ],
    ids=["quotes", "tsquery-syntax", "cyrillic", "japanese", "emoji"],
)
async def test_hostile_queries_are_just_text(db: psycopg.AsyncConnection[Any], query: str) -> None:
    record = await new_store(db)
    await add_rows(db, record, [*FILLER, query])
    record = await fresh(db, record.id)
    result = await keyword(db, record, query)
    if result.terms:
        # The document made of the query's own text matches it, whatever operators it holds.
        assert result.hits and result.hits[0].content == query
    hybrid_result = await fused(db, record, query, query)
    assert len(hybrid_result.hits) == 5


async def test_very_long_query_uses_its_rarest_terms(db: psycopg.AsyncConnection[Any]) -> None:
    record = await new_store(db)
    await add_rows(db, record, [*FILLER, "a note about the hovercraft"])
    record = await fresh(db, record.id)
    query = " ".join(f"garden weather note{i}" for i in range(3000)) + " hovercraft"
    result = await keyword(db, record, query)
    assert result.terms == text.MAX_TERMS
    hybrid_result = await fused(db, record, query, query)
    assert len(hybrid_result.hits) == 5


async def test_stop_words_only_fall_back_to_vector(db: psycopg.AsyncConnection[Any]) -> None:
    record = await new_store(db)
    await add_rows(db, record, FILLER)
    record = await fresh(db, record.id)
    assert (await keyword(db, record, "the of and !!")) == hybrid.Result([], 0)
    target = FILLER[7]
    result = await fused(db, record, "the of and", target, limit=3)
    assert result.terms == 0
    # Scored as a vector search: the exact vector match scores 1.0 (cosine similarity), not a fused score.
    assert result.hits[0].content == target and result.hits[0].score == pytest.approx(1.0)
    # Words no row holds: the keyword ranking is empty too, and the page is scored the same way.
    result = await fused(db, record, "xylophone zeppelin", target, limit=3)
    assert (result.terms, result.keyword_rows) == (2, 0)
    assert result.hits[0].content == target and result.hits[0].score == pytest.approx(1.0)


async def test_hybrid_fuses_both_legs_with_scores_in_range(db: psycopg.AsyncConnection[Any]) -> None:
    record = await new_store(db)
    ids = await add_rows(db, record, [*FILLER, "the hypersonic inlet", "unrelated words entirely"])
    record = await fresh(db, record.id)
    # The query's vector is exactly the last row's; its words are exactly in the one before.
    result = await fused(db, record, "hypersonic inlet", "unrelated words entirely")
    top = [hit.id for hit in result.hits[:2]]
    assert set(top) == {ids[-1], ids[-2]}
    assert all(0.0 < hit.score <= 1.0 for hit in result.hits)
    # Each is first in one leg only: (1/61) / (2/61) = 0.5.
    assert result.hits[0].score == pytest.approx(0.5, abs=0.01)
    # Weighting the text leg alone puts the keyword match first, with the top score.
    text_only = await fused(
        db,
        record,
        "hypersonic inlet",
        "unrelated words entirely",
        weights=hybrid.Weights(embedding=0.0, text=1.0),
    )
    assert text_only.hits[0].id == ids[-2] and text_only.hits[0].score == pytest.approx(1.0)


async def test_filters_apply_to_both_legs_and_fill_the_page(db: psycopg.AsyncConnection[Any]) -> None:
    record = await new_store(db)
    texts = [f"turbine blade report {i}" for i in range(200)]
    attributes = [{"team": "a" if i % 20 == 0 else "b", "n": i} for i in range(200)]
    ids = await add_rows(db, record, texts, attributes)
    record = await fresh(db, record.id)
    where, params = compile_filters({"type": "eq", "key": "team", "value": "a"})
    allowed = {ids[i] for i in range(200) if i % 20 == 0}
    for mode in ("keyword", "hybrid"):
        if mode == "keyword":
            result = await keyword(db, record, "turbine blade", limit=10, where=where, where_params=params)
        else:
            result = await fused(
                db, record, "turbine blade", "turbine blade report 3", limit=10, where=where, where_params=params
            )
        assert {hit.id for hit in result.hits} == allowed, mode
    # A filter that keeps more than the page: exactly max_num_results come back.
    where, params = compile_filters({"type": "lt", "key": "n", "value": 100})
    result = await fused(
        db, record, "turbine", "x", limit=25, depth=hybrid.depth_for(25), where=where, where_params=params
    )
    assert len(result.hits) == 25 and all(hit.attributes["n"] < 100 for hit in result.hits)


async def test_common_terms_stop_generating_candidates(
    db: psycopg.AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the GIN path (filtered searches), past the budget a term only scores rows that rarer terms brought
    in; the postings path (unfiltered) has no budget and still finds every match."""
    record = await new_store(db)
    await add_rows(db, record, [*FILLER, "garden rarity"], [{"team": "a"}] * (len(FILLER) + 1))
    record = await fresh(db, record.id)
    where, params = compile_filters({"type": "eq", "key": "team", "value": "a"})
    assert len((await keyword(db, record, "garden rarity", limit=100, where=where, where_params=params)).hits) == (
        len(FILLER) + 1
    )
    monkeypatch.setattr(text, "CANDIDATE_BUDGET", 5)
    result = await keyword(db, record, "garden rarity", limit=100, where=where, where_params=params)
    assert [hit.content for hit in result.hits] == ["garden rarity"]
    unfiltered = await keyword(db, record, "garden rarity", limit=100)
    assert len(unfiltered.hits) == len(FILLER) + 1 and unfiltered.hits[0].content == "garden rarity"
