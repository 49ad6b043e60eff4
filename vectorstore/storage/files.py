"""Files, vector store files and file batches: records, SQL, and their OpenAI objects.

The HTTP handlers (vectorstore/api/files.py, vectorstore/api/vector_store_files.py) and the ingestion worker
(vectorstore/worker.py) both go through here. Status and counts are read from `vector_store_files` on every
request, never kept as counters, so `file_counts` can't drift from the files it counts.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from config import names
from vectorstore.errors import BadRequest
from vectorstore.storage import stores, tables
from vectorstore.storage.strategy import Strategy
from vectorstore.values import as_float, shown

Status = Literal["in_progress", "completed", "failed", "cancelled"]
STATUSES: tuple[Status, ...] = ("in_progress", "completed", "failed", "cancelled")
# What OpenAI accepts for `purpose` on upload; vector stores read any of them.
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def new_batch_id() -> str:
    return "vsfb_" + secrets.token_hex(12)


@dataclass(frozen=True)
class FileRecord:
    id: str
    seq: int
    filename: str
    purpose: str
    bytes: int
    content_type: str | None
    sha256: str
    owner: str
    created_at: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


_FILE_COLUMNS = "id, seq, filename, purpose, bytes, content_type, sha256, owner, created_at"


def _file(row: Mapping[str, Any]) -> FileRecord:
    return FileRecord(**{key: row[key] for key in FileRecord.__dataclass_fields__})


async def insert_file(
    conn: psycopg.AsyncConnection[Any],
    *,
    filename: str,
    purpose: str,
    content: bytes,
    content_type: str | None,
    owner: str,
) -> FileRecord:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"INSERT INTO files (id, filename, purpose, bytes, content_type, sha256, content, owner)"
            f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_FILE_COLUMNS}".encode(),
            [
                new_file_id(),
                filename,
                purpose,
                len(content),
                content_type,
                hashlib.sha256(content).hexdigest(),
                content,
                owner,
            ],
        )
        row = await cur.fetchone()
    assert row is not None
    return _file(row)


async def get_file(conn: psycopg.AsyncConnection[Any], file_id: str) -> FileRecord | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = %s".encode(), [file_id])
        row = await cur.fetchone()
    return _file(row) if row else None


async def file_content(conn: psycopg.AsyncConnection[Any], file_id: str) -> bytes | None:
    cur = await conn.execute("SELECT content FROM files WHERE id = %s", [file_id])
    row = await cur.fetchone()
    return bytes(row[0]) if row else None


async def list_files(
    conn: psycopg.AsyncConnection[Any],
    *,
    purpose: str | None,
    limit: int,
    descending: bool,
    after: str | None,
    owner: str | None,
) -> tuple[list[FileRecord], bool]:
    """A page of files; `owner` limits it to one key's uploads."""
    where: list[str] = []
    params: list[Any] = []
    if owner is not None:
        where.append("owner = %s")
        params.append(owner)
    if purpose is not None:
        where.append("purpose = %s")
        params.append(purpose)
    if after is not None:
        cur = await conn.execute("SELECT seq FROM files WHERE id = %s", [after])
        row = await cur.fetchone()
        if row is None:
            raise BadRequest(f"'after' is not the id of a file: '{after[:80]}'.", param="after")
        where.append("seq < %s" if descending else "seq > %s")
        params.append(row[0])
    query = f"SELECT {_FILE_COLUMNS} FROM files"
    if where:
        query += " WHERE " + " AND ".join(where)
    query += f" ORDER BY seq {'DESC' if descending else 'ASC'} LIMIT %s"
    params.append(limit + 1)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query.encode(), params)
        rows = [_file(row) for row in await cur.fetchall()]
    return rows[:limit], len(rows) > limit


async def delete_file(conn: psycopg.AsyncConnection[Any], file_id: str) -> bool:
    """Delete a file and take it out of every store, in the caller's transaction."""
    cur = await conn.execute("SELECT vector_store_id FROM vector_store_files WHERE file_id = %s", [file_id])
    for (store_id,) in await cur.fetchall():
        record = await stores.get(conn, store_id)
        if record is not None:
            await detach(conn, record, file_id)
    cur = await conn.execute("DELETE FROM files WHERE id = %s", [file_id])
    return cur.rowcount > 0


