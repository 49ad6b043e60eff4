"""Bring the database's stores in line with the spec: create, fix drift, migrate, prune.

A change of a store's vectors, index, language or chunking (`_VECTOR_FIELDS`, `_INDEX_FIELDS`, `_CHUNK_FIELDS`)
on a store that holds data is not applied here: it becomes an online migration (vectorstore/migration),
recorded in this transaction and carried out in the background, while the store keeps serving from its
active generation. A spec changed back to the active generation mid-migration cancels it.

One transaction under a transaction-level advisory lock: replicas starting together queue on the lock, and
each one after the first finds nothing left to do. `plan` runs the same comparison without the lock and
without writing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg

from config import Spec, Store
from vectorstore.migration import records as migrations
from vectorstore.migration.shapes import Shape
from vectorstore.storage import stores, tables

log = logging.getLogger("vectorstore")

RECONCILE_LOCK_KEY = 0x7665_6374_7265_636E  # "vectrecn"

ChangeKind = Literal["create", "update", "migrate", "cancel", "refuse", "prune", "unchanged"]
# Fields whose change needs a new table (new vectors, a new column type, new tsvectors for `language`): on an
# empty store the table is simply made again, on a store with data a new generation is built online.
_VECTOR_FIELDS = ("model", "dimensions", "distance", "language", "quantization")
_INDEX_FIELDS = ("hnsw_m", "hnsw_ef_construction")
_PLAIN_FIELDS = ("name", "description", "metadata", "ef_search", "declared")
# The declared chunking: files chunked by the store's default are re-chunked to it (a migration on a store with
# data; files not yet ingested simply take it on an empty one).
_CHUNK_FIELDS = ("chunk_max_tokens", "chunk_overlap_tokens")


class ReconcileError(Exception):
    """Reconcile can't proceed (a refused change); the message names each store and field."""


@dataclass(frozen=True)
class FieldDiff:
    field: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.field}: {self.old!r} -> {self.new!r}"


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    store_id: str
    name: str | None
    diffs: tuple[FieldDiff, ...] = ()
    reason: str = ""
    declared: Store | None = None


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)

    def of(self, kind: ChangeKind) -> list[Change]:
        return [change for change in self.changes if change.kind == kind]

    @property
    def has_changes(self) -> bool:
        return any(change.kind != "unchanged" for change in self.changes)

    def counts(self) -> dict[str, int]:
        kinds: tuple[ChangeKind, ...] = ("create", "update", "migrate", "cancel", "unchanged", "prune", "refuse")
        return {kind: len(self.of(kind)) for kind in kinds}


def desired_fields(store: Store) -> dict[str, Any]:
    return {
        "name": store.name,
        "description": store.description,
        "metadata": dict(store.metadata),
        "ef_search": store.hnsw_ef_search,
        "declared": True,
        "model": store.model,
        "dimensions": store.dimensions,
        "distance": store.distance,
        "hnsw_m": store.hnsw_m,
        "hnsw_ef_construction": store.hnsw_ef_construction,
        "language": store.search.language,
        "quantization": store.quantization,
        "chunk_max_tokens": store.max_chunk_size_tokens,
        "chunk_overlap_tokens": store.chunk_overlap_tokens,
    }


async def compute_plan(conn: psycopg.AsyncConnection[Any], spec: Spec) -> Plan:
    existing = {record.id: record for record in await stores.all_stores(conn)}
    # `vectorstore plan` reads a database that may predate online migrations (it never migrates the schema).
    cur = await conn.execute("SELECT to_regclass('store_migrations') IS NOT NULL")
    row = await cur.fetchone()
    with_migrations = bool(row and row[0])
    plan = Plan()
    for store in spec.stores:
        record = existing.pop(store.id, None)
        if record is None:
            plan.changes.append(Change("create", store.id, store.name, declared=store))
            continue
        want = desired_fields(store)
        # A store whose chunking was never recorded (declared before re-chunking existed) has it recorded by
        # `record_chunking`, not migrated: which way its files were cut is not known.
        compared = (*_PLAIN_FIELDS, *_VECTOR_FIELDS, *_INDEX_FIELDS) + (
            _CHUNK_FIELDS if record.chunk_max_tokens is not None else ()
        )
        diffs = tuple(
            FieldDiff(name, getattr(record, name), want[name])
            for name in compared
            if getattr(record, name) != want[name]
        )
        shape_diffs = [diff for diff in diffs if diff.field in (*_VECTOR_FIELDS, *_INDEX_FIELDS, *_CHUNK_FIELDS)]
        migration = await migrations.get(conn, store.id) if with_migrations else None
        active = migration is not None and migration.active
        if shape_diffs and await tables.row_count_at_least_one(conn, record.table_name):
            fields = ", ".join(str(diff) for diff in shape_diffs)
            reason = f"{fields}; " + Shape.of_store(store).describe_work(Shape.of_record(record))
            plan.changes.append(Change("migrate", store.id, store.name, diffs, reason, store))
        elif active and not shape_diffs:
            reason = "the spec is back to the active generation"
            plan.changes.append(Change("cancel", store.id, store.name, diffs, reason, store))
        elif diffs:
            plan.changes.append(Change("update", store.id, store.name, diffs, declared=store))
        else:
            plan.changes.append(Change("unchanged", store.id, store.name, declared=store))
    for record in existing.values():
        if spec.prune:
            plan.changes.append(Change("prune", record.id, record.name, reason="not declared and reconcile.prune"))
        elif record.declared:
            # Dropped from the spec but kept: it becomes an ordinary store the API may change or delete.
            plan.changes.append(Change("update", record.id, record.name, (FieldDiff("declared", True, False),)))
    return plan


