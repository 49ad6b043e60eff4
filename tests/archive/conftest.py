"""A small store written through the storage layer (files, attachments, chunks in several COPY batches, a
prototype row, a source path) and its archive, for the archive tests; and helpers that look at a database
to prove an import left nothing behind."""

from __future__ import annotations

import io
import json
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgdb import new_database

from config import Spec, load_spec
from vectorstore.archive.dump import export_store
from vectorstore.storage import files, stores, tables
from vectorstore.storage.migrations import migrate

DIMS = 8
CHUNKS = 2500  # three COPY batches of 1,024
STORE_ID = "vs_archive0001"


@dataclass(frozen=True)
class Built:
    dsn: str
    archive: bytes
    file_ids: tuple[str, ...]


def spec_for(tmp: Path, stores_: list[dict[str, Any]] | None = None) -> Spec:
    data = {
        "version": 1,
        "name": "archive-test",
        "namespace": "test",
        "database": {"cluster": {"name": "pg"}},
        "auth": {"keys": [{"name": "writer", "api_key": {"secret": "s", "key": "w"}, "scope": "write"}]},
        "embedding": {"base_url": "http://127.0.0.1:9", "model": "fake-model", "dimensions": DIMS},
        "stores": stores_ or [],
    }
    path = tmp / "stack.yaml"
    path.write_text(json.dumps(data))
    return load_spec(path)


def vector(rng: random.Random) -> list[float]:
    return [rng.uniform(-1, 1) for _ in range(DIMS)]


async def build_store(dsn: str) -> tuple[str, ...]:
    rng = random.Random(17)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(conn)
        from pgvector.psycopg import register_vector_async

        await register_vector_async(conn)
        async with conn.transaction():
            record = await stores.insert(
                conn,
                stores.NewStore(
                    id=STORE_ID,
                    name="handbook",
                    description="for the archive tests",
                    metadata={"team": "docs"},
                    declared=False,
                    model="fake-model",
                    dimensions=DIMS,
                    distance="cosine",
                    hnsw_m=16,
                    hnsw_ef_construction=64,
                    ef_search=100,
                ),
            )
            ids = []
            for index, (name, body) in enumerate([("a.md", b"# Alpha\n" * 50), ("empty.txt", b"")]):
                file = await files.insert_file(
                    conn, filename=name, purpose="assistants", content=body, content_type="text/plain", owner="w"
                )
                ids.append(file.id)
                await conn.execute(
                    "INSERT INTO vector_store_files (vector_store_id, file_id, status, max_chunk_size_tokens,"
                    " chunk_overlap_tokens, attributes, generation, chunk_count, usage_bytes, chunking_default)"
                    " VALUES (%s, %s, %s, 800, 400, %s, %s, %s, %s, %s)",
                    [
                        STORE_ID,
                        file.id,
                        "completed",
                        json.dumps({"n": index, "tag": "x"}),
                        index + 1,
                        0,
                        len(body),
                        index == 0,  # one chunked by the store's default, one with its own strategy
                    ],
                )
            rows = [
                tables.ChunkRow(
                    id=f"chunk-{i:05d}",
                    content=f"row {i} about {'alpha' if i % 2 else 'beta'} é ✓",
                    embedding=vector(rng),
                    file_id=ids[0],
                    chunk_index=i,
                    filename="a.md",
                    attributes={"i": i, "even": i % 2 == 0, "big": 12345678901234567890},
                )
                for i in range(CHUNKS)
            ]
            rows.append(tables.ChunkRow(id="emb_proto", content="a prototype row", embedding=vector(rng)))
            await tables.copy_chunks(conn, record.layout, rows)
            await conn.execute(
                "INSERT INTO source_files (vector_store_id, source, path, file_id, sha256, fingerprint)"
                " VALUES (%s, 'docs', 'a.md', %s, 'abc', '12:34')",
                [STORE_ID, ids[0]],
            )
    return tuple(ids)


@pytest.fixture(scope="module")
def source_dsn(pg_dsn: str) -> Iterator[str]:
    yield from new_database(pg_dsn, "arch")


@pytest.fixture(scope="module")
async def built(source_dsn: str) -> Built:
    file_ids = await build_store(source_dsn)
    out = io.BytesIO()
    async with await psycopg.AsyncConnection.connect(source_dsn, autocommit=True) as conn:
        await export_store(conn, STORE_ID, out)
    return Built(source_dsn, out.getvalue(), file_ids)


@pytest.fixture
async def target_dsn(fresh_dsn: str) -> AsyncIterator[str]:
    """An empty database with the schema (as after `serve` once), where imports go."""
    async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
        await migrate(conn)
    yield fresh_dsn


async def footprint(dsn: str) -> dict[str, int]:
    """What an import adds: stores, files, attachments, source paths, jobs, store tables."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        out = {}
        for table in ("vector_stores", "files", "vector_store_files", "source_files", "ingest_jobs", "text_stats"):
            cur = await conn.execute(f"SELECT count(*) FROM {table}")
            row = await cur.fetchone()
            out[table] = int(row[0]) if row else -1
        cur = await conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'vs\\_%'")
        row = await cur.fetchone()
        out["store tables"] = int(row[0]) if row else -1
        return out