async def expire_unattached(conn: psycopg.AsyncConnection[Any], older_than: int, limit: int = 500) -> list[str]:
    """Delete files never attached to any store and uploaded before `older_than` (Unix time), at most `limit`
    of them; their ids. In the caller's transaction.

    A file being attached right now is skipped: the attach's foreign key check holds its row lock, so
    `SKIP LOCKED` passes over it. One locked here first makes that attach's insert wait, then fail on the
    foreign key: the client gets 404, and nothing is half-attached.
    """
    cur = await conn.execute(
        "SELECT id FROM files WHERE NOT attached_once AND created_at < %s ORDER BY created_at"
        " LIMIT %s FOR UPDATE SKIP LOCKED",
        [older_than, limit],
    )
    candidates = [row[0] for row in await cur.fetchall()]
    if not candidates:
        return []
    cur = await conn.execute(
        "DELETE FROM files f WHERE f.id = ANY(%s) AND NOT f.attached_once"
        " AND NOT EXISTS (SELECT 1 FROM vector_store_files v WHERE v.file_id = f.id) RETURNING f.id",
        [candidates],
    )
    return [row[0] for row in await cur.fetchall()]


# --- vector store files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreFile:
    vector_store_id: str
    file_id: str
    seq: int
    batch_id: str | None
    status: Status
    last_error: dict[str, str] | None
    usage_bytes: int
    chunk_count: int
    max_chunk_size_tokens: int
    chunk_overlap_tokens: int
    attributes: dict[str, Any]
    generation: int
    created_at: int
    replaces: list[str] = field(default_factory=list)
    """Files this one replaces once ingested (a source's older version of the same path); see `retire`."""
    chunking_default: bool | None = None
    """Chunked by the store's default (its declared `chunking`, else `auto`) rather than a `chunking_strategy`
    given with the file: only those follow a change of the declared `chunking` (vectorstore/migration). None:
    attached before migration 0310 and not yet decided by reconcile."""

    @property
    def strategy(self) -> Strategy:
        return Strategy(self.max_chunk_size_tokens, self.chunk_overlap_tokens)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.file_id,
            "object": "vector_store.file",
            "usage_bytes": self.usage_bytes,
            "created_at": self.created_at,
            "vector_store_id": self.vector_store_id,
            "status": self.status,
            "last_error": self.last_error,
            "chunking_strategy": self.strategy.to_api(),
            "attributes": self.attributes,
        }


_VSF_COLUMNS = (
    "vector_store_id, file_id, seq, batch_id, status, last_error, usage_bytes, chunk_count,"
    " max_chunk_size_tokens, chunk_overlap_tokens, attributes, generation, created_at, replaces, chunking_default"
)


def _store_file(row: Mapping[str, Any]) -> StoreFile:
    return StoreFile(**{key: row[key] for key in StoreFile.__dataclass_fields__})


