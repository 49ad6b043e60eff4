"""The `vector_stores` registry: typed records, reads, and the OpenAI `vector_store` object.

Reconcile and the API both go through here, so a store created either way looks the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from config.model import Distance, Quantization, VectorType, vector_type_for
from vectorstore.storage import tables

_COLUMNS = (
    "id, seq, name, description, metadata, declared, model, dimensions, distance, vector_type, hnsw_m,"
    " hnsw_ef_construction, ef_search, table_name, expires_after, created_at, last_active_at, language, text_search,"
    " analyzed_rows, text_avg_length, text_min_freq, quantization, chunk_max_tokens, chunk_overlap_tokens"
)
TextSearchState = Literal["upgrading", "ready"]

# Writers of a store's chunk rows hold this advisory lock shared for their transaction; the swap of an online
# migration (vectorstore/migration) holds it exclusively while it replays the last writes and switches the
# active table, so no write lands in a generation that has just stopped being the active one.
WRITE_LOCK_NAMESPACE = 0x7673_7772  # "vswr"


def lock_key(store_id: str) -> int:
    """The second half of a store's advisory lock keys (a signed 32-bit integer from its id)."""
    return int.from_bytes(hashlib.sha256(store_id.encode()).digest()[:4], "big", signed=True)


async def lock_for_write(conn: psycopg.AsyncConnection[Any], store_id: str) -> None:
    """Held until the caller's transaction ends; read the store's record (its active table) after this."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared(%s, %s)", [WRITE_LOCK_NAMESPACE, lock_key(store_id)])


@dataclass(frozen=True)
class StoreRecord:
    id: str
    seq: int
    name: str | None
    description: str | None
    metadata: dict[str, str]
    declared: bool
    model: str
    dimensions: int
    distance: Distance
    vector_type: VectorType
    hnsw_m: int
    hnsw_ef_construction: int
    ef_search: int
    table_name: str
    expires_after: dict[str, Any] | None
    created_at: int
    last_active_at: int
    language: str
    text_search: TextSearchState
    """`ready` once `fts` and its index exist; `upgrading` for a table from before keyword search."""
    analyzed_rows: float
    """Rows at the last ANALYZE (0 before the first one)."""
    text_avg_length: float
    text_min_freq: float
    quantization: Quantization
    chunk_max_tokens: int | None = None
    chunk_overlap_tokens: int | None = None
    """The declared `chunking` of the active generation: files chunked by the store's default have it (migration
    0310). None for a store created through the API (its default is `auto`), or until reconcile records it."""

    @property
    def layout(self) -> tables.Layout:
        return tables.Layout(
            store_id=self.id,
            table=self.table_name,
            dimensions=self.dimensions,
            distance=self.distance,
            vector_type=self.vector_type,
            hnsw_m=self.hnsw_m,
            hnsw_ef_construction=self.hnsw_ef_construction,
            language=self.language,
            quantization=self.quantization,
        )


def _record(row: Mapping[str, Any]) -> StoreRecord:
    return StoreRecord(**{key: row[key] for key in StoreRecord.__dataclass_fields__})


async def get(conn: psycopg.AsyncConnection[Any], store_id: str, *, for_update: bool = False) -> StoreRecord | None:
    """`for_update`: lock the row, and first take the store's write lock (callers that write chunks use it)."""
    if for_update:
        await lock_for_write(conn, store_id)
    query = f"SELECT {_COLUMNS} FROM vector_stores WHERE id = %s" + (" FOR UPDATE" if for_update else "")
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query.encode(), [store_id])
        row = await cur.fetchone()
    return _record(row) if row else None


async def all_stores(conn: psycopg.AsyncConnection[Any]) -> list[StoreRecord]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM vector_stores ORDER BY seq".encode())
        return [_record(row) for row in await cur.fetchall()]


