"""What a migration will cost, for `vectorstore plan`: the kind of work, chunks, estimated tokens, extra disk.

Read-only. Tokens are estimated at 4 characters a token (what the builder's rate limit counts too); the extra
disk is the active generation's size scaled by how the row changes (the vector's bytes in the table and in its
HNSW index; the text and attributes are copied as they are): both generations exist until `keep_previous` ends.
"""

from __future__ import annotations

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

    def describe(self, old: Shape, new: Shape) -> str:
        if self.reembed:
            work = f"re-embed every chunk with {new.model} ({new.dimensions} dimensions)"
        else:
            work = "copy the vectors into a new table (no embedding call)"
        tokens = f", ~{self.tokens:,} tokens" if self.reembed else ""
        return f"{work}: {self.chunks:,} chunks{tokens}, ~{_size(self.extra_bytes)} extra disk until keep_previous ends"


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
    return Estimate(reembed, chunks, characters // 4 if reembed else 0, int(size * new_row / old_row))


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