def validate_attributes(value: object, param: str = "attributes") -> dict[str, Any] | None:
    """OpenAI's limits: at most 16 keys of up to 64 characters; values strings (<= 512), numbers or booleans."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest(f"'{param}' must be an object of string, number or boolean values.", param=param)
    if len(value) > 16:
        raise BadRequest(f"'{param}' has {len(value)} keys; at most 16 are allowed.", param=param)
    for key, item in value.items():
        if len(key) > 64:
            raise BadRequest(
                f"'{param}' key '{key[:20]}...' is longer than 64 characters.", param=f"{param}.{key[:64]}"
            )
        if isinstance(item, str):
            if len(item) > 512:
                raise BadRequest(f"'{param}.{key}' is longer than 512 characters.", param=f"{param}.{key}")
        elif isinstance(item, bool):
            pass
        elif isinstance(item, (int, float)):
            if as_float(item) is None:
                # NaN, an infinity, or an integer of hundreds of digits: OpenAI's numbers are 64-bit floats.
                raise BadRequest(
                    f"'{param}.{key}' must be a finite number a 64-bit float can hold; got {shown(item)}.",
                    param=f"{param}.{key}",
                )
        else:
            raise BadRequest(f"'{param}.{key}' must be a string, number or boolean.", param=f"{param}.{key}")
    return dict(value)


async def get_store_file(conn: psycopg.AsyncConnection[Any], store_id: str, file_id: str) -> StoreFile | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_VSF_COLUMNS} FROM vector_store_files WHERE vector_store_id = %s AND file_id = %s".encode(),
            [store_id, file_id],
        )
        row = await cur.fetchone()
    return _store_file(row) if row else None


async def attach(
    conn: psycopg.AsyncConnection[Any],
    store: stores.StoreRecord,
    file_id: str,
    *,
    attributes: Mapping[str, Any] | None,
    strategy: Strategy,
    chunking_default: bool = True,
    batch_id: str | None = None,
    replaces: Sequence[str] = (),
) -> StoreFile:
    """Attach a file (or re-attach it, starting over) and queue its ingestion; in the caller's transaction.

    `chunking_default`: `strategy` is the store's default, not one the request gave (which the file keeps when
    the declared `chunking` changes).

    `replaces`: files of this store that stay searchable until this one is ingested, then are retired in the
    worker's transaction (a source's new version of a path replacing the old one atomically).
    """
    existing = await get_store_file(conn, store.id, file_id)
    if existing is not None:
        await detach(conn, store, file_id)
    cur = await conn.execute(
        "INSERT INTO ingest_jobs (vector_store_id, file_id) VALUES (%s, %s) RETURNING id", [store.id, file_id]
    )
    row = await cur.fetchone()
    assert row is not None
    async with conn.cursor(row_factory=dict_row) as dcur:
        await dcur.execute(
            f"INSERT INTO vector_store_files (vector_store_id, file_id, batch_id, status, max_chunk_size_tokens,"
            f" chunk_overlap_tokens, attributes, generation, replaces, chunking_default)"
            f" VALUES (%s, %s, %s, 'in_progress', %s, %s, %s, %s, %s, %s) RETURNING {_VSF_COLUMNS}".encode(),
            [
                store.id,
                file_id,
                batch_id,
                strategy.max_chunk_size_tokens,
                strategy.chunk_overlap_tokens,
                Jsonb(dict(attributes or {})),
                row[0],
                list(replaces),
                chunking_default,
            ],
        )
        created = await dcur.fetchone()
    assert created is not None
    # After the insert, whose foreign key check already holds the file's KEY SHARE lock: an expiry sweep
    # (FOR UPDATE SKIP LOCKED) skips this file from here until the commit, and never takes it afterwards.
    await conn.execute("UPDATE files SET attached_once = true WHERE id = %s AND NOT attached_once", [file_id])
    return _store_file(created)


async def active_layout(conn: psycopg.AsyncConnection[Any], store: stores.StoreRecord) -> tables.Layout:
    """The table to write the store's chunks to, under the store's write lock (held to the end of the caller's
    transaction): an online migration may have switched it since `store` was read."""
    await stores.lock_for_write(conn, store.id)
    current = await stores.get(conn, store.id)
    return (current or store).layout


async def detach(conn: psycopg.AsyncConnection[Any], store: stores.StoreRecord, file_id: str) -> bool:
    """Remove a file from a store: its row, its chunks, its queued job. In the caller's transaction.

    The row goes first: if a worker is completing this file right now, that waits for its commit, and the
    chunk delete that follows then sees (and removes) what it wrote.
    """
    cur = await conn.execute(
        "DELETE FROM vector_store_files WHERE vector_store_id = %s AND file_id = %s", [store.id, file_id]
    )
    removed = cur.rowcount > 0
    await tables.delete_file_chunks(conn, await active_layout(conn, store), file_id)
    # A job a worker holds is left to it: the worker finds its attachment gone and drops the job.
    await conn.execute(
        "WITH gone AS (DELETE FROM ingest_jobs WHERE id IN (SELECT id FROM ingest_jobs WHERE vector_store_id = %s"
        " AND file_id = %s FOR UPDATE SKIP LOCKED) RETURNING id)"
        " DELETE FROM ingest_attempts WHERE job_id IN (SELECT id FROM gone)",
        [store.id, file_id],
    )
    return removed


async def retire(conn: psycopg.AsyncConnection[Any], store: stores.StoreRecord, file_ids: Sequence[str]) -> None:
    """Detach these files from the store and delete each File a sync made that nothing else uses any more.

    In the caller's transaction: the ingestion worker calls it when a replacing version completes, and a sync
    when a path disappeared from its source. Files uploaded through the API are only ever detached.
    """
    for file_id in file_ids:
        await detach(conn, store, file_id)
        await conn.execute(
            "DELETE FROM files f WHERE f.id = %s AND starts_with(f.owner, %s)"
            " AND NOT EXISTS (SELECT 1 FROM vector_store_files v WHERE v.file_id = f.id)",
            [file_id, names.SOURCE_FILE_OWNER_PREFIX],
        )


async def update_attributes(
    conn: psycopg.AsyncConnection[Any], store: stores.StoreRecord, file_id: str, attributes: Mapping[str, Any]
) -> StoreFile | None:
    """New attributes on the file and on every chunk of it, in one transaction: searches see them at once."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"UPDATE vector_store_files SET attributes = %s WHERE vector_store_id = %s AND file_id = %s"
            f" RETURNING {_VSF_COLUMNS}".encode(),
            [Jsonb(dict(attributes)), store.id, file_id],
        )
        row = await cur.fetchone()
    if row is None:
        return None
    layout = await active_layout(conn, store)
    await conn.execute(
        sql.SQL("UPDATE {t} SET attributes = %s WHERE file_id = %s").format(t=layout.ident),
        [Jsonb(dict(attributes)), file_id],
    )
    return _store_file(row)


