"""A store's vectors are kept in its rows (STORAGE MAIN), not in TOAST (pgvector's default), so a search's
distances and exact scans read them without a TOAST lookup (vectorstore/storage/tables.py says what it saves);
migration 0900 sets it on the tables of stores made before."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from search.conftest import add_rows, new_store
from vectorstore.storage import stores
from vectorstore.storage.migrations import migrate

# 512 dimensions are 2 KB a vector: with a paragraph of text, a row past the size where PostgreSQL moves
# values out of line, so where the vector goes depends on the column's storage.
WIDE = 512
TEXTS = [" ".join(f"word{(i * 7 + j) % 97} harbour lamp" for j in range(60)) for i in range(20)]


async def storage_of(conn: psycopg.AsyncConnection[Any], table: str) -> str:
    cur = await conn.execute(
        "SELECT attstorage::text FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'embedding'", [table]
    )
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def vectors_out_of_line(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, prefix: str) -> int:
    cur = await conn.execute(
        sql.SQL("SELECT count(pg_column_toast_chunk_id(embedding)) FROM {t} WHERE id LIKE %s").format(
            t=record.layout.ident
        ),
        [f"{prefix}%"],
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_new_store_keeps_its_vectors_in_its_rows(db: psycopg.AsyncConnection[Any]) -> None:
    record = await new_store(db, dims=WIDE)
    assert await storage_of(db, record.table_name) == "m"
    await add_rows(db, record, TEXTS, prefix="inline-")
    assert await vectors_out_of_line(db, record, "inline-") == 0
    # The control: the same rows under pgvector's default storage put every vector in TOAST, so the rows above
    # were wide enough for the setting to decide.
    await db.execute(
        sql.SQL("ALTER TABLE {t} ALTER COLUMN embedding SET STORAGE EXTERNAL").format(t=record.layout.ident)
    )
    await add_rows(db, record, TEXTS, prefix="toasted-")
    assert await vectors_out_of_line(db, record, "toasted-") == len(TEXTS)


async def test_migration_0900_sets_the_storage_of_stores_made_before(db: psycopg.AsyncConnection[Any]) -> None:
    record = await new_store(db, dims=WIDE)
    # Back to a store made before 0900: its table as create_table_statements made it then.
    await db.execute(
        sql.SQL("ALTER TABLE {t} ALTER COLUMN embedding SET STORAGE EXTERNAL").format(t=record.layout.ident)
    )
    await db.execute("DELETE FROM schema_migrations WHERE version = 900")
    assert await migrate(db) == ["0900_embedding_storage_main"]
    assert await storage_of(db, record.table_name) == "m"
    await add_rows(db, record, TEXTS, prefix="after-")
    assert await vectors_out_of_line(db, record, "after-") == 0
