"""Versioned, transactional schema migrations, run under an advisory lock so replicas can start together.

Steps are files in this package named `NNNN_name.sql` (run as one script) or `NNNN_name.py` (a module with
`async def apply(conn: psycopg.AsyncConnection) -> None`). Each step runs in its own transaction together
with its row in `schema_migrations`, so a failed step leaves nothing half-applied. Never edit an applied
step; add a new number.
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import errors as pg_errors

log = logging.getLogger("vectorstore")

# Arbitrary but fixed: every replica must take the same advisory lock key.
MIGRATION_LOCK_KEY = 0x7665_6374_6D69_6772  # "vectmigr"
_STEP = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sql|py)$")


class MigrationError(Exception):
    """The schema can't be brought up to date; the message says what to do."""


@dataclass(frozen=True)
class Step:
    version: int
    name: str
    kind: str
    resource: str


def steps() -> list[Step]:
    found: list[Step] = []
    for entry in resources.files(__name__).iterdir():
        match = _STEP.match(entry.name)
        if match:
            found.append(Step(int(match[1]), match[2], match[3], entry.name))
    found.sort(key=lambda step: step.version)
    versions = [step.version for step in found]
    if len(versions) != len(set(versions)):
        raise MigrationError(f"two migration steps share a number: {versions}")
    return found


async def ensure_vector_extension(conn: psycopg.AsyncConnection[Any]) -> None:
    cur = await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
    if await cur.fetchone():
        return
    try:
        async with conn.transaction():
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except pg_errors.InsufficientPrivilege:
        info = conn.info
        raise MigrationError(
            f"the role '{info.user}' may not create the extension 'vector' in database '{info.dbname}'. "
            "Render the spec (`vectorstore render`): its CNPG Database resource declares "
            "`extensions: [{name: vector, ensure: present}]`, or run `CREATE EXTENSION vector;` as a superuser "
            f"in '{info.dbname}' once (or grant the role CREATE on the database, PostgreSQL 13+ trusted extension)."
        ) from None
    except (pg_errors.UndefinedFile, pg_errors.FeatureNotSupported) as exc:
        raise MigrationError(
            "pgvector is not installed on this PostgreSQL server (CREATE EXTENSION vector failed: "
            f"{exc.diag.message_primary}). Use a CNPG '-standard-' image, which ships it."
        ) from None


async def migrate(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """Bring the schema up to date; return the names of the steps applied now. `conn` must be autocommit."""
    await conn.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK_KEY])
    try:
        await ensure_vector_extension(conn)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT version FROM schema_migrations")
        applied = {row[0] for row in await cur.fetchall()}
        done: list[str] = []
        for step in steps():
            if step.version in applied:
                continue
            async with conn.transaction():
                if step.kind == "sql":
                    text = resources.files(__name__).joinpath(step.resource).read_text(encoding="utf-8")
                    await conn.execute(text.encode())
                else:
                    module = importlib.import_module(f"{__name__}.{step.resource[:-3]}")
                    await module.apply(conn)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", [step.version, step.name]
                )
            done.append(f"{step.version:04d}_{step.name}")
        if done:
            log.info("migrations applied: %s", ", ".join(done))
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK_KEY])


async def schema_ready(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether the stores table exists (plan reads without migrating)."""
    cur = await conn.execute("SELECT to_regclass('vector_stores') IS NOT NULL")
    row = await cur.fetchone()
    return bool(row and row[0])