async def list_store_files(
    conn: psycopg.AsyncConnection[Any],
    store_id: str,
    *,
    status: str | None,
    batch_id: str | None,
    limit: int,
    descending: bool,
    after: str | None,
    before: str | None,
) -> tuple[list[StoreFile], bool]:
    where = ["vector_store_id = %s"]
    params: list[Any] = [store_id]
    if status is not None:
        where.append("status = %s")
        params.append(status)
    if batch_id is not None:
        where.append("batch_id = %s")
        params.append(batch_id)
    for name, cursor, forward in (("after", after, True), ("before", before, False)):
        if cursor is None:
            continue
        cur = await conn.execute(
            "SELECT seq FROM vector_store_files WHERE vector_store_id = %s AND file_id = %s", [store_id, cursor]
        )
        row = await cur.fetchone()
        if row is None:
            raise BadRequest(f"'{name}' is not the id of a file in this vector store: '{cursor[:80]}'.", param=name)
        where.append("seq < %s" if descending == forward else "seq > %s")
        params.append(row[0])
    reverse = before is not None and after is None
    direction = "DESC" if descending != reverse else "ASC"
    params.append(limit + 1)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_VSF_COLUMNS} FROM vector_store_files WHERE {' AND '.join(where)}"
            f" ORDER BY seq {direction} LIMIT %s".encode(),
            params,
        )
        rows = [_store_file(row) for row in await cur.fetchall()]
    has_more = len(rows) > limit
    rows = rows[:limit]
    if reverse:
        rows.reverse()
    return rows, has_more


async def file_counts(conn: psycopg.AsyncConnection[Any], store_ids: Sequence[str]) -> dict[str, stores.FileCounts]:
    """Counts per store by status, read in one statement (so from one snapshot): they always add up."""
    cur = await conn.execute(
        "SELECT vector_store_id, status, count(*) FROM vector_store_files WHERE vector_store_id = ANY(%s)"
        " GROUP BY vector_store_id, status",
        [list(store_ids)],
    )
    found: dict[str, dict[str, int]] = {}
    for store_id, status, count in await cur.fetchall():
        found.setdefault(store_id, {})[status] = int(count)
    return {store_id: stores.FileCounts(**counts) for store_id, counts in found.items()}


async def chunk_texts(conn: psycopg.AsyncConnection[Any], store: stores.StoreRecord, file_id: str) -> list[str]:
    cur = await conn.execute(
        sql.SQL("SELECT content FROM {t} WHERE file_id = %s ORDER BY chunk_index").format(t=store.layout.ident),
        [file_id],
    )
    return [str(row[0]) for row in await cur.fetchall()]


