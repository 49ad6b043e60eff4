"""Each source's last sync, kept in `source_status` so every replica (and `vectorstore sync`) shows the same.

A sync writes its row twice: when it starts (`syncing`) and when it ends (counts, outcome, error, the first
failures). Whether a sync is running *now* is read from the store's advisory lock in `pg_locks`, so a
process killed mid-sync never leaves a source looking busy forever.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from config.model import Store

MAX_FAILURES_KEPT = 100
"""Failed files listed per source (all of them are counted)."""


def lock_key(store_id: str) -> int:
    """The advisory lock key of one store's sync: the same on every replica, distinct per store."""
    digest = hashlib.sha256(b"vectorstore-sources\0" + store_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass
class SourceResult:
    """What one sync (or dry run) of one source did."""

    store: str
    source: str
    location: str
    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None
    """Set when the source could not be read (nothing was deleted)."""
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    removed: bool = False
    """The source is no longer declared: its files were deleted."""
    held: dict[str, Any] | None = None
    """The deletion brake held this sync's deletions: {"would_delete", "files", "max_delete"} (nothing deleted)."""

    @property
    def duration(self) -> float:
        return (self.finished_at or time.time()) - self.started_at

    @property
    def changes(self) -> int:
        return self.added + self.updated + self.deleted

    def fail(self, path: str, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append({"path": path, "reason": reason})

    def summary(self, *, planned: bool = False) -> str:
        verbs = ("to add", "to update", "to delete") if planned else ("added", "updated", "deleted")
        counts = (
            f"{self.added} {verbs[0]}, {self.updated} {verbs[1]}, {self.deleted} {verbs[2]}, "
            f"{self.unchanged} unchanged, {self.failed} failed"
        )
        if self.error:
            return f"{counts}; can't read the source: {self.error}"
        if self.held:
            return f"{counts}; {held_reason(self.held)}"
        return counts


def held_reason(held: Mapping[str, Any]) -> str:
    return (
        f"{held['would_delete']} of its {held['files']} file(s) are gone, over sync.max_delete ({held['max_delete']}) "
        "or all of them: nothing deleted, held until `vectorstore sync --allow-deletes` or a higher limit"
    )


async def tables_exist(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether the sources' migration has run (plan reads databases it must not migrate)."""
    cur = await conn.execute("SELECT to_regclass('source_files') IS NOT NULL")
    row = await cur.fetchone()
    return bool(row and row[0])


async def started(conn: psycopg.AsyncConnection[Any], store_id: str, source: str, at: float) -> None:
    await conn.execute(
        "INSERT INTO source_status (vector_store_id, source, syncing, syncing_since) VALUES (%s, %s, true, %s)"
        " ON CONFLICT (vector_store_id, source) DO UPDATE SET syncing = true, syncing_since = EXCLUDED.syncing_since",
        [store_id, source, at],
    )


async def finished(conn: psycopg.AsyncConnection[Any], store_id: str, result: SourceResult) -> None:
    ok = result.error is None
    outcome = "failed" if not ok else "held" if result.held else "ok"
    await conn.execute(
        "UPDATE source_status SET syncing = false, syncing_since = NULL, started_at = %s, finished_at = %s,"
        " duration_seconds = %s, outcome = %s, held = %s,"
        " added = %s, updated = %s, deleted = %s, unchanged = %s, failed = %s, last_error = %s, failures = %s,"
        " last_success_at = CASE WHEN %s THEN %s ELSE last_success_at END"
        " WHERE vector_store_id = %s AND source = %s",
        [
            result.started_at,
            result.finished_at,
            result.duration,
            outcome,
            Jsonb(result.held) if result.held else None,
            result.added,
            result.updated,
            result.deleted,
            result.unchanged,
            result.failed,
            result.error,
            Jsonb(result.failures),
            ok,
            result.finished_at,
            store_id,
            result.source,
        ],
    )


def _lock_parts(key: int) -> tuple[int, int]:
    """pg_locks shows a bigint advisory key as two unsigned 32-bit halves (classid, objid)."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


async def views(conn: psycopg.AsyncConnection[Any], store: Store) -> list[dict[str, Any]]:
    """The status objects of a declared store's sources, in spec order."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM source_status WHERE vector_store_id = %s", [store.id])
        rows = {str(row["source"]): row for row in await cur.fetchall()}
        await cur.execute(
            "SELECT s.source, v.status, count(*) AS n FROM source_files s JOIN vector_store_files v"
            " ON v.vector_store_id = s.vector_store_id AND v.file_id = s.file_id"
            " WHERE s.vector_store_id = %s GROUP BY s.source, v.status",
            [store.id],
        )
        counts: dict[str, dict[str, int]] = {}
        for row in await cur.fetchall():
            counts.setdefault(str(row["source"]), {})[str(row["status"])] = int(row["n"])
        classid, objid = _lock_parts(lock_key(store.id))
        await cur.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objid = %s"
            " AND objsubid = 1 AND granted)",
            [classid, objid],
        )
        locked = await cur.fetchone()
    running = bool(locked and locked["exists"])
    return [_view(source.name, source.kind, source.describe(), rows.get(source.name), counts.get(source.name, {}),
                  running) for source in store.sources]  # fmt: skip


def _seconds(value: Any) -> int | None:
    return int(value) if value is not None else None


def _view(
    name: str, kind: str, location: str, row: Mapping[str, Any] | None, counts: Mapping[str, int], running: bool
) -> dict[str, Any]:
    syncing = bool(row and row["syncing"] and running)
    last: dict[str, Any] | None = None
    state = "never_synced"
    if row is not None and row["finished_at"] is not None:
        state = str(row["outcome"]) if row["outcome"] in ("ok", "held") else "failed"
        last = {
            "started_at": _seconds(row["started_at"]),
            "finished_at": _seconds(row["finished_at"]),
            "duration_seconds": round(float(row["duration_seconds"] or 0.0), 3),
            "added": row["added"],
            "updated": row["updated"],
            "deleted": row["deleted"],
            "unchanged": row["unchanged"],
            "failed": row["failed"],
            "error": row["last_error"],
            "failures": row["failures"],
            "held": row["held"],
        }
    if syncing:
        state = "syncing"
    return {
        "id": name,
        "object": "vector_store.source",
        "name": name,
        "type": kind,
        "location": location,
        "status": state,
        "syncing_since": _seconds(row["syncing_since"]) if syncing and row is not None else None,
        "last_sync": last,
        "last_success_at": _seconds(row["last_success_at"]) if row is not None else None,
        "files": {
            "in_progress": counts.get("in_progress", 0),
            "completed": counts.get("completed", 0),
            "failed": counts.get("failed", 0),
            "total": sum(counts.values()),
        },
    }
