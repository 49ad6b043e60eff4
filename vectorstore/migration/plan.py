"""What a migration will cost, for `vectorstore plan`: the kind of work, chunks, estimated tokens, extra disk.

Read-only. Tokens are estimated at 4 characters a token (what the builder's rate limit counts too); the extra
disk is the active generation's size scaled by how the row changes (the vector's bytes in the table and in its
HNSW index; the text and attributes are copied as they are): both generations exist until `keep_previous` ends.

A re-chunk counts the files the store's default chunked (the others keep their chunks), and estimates their new
chunks from their text without the old overlap, cut into windows of the new size less the new overlap. Its
tokens to embed are an upper bound: chunks whose text doesn't change keep their vectors unless the model changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from vectorstore.migration.shapes import Shape
from vectorstore.storage import stores

_ROW_OVERHEAD = 150  # tuple header, id, file_id, chunk_index, created_at, index entries: roughly, in bytes


@dataclass(frozen=True)
class Estimate:
    reembed: bool
    chunks: int
    tokens: int
    extra_bytes: int
    rechunk_files: int = 0
    """Files chunked by the store's default, to cut again (0: no re-chunk)."""
    rechunk_old_chunks: int = 0
    rechunk_new_chunks: int = 0
    rechunk: bool = False

    def describe(self, old: Shape, new: Shape) -> str:
        disk = f"~{_size(self.extra_bytes)} extra disk until keep_previous ends"
        if self.rechunk:
            strategy = new.strategy
            assert strategy is not None
            cut = (
                f"re-chunk {self.rechunk_files:,} file(s) chunked by the store's default from their stored bytes"
                f" ({strategy.max_chunk_size_tokens} tokens, {strategy.chunk_overlap_tokens} overlap):"
                f" {self.rechunk_old_chunks:,} chunks become ~{self.rechunk_new_chunks:,}"
            )
            if self.reembed:
                rest = f"re-embed every chunk with {new.model} ({new.dimensions} dimensions)"
                return f"{cut}; {rest}: ~{self.chunks:,} chunks, ~{self.tokens:,} tokens, {disk}"
            return (
                f"{cut}, at most ~{self.tokens:,} tokens to embed (unchanged chunks keep their vectors);"
                f" other chunks copied: {self.chunks - self.rechunk_new_chunks:,}, {disk}"
            )
        if self.reembed:
            work = f"re-embed every chunk with {new.model} ({new.dimensions} dimensions)"
        else:
            work = "copy the vectors into a new table (no embedding call)"
        tokens = f", ~{self.tokens:,} tokens" if self.reembed else ""
        return f"{work}: {self.chunks:,} chunks{tokens}, {disk}"


def _vector_bytes(shape: Shape) -> int:
    return shape.dimensions * (2 if shape.vector_type == "halfvec" else 4)


async def estimate(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, target: Shape) -> Estimate:
    source = Shape.of_record(record)
    cur = await conn.execute(
        sql.SQL("SELECT count(*), COALESCE(sum(length(content)), 0) FROM {t}").format(
            t=sql.Identifier(record.table_name)
        )
    )
    row = await cur.fetchone()
    chunks, characters = (int(row[0]), int(row[1])) if row else (0, 0)
    size = (await stores.usage_bytes(conn, [record])).get(record.id, 0)
    text = characters / chunks if chunks else 0
    old_row = text + 2 * _vector_bytes(source) + _ROW_OVERHEAD
    new_row = text + 2 * _vector_bytes(target) + _ROW_OVERHEAD
    reembed = target.work_from(source) == "reembed"
    extra = int(size * new_row / old_row)
    strategy = target.strategy
    if strategy is None or not target.rechunks_from(source):
        return Estimate(reembed, chunks, characters // 4 if reembed else 0, extra)
    # The files to cut again, each with its chunks' characters and its current chunking.
    cur = await conn.execute(
        sql.SQL(
            "SELECT f.max_chunk_size_tokens, f.chunk_overlap_tokens, count(c.id), COALESCE(sum(length(c.content)), 0)"
            " FROM vector_store_files f LEFT JOIN {t} c ON c.file_id = f.file_id WHERE f.vector_store_id = %s"
            " AND f.chunking_default AND f.status = 'completed'"
            " AND (f.max_chunk_size_tokens, f.chunk_overlap_tokens) <> (%s, %s) GROUP BY f.vector_store_id, f.file_id"
        ).format(t=sql.Identifier(record.table_name)),
        [record.id, strategy.max_chunk_size_tokens, strategy.chunk_overlap_tokens],
    )
    files = old_chunks = old_characters = new_chunks = new_tokens = 0
    for size_tokens, overlap, count, chars in await cur.fetchall():
        files += 1
        old_chunks += int(count)
        old_characters += int(chars)
        # The file's own tokens: its chunks' less what each shares with the next.
        text_tokens = int(chars) / 4 * (size_tokens - overlap) / size_tokens if count else 0
        step = strategy.max_chunk_size_tokens - strategy.chunk_overlap_tokens
        cut = max(1, math.ceil(max(text_tokens - strategy.chunk_overlap_tokens, 1) / step)) if count else 0
        new_chunks += cut
        new_tokens += int(text_tokens + (cut - 1) * strategy.chunk_overlap_tokens) if cut else 0
    all_chunks = chunks - old_chunks + new_chunks
    # With a new model every other chunk is embedded again too.
    tokens = new_tokens + ((characters - old_characters) // 4 if reembed else 0)
    return Estimate(reembed, all_chunks, tokens, extra, files, old_chunks, new_chunks, rechunk=True)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
