"""Export: one store out of the database into an archive, streamed in one consistent snapshot.

A REPEATABLE READ, READ ONLY transaction sees the store as of its first query, so a file attached or a chunk
written while the export runs is either wholly in the archive or not at all. Memory stays flat: files come
one at a time through a server-side cursor, chunks through a binary COPY in batches of CHUNK_BATCH.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from vectorstore.archive.format import CHUNK_BATCH, FORMAT_NAME, VERSION, Writer, encode_chunks
from vectorstore.storage import stores

# Store settings an archive carries: what a new store needs to be the same store.
STORE_FIELDS = (
    "id",
    "name",
    "description",
    "metadata",
    "declared",
    "model",
    "dimensions",
    "distance",
    "vector_type",
    "hnsw_m",
    "hnsw_ef_construction",
    "ef_search",
    "expires_after",
    "language",
    "quantization",
    "created_at",
)
FILE_FIELDS = (
    "id, filename, purpose, bytes, content_type, sha256, owner, created_at, status, last_error, usage_bytes,"
    " chunk_count, max_chunk_size_tokens, chunk_overlap_tokens, attributes, attached_at"
)
VECTOR_HEADER_BYTES = 4
"""pgvector's binary vector: u16 dimensions, u16 unused, then the elements."""


class StoreNotFound(Exception):
    pass


@dataclass
class Counts:
    files: int = 0
    file_bytes: int = 0
    chunks: int = 0
    sources: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"files": self.files, "file_bytes": self.file_bytes, "chunks": self.chunks, "sources": self.sources}


Tick = Callable[[Counts], None]


async def find_store(conn: psycopg.AsyncConnection[Any], ref: str) -> stores.StoreRecord:
    """A store by id, else by name (which must then name exactly one)."""
    record = await stores.get(conn, ref)
    if record is not None:
        return record
    cur = await conn.execute("SELECT id FROM vector_stores WHERE name = %s ORDER BY seq", [ref])
    ids = [row[0] for row in await cur.fetchall()]
    if len(ids) > 1:
        raise StoreNotFound(f"{len(ids)} stores are named {ref!r} ({', '.join(ids)}): export one by its id")
    found = await stores.get(conn, ids[0]) if ids else None
    if found is None:
        raise StoreNotFound(f"no store has the id or name {ref!r}")
    return found


async def export_store(
    conn: psycopg.AsyncConnection[Any],
    ref: str,
    out: BinaryIO,
    tick: Tick | None = None,
    *,
    expect: Callable[[int], None] | None = None,
) -> tuple[stores.StoreRecord, Counts, int]:
    """Write the store `ref` to `out`; (the store, what was written, archive bytes). `conn` must not be in a
    transaction: this one opens its own snapshot."""
    await conn.set_autocommit(False)
    await conn.set_read_only(True)
    await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
    try:
        async with conn.transaction():
            record = await find_store(conn, ref)
            return (record, *await _write(conn, record, out, tick or (lambda _: None), expect or (lambda _: None)))
    finally:
        await conn.rollback()


async def _expected(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> dict[str, int]:
    cur = await conn.execute(
        sql.SQL(
            "SELECT (SELECT count(*) FROM vector_store_files WHERE vector_store_id = %s), (SELECT count(*) FROM {t})"
        ).format(t=sql.Identifier(record.table_name)),
        [record.id],
    )
    row = await cur.fetchone()
    assert row is not None
    return {"files": int(row[0]), "chunks": int(row[1])}


async def _write(
    conn: psycopg.AsyncConnection[Any],
    record: stores.StoreRecord,
    out: BinaryIO,
    tick: Tick,
    expect: Callable[[int], None],
) -> tuple[Counts, int]:
    writer = Writer(out)
    counts = Counts()
    header: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": VERSION,
        "exported_at": int(time.time()),
        "exporter": f"vectorstore {importlib.metadata.version('vectorstore')}",
        "store": {field: getattr(record, field) for field in STORE_FIELDS},
        # For progress only: the end record's counts are the ones an import checks.
        "expected": await _expected(conn, record),
    }
    writer.json("H", header)
    expect(header["expected"]["chunks"])
    async with conn.cursor(name="archive_files", row_factory=dict_row) as files:
        # One file's bytes in memory at a time (itersize 1): the largest file bounds the memory, not the store.
        files.itersize = 1
        await files.execute(
            "SELECT f.id, f.filename, f.purpose, f.bytes, f.content_type, f.sha256, f.owner, f.created_at,"
            " v.status, v.last_error, v.usage_bytes, v.chunk_count, v.max_chunk_size_tokens, v.chunk_overlap_tokens,"
            " v.attributes, v.created_at AS attached_at, v.chunking_default, f.content"
            " FROM vector_store_files v JOIN files f ON f.id = v.file_id WHERE v.vector_store_id = %s ORDER BY v.seq",
            [record.id],
        )
        async for row in files:
            content = bytes(row.pop("content"))
            writer.json("F", row)
            writer.data(content)
            counts.files += 1
            counts.file_bytes += len(content)
            tick(counts)
    await _write_chunks(conn, record, writer, counts, tick)
    cur = await conn.execute(
        "SELECT source, path, file_id, sha256, fingerprint, synced_at FROM source_files"
        " WHERE vector_store_id = %s ORDER BY source, path",
        [record.id],
    )
    sources = [list(row) for row in await cur.fetchall()]
    if sources:
        writer.json("S", sources)
    counts.sources = len(sources)
    writer.end(counts.as_dict())
    tick(counts)
    return counts, writer.bytes_written


async def _write_chunks(
    conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, writer: Writer, counts: Counts, tick: Tick
) -> None:
    statement = sql.SQL(
        "COPY (SELECT id, file_id, chunk_index, filename, content, attributes, embedding FROM {t})"
        " TO STDOUT (FORMAT BINARY)"
    ).format(t=sql.Identifier(record.table_name))
    rows: list[tuple[Any, ...]] = []
    vectors = bytearray()

    def flush() -> None:
        writer.record("C", encode_chunks(rows, bytes(vectors)))
        counts.chunks += len(rows)
        rows.clear()
        vectors.clear()
        tick(counts)

    async with conn.cursor() as cur, cur.copy(statement) as copy:
        # bytea for jsonb and the vector: their binary forms as sent, parsed by no one. jsonb's is a version
        # byte then the JSON text, which the archive keeps as a string: exact, whatever its numbers hold.
        copy.set_types(["text", "text", "int4", "text", "text", "bytea", "bytea"])
        async for chunk_id, file_id, chunk_index, filename, content, attributes, embedding in copy.rows():
            rows.append((chunk_id, file_id, chunk_index, filename, content, bytes(attributes[1:]).decode()))
            vectors += embedding[VECTOR_HEADER_BYTES:]
            if len(rows) >= CHUNK_BATCH:
                flush()
    if rows:
        flush()