async def page(
    conn: psycopg.AsyncConnection[Any],
    *,
    limit: int,
    descending: bool,
    after_seq: int | None,
    before_seq: int | None,
    visible_ids: frozenset[str] | None,
) -> tuple[list[StoreRecord], bool]:
    """One page in `seq` order plus whether more follow in that direction."""
    where: list[sql.Composable] = []
    params: list[Any] = []
    # `after` continues in the listing's own order; `before` goes back towards its start.
    if after_seq is not None:
        where.append(sql.SQL("seq < %s" if descending else "seq > %s"))
        params.append(after_seq)
    if before_seq is not None:
        where.append(sql.SQL("seq > %s" if descending else "seq < %s"))
        params.append(before_seq)
    if visible_ids is not None:
        where.append(sql.SQL("id = ANY(%s)"))
        params.append(list(visible_ids))
    reverse = before_seq is not None and after_seq is None
    direction = descending != reverse
    query = sql.SQL("SELECT {cols} FROM vector_stores {where} ORDER BY seq {dir} LIMIT %s").format(
        cols=sql.SQL(_COLUMNS),
        where=sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
        dir=sql.SQL("DESC" if direction else "ASC"),
    )
    params.append(limit + 1)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        rows = [_record(row) for row in await cur.fetchall()]
    has_more = len(rows) > limit
    rows = rows[:limit]
    if reverse:
        rows.reverse()
    return rows, has_more


async def seq_of(conn: psycopg.AsyncConnection[Any], store_id: str) -> int | None:
    cur = await conn.execute("SELECT seq FROM vector_stores WHERE id = %s", [store_id])
    row = await cur.fetchone()
    return int(row[0]) if row else None


@dataclass(frozen=True)
class NewStore:
    id: str
    name: str | None
    description: str | None
    metadata: Mapping[str, str]
    declared: bool
    model: str
    dimensions: int
    distance: Distance
    hnsw_m: int
    hnsw_ef_construction: int
    ef_search: int
    language: str = "english"
    quantization: Quantization = "none"
    expires_after: Mapping[str, Any] | None = None
    chunk_max_tokens: int | None = None
    chunk_overlap_tokens: int | None = None


async def insert(conn: psycopg.AsyncConnection[Any], new: NewStore) -> StoreRecord:
    """Create the registry row and the store's table in the caller's transaction."""
    vtype = vector_type_for(new.dimensions, new.quantization)
    table = tables.table_name(new.id)
    layout = tables.Layout(
        new.id,
        table,
        new.dimensions,
        new.distance,
        vtype,
        new.hnsw_m,
        new.hnsw_ef_construction,
        new.language,
        new.quantization,
    )
    for statement in tables.create_table_statements(layout):
        await conn.execute(statement)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"INSERT INTO vector_stores (id, name, description, metadata, declared, model, dimensions, distance,"
            f" vector_type, hnsw_m, hnsw_ef_construction, ef_search, table_name, expires_after, language, quantization,"
            f" chunk_max_tokens, chunk_overlap_tokens, text_search)"
            f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'ready')"
            f" RETURNING {_COLUMNS}".encode(),
            [
                new.id,
                new.name,
                new.description,
                Jsonb(dict(new.metadata)),
                new.declared,
                new.model,
                new.dimensions,
                new.distance,
                vtype,
                new.hnsw_m,
                new.hnsw_ef_construction,
                new.ef_search,
                table,
                Jsonb(dict(new.expires_after)) if new.expires_after is not None else None,
                new.language,
                new.quantization,
                new.chunk_max_tokens,
                new.chunk_overlap_tokens,
            ],
        )
        row = await cur.fetchone()
    assert row is not None
    return _record(row)


async def delete(conn: psycopg.AsyncConnection[Any], record: StoreRecord) -> None:
    """The store, its active table and any other generation of it (a migration's partial or kept one)."""
    cur = await conn.execute(
        "SELECT build_table, previous_table FROM store_migrations WHERE vector_store_id = %s", [record.id]
    )
    for row in await cur.fetchall():
        for table in row:
            if table and table != record.table_name:
                await conn.execute(tables.drop_table_statement(table))
    await conn.execute(tables.drop_table_statement(record.table_name))
    await conn.execute("DELETE FROM vector_stores WHERE id = %s", [record.id])