async def _apply_change(conn: psycopg.AsyncConnection[Any], change: Change) -> None:
    store = change.declared
    if change.kind == "create":
        assert store is not None
        await stores.insert(
            conn,
            stores.NewStore(
                id=store.id,
                name=store.name,
                description=store.description,
                metadata=store.metadata,
                declared=True,
                model=store.model,
                dimensions=store.dimensions,
                distance=store.distance,
                hnsw_m=store.hnsw_m,
                hnsw_ef_construction=store.hnsw_ef_construction,
                ef_search=store.hnsw_ef_search,
                language=store.search.language,
                quantization=store.quantization,
                chunk_max_tokens=store.max_chunk_size_tokens,
                chunk_overlap_tokens=store.chunk_overlap_tokens,
            ),
        )
    elif change.kind in ("migrate", "cancel"):
        assert store is not None
        record = await stores.get(conn, change.store_id, for_update=True)
        assert record is not None
        values = {diff.field: diff.new for diff in change.diffs if diff.field in _PLAIN_FIELDS}
        if values:
            await stores.update_fields(conn, record.id, values)
        if change.kind == "migrate":
            await migrations.request(conn, record, Shape.of_store(store), change.reason)
        else:
            await migrations.cancel(conn, record.id, change.reason)
    elif change.kind == "update":
        record = await stores.get(conn, change.store_id, for_update=True)
        assert record is not None
        changed = {diff.field for diff in change.diffs}
        values = {diff.field: diff.new for diff in change.diffs if diff.field in _PLAIN_FIELDS}
        if changed & set(_VECTOR_FIELDS):
            # An empty store: a migration under way for it has nothing to carry over.
            await migrations.cancel(conn, record.id, "the store is empty; its table is made again")
            # The table is empty (checked in the plan, under the lock): rebuild it for the new shape.
            assert store is not None
            await stores.delete(conn, record)
            await _apply_change(conn, Change("create", store.id, store.name, declared=store))
            return
        if changed & set(_INDEX_FIELDS):
            # An empty store (one with data migrates): rebuilding its index is instant.
            assert store is not None
            await migrations.cancel(conn, record.id, "the store is empty; its index is made again")
            values |= {"hnsw_m": store.hnsw_m, "hnsw_ef_construction": store.hnsw_ef_construction}
            layout = dataclasses.replace(
                record.layout, hnsw_m=store.hnsw_m, hnsw_ef_construction=store.hnsw_ef_construction
            )
            await conn.execute(tables.drop_index_statement(layout))
            for statement in tables.index_statements(layout):
                await conn.execute(statement)
        if changed & set(_CHUNK_FIELDS):
            # No chunk to cut again (an empty store): the files still queued take the new chunking.
            assert store is not None
            await migrations.cancel(conn, record.id, "the store is empty; its files take the new chunking")
            values |= {
                "chunk_max_tokens": store.max_chunk_size_tokens,
                "chunk_overlap_tokens": store.chunk_overlap_tokens,
            }
            await conn.execute(
                "UPDATE vector_store_files SET max_chunk_size_tokens = %s, chunk_overlap_tokens = %s"
                " WHERE vector_store_id = %s AND chunking_default AND status = 'in_progress'",
                [store.max_chunk_size_tokens, store.chunk_overlap_tokens, record.id],
            )
        await stores.update_fields(conn, record.id, values)
    elif change.kind == "prune":
        record = await stores.get(conn, change.store_id, for_update=True)
        if record is not None:
            await stores.delete(conn, record)


async def record_chunking(conn: psycopg.AsyncConnection[Any], spec: Spec) -> None:
    """Declared stores from before re-chunking (migration 0310) get their chunking recorded, and their files
    whose way of chunking is unknown are decided once: a file cut with the store's declared chunking counts as
    chunked by the store's default (it follows later changes), one cut another way as given its own strategy
    (it keeps it). Nothing is migrated by this. In reconcile's transaction."""
    for store in spec.stores:
        cur = await conn.execute(
            "UPDATE vector_stores SET chunk_max_tokens = %s, chunk_overlap_tokens = %s"
            " WHERE id = %s AND chunk_max_tokens IS NULL",
            [store.max_chunk_size_tokens, store.chunk_overlap_tokens, store.id],
        )
        await conn.execute(
            "UPDATE vector_store_files SET chunking_default ="
            " (max_chunk_size_tokens = %s AND chunk_overlap_tokens = %s)"
            " WHERE vector_store_id = %s AND chunking_default IS NULL",
            [store.max_chunk_size_tokens, store.chunk_overlap_tokens, store.id],
        )
        if cur.rowcount:
            log.info(
                "reconcile: store %s: its chunking (%d tokens, %d overlap) recorded; files cut another way keep theirs",
                store.id,
                store.max_chunk_size_tokens,
                store.chunk_overlap_tokens,
            )


async def reconcile(conn: psycopg.AsyncConnection[Any], spec: Spec, *, source: str = "spec") -> Plan:
    """Apply the plan in one transaction; raise ReconcileError (changing nothing) if any change is refused."""
    started = time.perf_counter()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [RECONCILE_LOCK_KEY])
        await record_chunking(conn, spec)
        plan = await compute_plan(conn, spec)
        refused = plan.of("refuse")
        if refused:
            raise ReconcileError("; ".join(change.reason for change in refused))
        for change in plan.changes:
            await _apply_change(conn, change)
    counts = plan.counts()
    log.info(
        "reconcile: %d created, %d updated, %d migrating, %d cancelled, %d unchanged, %d pruned (%s, %.2fs)",
        counts["create"],
        counts["update"],
        counts["migrate"],
        counts["cancel"],
        counts["unchanged"],
        counts["prune"],
        source,
        time.perf_counter() - started,
    )
    return plan
