"""Quantized stores: half-precision columns, and binary indexes whose searches rescore with the full vectors."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from config import Spec, load_spec
from config.model import Quantization
from search.conftest import DIMS, new_store
from vectorstore.search import hybrid, statistics, text, vector
from vectorstore.search.filters import compile_filters
from vectorstore.search.vector import NO_FILTER, binary_candidates, nearest_params, run_search, search_statement
from vectorstore.storage import reconcile, stores, tables

ROWS = 1500


async def quantized_store(
    conn: psycopg.AsyncConnection[Any], quantization: Quantization, *, dims: int = 64
) -> tuple[stores.StoreRecord, list[list[float]]]:
    record = await new_store(conn, f"vs_q{quantization}", dims=dims, ef_search=100, quantization=quantization)
    rng = random.Random(quantization)
    # Clustered vectors, like real embeddings: 30 centres with noise around them.
    centres = [[rng.gauss(0, 1) for _ in range(dims)] for _ in range(30)]
    vectors = [[c + rng.gauss(0, 0.35) for c in centres[i % 30]] for i in range(ROWS)]
    rows = [
        tables.ChunkRow(f"r{i}", f"row {i} about topic {i % 30}", v, attributes={"n": i}) for i, v in enumerate(vectors)
    ]
    async with conn.transaction():
        await tables.copy_chunks(conn, record.layout, rows)
    await statistics.keep_current(conn, record, force=True)
    current = await stores.get(conn, record.id)
    assert current is not None
    return current, vectors


async def test_columns_and_indexes(db: psycopg.AsyncConnection[Any]) -> None:
    for quantization, column, index_fragment in (
        ("none", "vector(64)", "vector_cosine_ops"),
        ("halfvec", "halfvec(64)", "halfvec_cosine_ops"),
        ("binary", "vector(64)", "(binary_quantize(embedding))::bit(64)) bit_hamming_ops"),
    ):
        record, _ = await quantized_store(db, quantization)  # type: ignore[arg-type]
        cur = await db.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = to_regclass(%s) AND attname = 'embedding'",
            [record.table_name],
        )
        assert await cur.fetchone() == (column,)
        cur = await db.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [f"{record.table_name}_hnsw"])
        row = await cur.fetchone()
        assert row is not None and index_fragment in row[0], row


@pytest.mark.parametrize("quantization", ["halfvec", "binary"])
async def test_searches_use_the_index_and_rescore(
    db: psycopg.AsyncConnection[Any], quantization: Quantization, monkeypatch: pytest.MonkeyPatch
) -> None:
    record, vectors = await quantized_store(db, quantization)
    # The plan walks the store's HNSW index (the query expression matches the indexed one). With the default
    # 400 binary candidates out of 1,500 rows the planner rightly prefers a scan: ask for fewer here.
    monkeypatch.setattr(vector, "MIN_BINARY_CANDIDATES", 40)
    query = record.layout.to_db(vectors[5])
    statement = search_statement(record.layout, NO_FILTER)
    params = nearest_params(record.layout, query, [], 10, exact=False)
    cur = await db.execute(b"EXPLAIN (FORMAT JSON) " + statement.as_bytes(db), params)
    row = await cur.fetchone()
    assert row is not None
    assert f'"Index Name": "{record.table_name}_hnsw"' in json.dumps(row[0])
    # A stored vector finds itself first, at distance ~0: binary candidates are rescored with the full vector.
    hits = await run_search(db, record.layout, vectors[5], limit=10, ef_search=record.ef_search)
    assert hits[0].id == "r5" and hits[0].distance == pytest.approx(0.0, abs=1e-3)
    assert [hit.distance for hit in hits] == sorted(hit.distance for hit in hits)
    # Recall against an exact scan stays high on clustered vectors.
    found = 0
    for i in range(0, 200, 10):
        exact = await run_search(db, record.layout, vectors[i], limit=10, ef_search=10, exact=True)
        approx = await run_search(db, record.layout, vectors[i], limit=10, ef_search=record.ef_search)
        found += len({hit.id for hit in exact} & {hit.id for hit in approx})
    assert found / 200 >= 0.9


async def test_binary_with_filters_and_hybrid(db: psycopg.AsyncConnection[Any]) -> None:
    record, vectors = await quantized_store(db, "binary")
    where, params = compile_filters({"type": "lt", "key": "n", "value": 60})
    hits = await run_search(
        db, record.layout, vectors[700], limit=30, ef_search=record.ef_search, where=where, where_params=params
    )
    assert len(hits) == 30 and all(hit.attributes["n"] < 60 for hit in hits)
    stats = text.TextStats(record.id, record.analyzed_rows, record.text_avg_length, record.text_min_freq)
    result = await hybrid.run_hybrid(
        db, record.layout, stats, "topic 7", vectors[7], limit=10, depth=40, ef_search=record.ef_search
    )
    assert result.hits[0].id == "r7"
    assert binary_candidates(10) >= 400 and binary_candidates(10, ef_search=800) == 800


def spec_with(directory: Path, quantization: str) -> Spec:
    path = directory / f"{quantization}.yaml"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "namespace": "t",
                "database": {"cluster": {"name": "pg"}},
                "auth": {"keys": [{"name": "k", "api_key": {"secret": "s", "key": "k"}, "scope": "write"}]},
                "embedding": {"base_url": "http://127.0.0.1:9", "model": "m", "dimensions": DIMS},
                "stores": [{"name": "q", "id": "vs_quant1", "index": {"quantization": quantization}}],
            }
        )
    )
    return load_spec(path)


async def test_changing_quantization_with_data_becomes_a_migration(
    db: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """Reconcile makes an empty store again with the new setting; with rows, it records an online migration
    (vectorstore/migration, tested in tests/migration) and leaves the table as it is."""
    await reconcile.reconcile(db, spec_with(tmp_path, "none"))
    plan = await reconcile.reconcile(db, spec_with(tmp_path, "binary"))
    assert plan.counts()["update"] == 1
    record = await stores.get(db, "vs_quant1")
    assert record is not None and record.quantization == "binary"
    async with db.transaction():
        await tables.copy_chunks(db, record.layout, [tables.ChunkRow("x", "x", [1.0] + [0.0] * (DIMS - 1))])
    [migrate] = (await reconcile.reconcile(db, spec_with(tmp_path, "halfvec"))).of("migrate")
    assert "quantization: 'binary' -> 'halfvec'" in migrate.reason and "no embedding" in migrate.reason
    assert (await stores.get(db, "vs_quant1")) == record
    cur = await db.execute(sql.SQL("SELECT count(*) FROM {t}").format(t=sql.Identifier(record.table_name)))
    assert await cur.fetchone() == (1,)


async def test_binary_pages_past_ef_search_limits(db: psycopg.AsyncConnection[Any]) -> None:
    """A large page or rerank depth must not ask pgvector for an ef_search above its 1,000 maximum."""
    record, vectors = await quantized_store(db, "binary")
    stats = text.TextStats(record.id, record.analyzed_rows, record.text_avg_length, record.text_min_freq)
    result = await hybrid.run_hybrid(
        db, record.layout, stats, "topic 3", vectors[3], limit=100, depth=hybrid.depth_for(100, 200), ef_search=100
    )
    assert len(result.hits) == 100
    hits = await run_search(db, record.layout, vectors[3], limit=200, ef_search=900)
    assert len(hits) == 200 and hits[0].id == "r3"