async def update_fields(conn: psycopg.AsyncConnection[Any], store_id: str, values: Mapping[str, Any]) -> StoreRecord:
    """Set plain columns (name, description, metadata, declared, ef_search, expires_after, ...)."""
    # last_active_at comes from the same clock and function as created_at (migration 0500): truncated seconds.
    assignments = sql.SQL(", ").join(
        [
            *(sql.SQL("{} = %s").format(sql.Identifier(column)) for column in values),
            sql.SQL("last_active_at = epoch_seconds()"),
        ]
    )
    params = [Jsonb(v) if isinstance(v, dict) else v for v in values.values()]
    params += [store_id]
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL("UPDATE vector_stores SET {a} WHERE id = %s RETURNING {cols}").format(
                a=assignments, cols=sql.SQL(_COLUMNS)
            ),
            params,
        )
        row = await cur.fetchone()
    assert row is not None
    return _record(row)


@dataclass(frozen=True)
class FileCounts:
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.in_progress + self.completed + self.failed + self.cancelled

    def as_dict(self) -> dict[str, int]:
        return {
            "in_progress": self.in_progress,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "total": self.total,
        }


FileCountsProvider = Callable[[psycopg.AsyncConnection[Any], Sequence[str]], Awaitable[Mapping[str, FileCounts]]]
"""Ingestion plugs in how files are counted per store (app key FILE_COUNTS); without it every count is 0."""


async def no_file_counts(conn: psycopg.AsyncConnection[Any], store_ids: Sequence[str]) -> Mapping[str, FileCounts]:
    return {}


async def usage_bytes(conn: psycopg.AsyncConnection[Any], records: Sequence[StoreRecord]) -> dict[str, int]:
    """Bytes each store really occupies on disk (rows, TOAST and indexes), read from the catalog: its chunk
    table and the keyword postings beside it (`<t>_blocks` and `<t>_gone`, and 0400's or 0410's postings until it
    is upgraded), which live and die with it."""
    if not records:
        return {}
    cur = await conn.execute(
        "SELECT t, sum(COALESCE(pg_total_relation_size(to_regclass(quote_ident(r))), 0))"
        " FROM unnest(%s::text[], %s::text[]) AS u(t, r) GROUP BY t",
        [
            [record.table_name for record in records for _ in tables.side_tables(record.table_name)],
            [name for record in records for name in tables.side_tables(record.table_name)],
        ],
    )
    sizes = {str(row[0]): int(row[1]) for row in await cur.fetchall()}
    return {record.id: sizes.get(record.table_name, 0) for record in records}


@dataclass
class StoreView:
    record: StoreRecord
    file_counts: FileCounts = field(default_factory=FileCounts)
    usage_bytes: int = 0
    migrating: bool = False
    """A new generation is being built (vectorstore/migration): the store says `in_progress` until the swap."""

    def to_json(self) -> dict[str, Any]:
        record = self.record
        status = "in_progress" if self.file_counts.in_progress or self.migrating else "completed"
        expires_at = None
        if record.expires_after is not None:
            days = cast(int, record.expires_after.get("days", 0))
            expires_at = record.last_active_at + days * 86400
        return {
            "id": record.id,
            "object": "vector_store",
            "created_at": record.created_at,
            "name": record.name,
            "description": record.description,
            "usage_bytes": self.usage_bytes,
            "file_counts": self.file_counts.as_dict(),
            "status": status,
            "last_active_at": record.last_active_at,
            "metadata": record.metadata,
            "expires_after": record.expires_after,
            "expires_at": expires_at,
        }


async def views(
    conn: psycopg.AsyncConnection[Any], records: Sequence[StoreRecord], counts: FileCountsProvider
) -> list[StoreView]:
    ids = [record.id for record in records]
    file_counts = await counts(conn, ids) if ids else {}
    sizes = await usage_bytes(conn, records)
    migrating = await migrating_ids(conn, ids) if ids else set()
    return [
        StoreView(record, file_counts.get(record.id, FileCounts()), sizes.get(record.id, 0), record.id in migrating)
        for record in records
    ]


ACTIVE_MIGRATION_PHASES = ("pending", "building", "swapping", "paused")


async def migrating_ids(conn: psycopg.AsyncConnection[Any], store_ids: Sequence[str]) -> set[str]:
    cur = await conn.execute(
        "SELECT vector_store_id FROM store_migrations WHERE vector_store_id = ANY(%s) AND phase = ANY(%s)",
        [list(store_ids), list(ACTIVE_MIGRATION_PHASES)],
    )
    return {str(row[0]) for row in await cur.fetchall()}
