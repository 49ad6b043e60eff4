"""The `store_migrations` rows: one per store that has been migrated (migration 0300).

Reconcile calls `request` (a declared store's vector or index fields changed while it holds data) and `cancel`
(the spec is back to the active generation mid-migration); the builder moves the row through its phases.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from vectorstore.migration.shapes import Shape, generation_table
from vectorstore.storage import stores, tables

log = logging.getLogger("vectorstore")

Phase = Literal["pending", "building", "swapping", "done", "paused", "cancelled"]
PHASES: tuple[Phase, ...] = ("pending", "building", "swapping", "done", "paused", "cancelled")
RUNNABLE: tuple[Phase, ...] = ("pending", "building", "swapping")
ACTIVE: tuple[Phase, ...] = ("pending", "building", "swapping", "paused")
assert set(ACTIVE) == set(stores.ACTIVE_MIGRATION_PHASES)

_COLUMNS = (
    "vector_store_id, phase, target, source, build_table, reembed, chunks_done, chunks_total, embedding_calls,"
    " embedding_tokens, last_error, reason, requested_at, started_at, updated_at, finished_at, swap_seconds,"
    " previous, previous_table, previous_until, rechunk, files_total, files_done"
)


@dataclass(frozen=True)
class Migration:
    store_id: str
    phase: Phase
    target: Shape
    source: Shape
    build_table: str | None
    reembed: bool
    chunks_done: int
    chunks_total: int
    embedding_calls: int
    embedding_tokens: int
    last_error: str | None
    reason: str
    requested_at: float
    started_at: float | None
    updated_at: float
    finished_at: float | None
    swap_seconds: float | None
    previous: Shape | None
    previous_table: str | None
    previous_until: float | None
    rechunk: bool = False
    """Files chunked by the store's default are cut again with the target's chunking (`files_done` of
    `files_total` re-chunked so far)."""
    files_total: int = 0
    files_done: int = 0

    @property
    def work(self) -> str:
        if self.rechunk:
            return "rechunk+reembed" if self.reembed else "rechunk"
        return "reembed" if self.reembed else "copy"

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    def rate(self, now: float | None = None) -> float | None:
        """Chunks a second since the build started (None before it has)."""
        if self.started_at is None or self.phase not in RUNNABLE:
            return None
        elapsed = (now or time.time()) - self.started_at
        return self.chunks_done / elapsed if elapsed > 0 else None

    def eta_seconds(self, now: float | None = None) -> float | None:
        rate = self.rate(now)
        if not rate:
            return None
        return max(self.chunks_total - self.chunks_done, 0) / rate

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "vector_store.migration",
            "vector_store_id": self.store_id,
            "phase": self.phase,
            "work": self.work,
            "from": self.source.to_json(),
            "to": self.target.to_json(),
            "chunks_done": self.chunks_done,
            "chunks_total": self.chunks_total,
            "files_done": self.files_done,
            "files_total": self.files_total,
            "embedding_calls": self.embedding_calls,
            "embedding_tokens": self.embedding_tokens,
            "chunks_per_second": self.rate(),
            "eta_seconds": self.eta_seconds(),
            "last_error": self.last_error,
            "reason": self.reason,
            "requested_at": self.requested_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "swap_seconds": self.swap_seconds,
            "previous": self.previous.to_json() if self.previous else None,
            "previous_kept_until": self.previous_until if self.previous_table else None,
        }


def _migration(row: Mapping[str, Any]) -> Migration:
    return Migration(
        store_id=row["vector_store_id"],
        phase=row["phase"],
        target=Shape.from_json(row["target"]),
        source=Shape.from_json(row["source"]),
        build_table=row["build_table"],
        reembed=row["reembed"],
        chunks_done=row["chunks_done"],
        chunks_total=row["chunks_total"],
        embedding_calls=row["embedding_calls"],
        embedding_tokens=row["embedding_tokens"],
        last_error=row["last_error"],
        reason=row["reason"],
        requested_at=row["requested_at"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        swap_seconds=row["swap_seconds"],
        previous=Shape.from_json(row["previous"]) if row["previous"] else None,
        previous_table=row["previous_table"],
        previous_until=row["previous_until"],
        rechunk=row["rechunk"],
        files_total=row["files_total"],
        files_done=row["files_done"],
    )


async def get(conn: psycopg.AsyncConnection[Any], store_id: str, *, for_update: bool = False) -> Migration | None:
    query = f"SELECT {_COLUMNS} FROM store_migrations WHERE vector_store_id = %s" + (
        " FOR UPDATE" if for_update else ""
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query.encode(), [store_id])
        row = await cur.fetchone()
    return _migration(row) if row else None


async def all_migrations(conn: psycopg.AsyncConnection[Any]) -> list[Migration]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM store_migrations ORDER BY vector_store_id".encode())
        return [_migration(row) for row in await cur.fetchall()]


async def update(conn: psycopg.AsyncConnection[Any], store_id: str, values: Mapping[str, Any]) -> None:
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = %s").format(sql.Identifier(column)) for column in [*values, "updated_at"]
    )
    params = [Jsonb(v) if isinstance(v, dict) else v for v in values.values()]
    await conn.execute(
        sql.SQL("UPDATE store_migrations SET {a} WHERE vector_store_id = %s").format(a=assignments),
        [*params, time.time(), store_id],
    )


RequestOutcome = Literal["started", "continuing", "swap_back", "restarted"]


async def request(
    conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, target: Shape, reason: str
) -> RequestOutcome:
    """Ask for the store to be moved to `target`, in the caller's (reconcile's) transaction.

    The same target again continues the running migration (a paused one is tried again); another target
    replaces it (its partial generation is dropped). A target equal to the kept previous generation reuses that
    generation: only what changed since the swap is replayed into it, so swapping back costs no embedding of the
    chunks it already holds.
    """
    current = await get(conn, record.id, for_update=True)
    source = Shape.of_record(record)
    if current is not None and current.active and current.target == target and current.source == source:
        if current.phase == "paused":
            await update(conn, record.id, {"phase": "pending", "last_error": None})
            log.info("migration of store %s: resumed after a pause (%s)", record.id, reason)
        return "continuing"
    outcome: RequestOutcome = "started"
    if current is not None and current.active:
        await _drop_partial(conn, current)
        outcome = "restarted"
    build_table = generation_table(record.id)
    if current is not None and current.previous_table is not None:
        if current.previous == target:
            build_table, outcome = current.previous_table, "swap_back"
        else:
            # Another shape is wanted: the kept generation can't serve it; its disk space goes back now.
            await drop_generation(conn, current.previous_table)
    values = {
        "phase": "pending",
        "target": Jsonb(target.to_json()),
        "source": Jsonb(source.to_json()),
        "build_table": build_table,
        "reembed": target.work_from(source) == "reembed",
        "rechunk": target.rechunks_from(source),
        "reason": reason,
        # A generation reused or dropped above is no longer kept.
        "previous": None,
        "previous_table": None,
        "previous_until": None,
    }
    await conn.execute(
        "INSERT INTO store_migrations (vector_store_id, phase, target, source, build_table, reembed, rechunk, reason,"
        " previous, previous_table, previous_until) VALUES (%(id)s, %(phase)s, %(target)s, %(source)s,"
        " %(build_table)s, %(reembed)s, %(rechunk)s, %(reason)s, %(previous)s, %(previous_table)s,"
        " %(previous_until)s) ON CONFLICT (vector_store_id) DO UPDATE SET phase = EXCLUDED.phase,"
        " target = EXCLUDED.target, source = EXCLUDED.source, build_table = EXCLUDED.build_table,"
        " reembed = EXCLUDED.reembed, rechunk = EXCLUDED.rechunk, files_total = 0, files_done = 0,"
        " reason = EXCLUDED.reason, previous = EXCLUDED.previous, previous_table = EXCLUDED.previous_table,"
        " previous_until = EXCLUDED.previous_until, chunks_done = 0, chunks_total = 0, embedding_calls = 0,"
        " embedding_tokens = 0, last_error = NULL, requested_at = extract(epoch FROM now()), started_at = NULL,"
        " finished_at = NULL, swap_seconds = NULL, updated_at = extract(epoch FROM now())",
        {"id": record.id, **values},
    )
    if outcome == "swap_back":
        log.info(
            "migration of store %s: swap back requested (%s); the kept generation %s holds every chunk it had at"
            " the swap, only writes made since are replayed into it",
            record.id,
            reason.split(";")[0],
            build_table,
        )
    else:
        log.info("migration of store %s: requested (%s)", record.id, reason)
    return outcome


async def cancel(conn: psycopg.AsyncConnection[Any], store_id: str, reason: str) -> bool:
    """The spec is back to the active generation: drop the partial one. In the caller's transaction."""
    current = await get(conn, store_id, for_update=True)
    if current is None or not current.active:
        return False
    await _drop_partial(conn, current)
    await update(conn, store_id, {"phase": "cancelled", "build_table": None, "finished_at": time.time()})
    log.info("migration of store %s: cancelled (%s); the active generation was left untouched", store_id, reason)
    return True


async def _drop_partial(conn: psycopg.AsyncConnection[Any], current: Migration) -> None:
    if current.build_table is not None:
        # Waits for the builder's batch in flight (it holds the table); its next statement finds the table gone.
        await drop_generation(conn, current.build_table)


async def drop_generation(conn: psycopg.AsyncConnection[Any], table: str) -> None:
    """A generation's table (and postings), and its record of re-chunked files; in the caller's transaction."""
    await conn.execute(tables.drop_table_statement(table))
    await conn.execute("DELETE FROM store_migration_files WHERE table_name = %s", [table])
