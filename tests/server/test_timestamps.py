"""Every timestamp the API returns truncates to whole seconds, from one clock, so none is ever ahead of it.

Objects are created at several sub-second phases (the defect rounded: an object made at .5-.999 s got a
`created_at` up to half a second in the future), and a store is modified twice, each time more than a second
after the last answer: `last_active_at` must grow every time (the defect rounded on create and truncated on
modify, so a modification a second later could leave it unchanged). The bounds are exact: the server's stamp
lies between the floor of the time just before the request and the time just after the answer.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import psycopg
from openai import AsyncOpenAI
from psycopg import sql

from server.conftest import DOCS_ID
from vectorstore.storage import stores
from vectorstore.storage.migrations import migrate

# Sub-second phases to create at, ascending, so one pass takes about a second.
PHASES = (0.02, 0.3, 0.55, 0.8, 0.97)


async def _at_phase(phase: float) -> None:
    await asyncio.sleep((phase - time.time() % 1.0) % 1.0)


def _within(stamp: int | None, before: float, after: float, what: str) -> None:
    assert stamp is not None, what
    assert math.floor(before) <= stamp <= after, f"{what}: {stamp} not in [{before:.3f}, {after:.3f}]"


async def test_created_at_is_never_ahead_of_the_clock(client: AsyncOpenAI) -> None:
    for phase in PHASES:
        await _at_phase(phase)
        before = time.time()
        store = await client.vector_stores.create(
            name=f"phase-{phase}", expires_after={"anchor": "last_active_at", "days": 1}
        )
        uploaded = await client.files.create(file=("t.txt", b"timestamps", "text/plain"), purpose="assistants")
        attached = await client.vector_stores.files.create(vector_store_id=store.id, file_id=uploaded.id)
        batch = await client.vector_stores.file_batches.create(vector_store_id=DOCS_ID, file_ids=[uploaded.id])
        after = time.time()
        _within(store.created_at, before, after, f"store.created_at at phase {phase}")
        _within(store.last_active_at, before, after, f"store.last_active_at at phase {phase}")
        assert store.last_active_at is not None and store.expires_at == store.last_active_at + 86400
        _within(uploaded.created_at, before, after, f"file.created_at at phase {phase}")
        _within(attached.created_at, before, after, f"vector_store.file.created_at at phase {phase}")
        _within(batch.created_at, before, after, f"file_batch.created_at at phase {phase}")
        # Reading it back gives the same stamps (nothing is computed at read time).
        again = await client.vector_stores.retrieve(store.id)
        assert (again.created_at, again.last_active_at) == (store.created_at, store.last_active_at)


async def test_last_active_at_grows_with_every_modification(client: AsyncOpenAI) -> None:
    # .9 s is where rounding went wrong: created_at rounded up, then a modification a second later truncated
    # to the same second.
    await _at_phase(0.9)
    before = time.time()
    store = await client.vector_stores.create(name="active")
    after = time.time()
    _within(store.created_at, before, after, "created_at")
    last = store.last_active_at
    assert last == store.created_at  # one transaction, one clock reading
    for step in range(2):
        # More than a second after the previous answer, whatever the phase the request lands at.
        await asyncio.sleep(1.01)
        before = time.time()
        modified = await client.vector_stores.update(store.id, metadata={"step": str(step)})
        after = time.time()
        _within(modified.last_active_at, before, after, f"last_active_at after modification {step}")
        assert modified.last_active_at is not None and modified.last_active_at > last, (modified.last_active_at, last)
        assert modified.created_at == store.created_at
        last = modified.last_active_at


_OLD_DEFAULT = "extract(epoch FROM now())::bigint"
_STAMPED = [
    ("vector_stores", "created_at"),
    ("vector_stores", "last_active_at"),
    ("files", "created_at"),
    ("file_batches", "created_at"),
    ("vector_store_files", "created_at"),
    ("source_files", "synced_at"),
]


async def _default(conn: psycopg.AsyncConnection[Any], table: str, column: str) -> str:
    cur = await conn.execute(
        "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a"
        " ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid = %s::regclass AND a.attname = %s",
        [table, column],
    )
    row = await cur.fetchone()
    return str(row[0]) if row else ""


async def test_migration_restamps_a_database_from_before_it(fresh_dsn: str) -> None:
    """Migration 0500 on a database that already holds a store: every default, the store's own table's too."""
    async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
        await migrate(conn)
        record = await stores.insert(
            conn,
            stores.NewStore(
                id="vs_before0500",
                name="before",
                description=None,
                metadata={},
                declared=False,
                model="fake-model",
                dimensions=4,
                distance="cosine",
                hnsw_m=16,
                hnsw_ef_construction=64,
                ef_search=40,
            ),
        )
        # Back to the schema of a database migrated by the previous version.
        await conn.execute("DROP FUNCTION epoch_seconds() CASCADE")
        for table, column in [*_STAMPED, (record.table_name, "created_at")]:
            await conn.execute(
                sql.SQL("ALTER TABLE {t} ALTER COLUMN {c} SET DEFAULT " + _OLD_DEFAULT).format(
                    t=sql.Identifier(table), c=sql.Identifier(column)
                )
            )
        await conn.execute("DELETE FROM schema_migrations WHERE version = 500")
        assert await migrate(conn) == ["0500_epoch_seconds"]
        for table, column in [*_STAMPED, (record.table_name, "created_at")]:
            assert await _default(conn, table, column) == "epoch_seconds()", (table, column)
        # And the function truncates: now, in whole seconds, never ahead.
        cur = await conn.execute("SELECT epoch_seconds(), extract(epoch FROM now())::float8")
        row = await cur.fetchone()
        assert row is not None and row[0] == math.floor(row[1])