@dataclass(frozen=True)
class StoredChunk:
    id: str
    content: str
    attributes: dict[str, Any]
    embedding: list[float] | None
    created_at: int


async def chunks_of(
    conn: psycopg.AsyncConnection[Any], store: stores.StoreRecord, file_id: str, *, with_embeddings: bool
) -> list[StoredChunk]:
    """A file's chunks in order, with their attributes and, when asked, their vectors (OGX's file contents)."""
    vector = sql.SQL("embedding") if with_embeddings else sql.SQL("NULL")
    cur = await conn.execute(
        sql.SQL(
            "SELECT id, content, attributes, {vector}, created_at FROM {t} WHERE file_id = %s ORDER BY chunk_index"
        ).format(vector=vector, t=store.layout.ident),
        [file_id],
    )
    out: list[StoredChunk] = []
    for row in await cur.fetchall():
        raw = row[3]
        # pgvector's loader gives a numpy array (or its own Vector / HalfVector without numpy).
        values = None if raw is None else raw.to_list() if hasattr(raw, "to_list") else raw.tolist()
        embedding = None if values is None else [float(x) for x in values]
        out.append(StoredChunk(str(row[0]), str(row[1]), dict(row[2] or {}), embedding, int(row[4])))
    return out


# --- batches -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    id: str
    vector_store_id: str
    cancelled: bool
    created_at: int
    counts: stores.FileCounts

    @property
    def status(self) -> str:
        if self.counts.in_progress:
            return "in_progress"  # also while cancelling: the SDK knows no "cancelling" for batches
        if self.cancelled:
            return "cancelled"
        if self.counts.total and self.counts.failed == self.counts.total:
            return "failed"
        return "completed"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "vector_store.files_batch",
            "created_at": self.created_at,
            "vector_store_id": self.vector_store_id,
            "status": self.status,
            "file_counts": self.counts.as_dict(),
        }


async def create_batch(conn: psycopg.AsyncConnection[Any], store_id: str) -> str:
    batch_id = new_batch_id()
    await conn.execute("INSERT INTO file_batches (id, vector_store_id) VALUES (%s, %s)", [batch_id, store_id])
    return batch_id


async def get_batch(conn: psycopg.AsyncConnection[Any], store_id: str, batch_id: str) -> Batch | None:
    # One statement: the batch row and its counts come from the same snapshot.
    cur = await conn.execute(
        "SELECT b.cancelled, b.created_at,"
        " count(*) FILTER (WHERE f.status = 'in_progress'), count(*) FILTER (WHERE f.status = 'completed'),"
        " count(*) FILTER (WHERE f.status = 'failed'), count(*) FILTER (WHERE f.status = 'cancelled')"
        " FROM file_batches b LEFT JOIN vector_store_files f ON f.batch_id = b.id"
        " WHERE b.id = %s AND b.vector_store_id = %s GROUP BY b.id",
        [batch_id, store_id],
    )
    row = await cur.fetchone()
    if row is None:
        return None
    counts = stores.FileCounts(in_progress=row[2], completed=row[3], failed=row[4], cancelled=row[5])
    return Batch(batch_id, store_id, bool(row[0]), int(row[1]), counts)


async def cancel_batch(conn: psycopg.AsyncConnection[Any], store_id: str, batch_id: str) -> None:
    """Cancel what has not started; a file a worker is ingesting right now is cancelled when it tries to finish."""
    await conn.execute("UPDATE file_batches SET cancelled = true WHERE id = %s", [batch_id])
    await conn.execute(
        "UPDATE vector_store_files SET status = 'cancelled',"
        " last_error = NULL WHERE batch_id = %s AND status = 'in_progress'",
        [batch_id],
    )
    await conn.execute(
        "WITH gone AS (DELETE FROM ingest_jobs j USING vector_store_files f WHERE j.vector_store_id = f.vector_store_id"
        " AND j.file_id = f.file_id AND f.batch_id = %s AND j.id IN (SELECT id FROM ingest_jobs"
        " WHERE vector_store_id = %s FOR UPDATE SKIP LOCKED) RETURNING j.id)"
        " DELETE FROM ingest_attempts WHERE job_id IN (SELECT id FROM gone)",
        [batch_id, store_id],
    )
