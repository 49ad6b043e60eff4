"""Where a read runs: searches on the streaming replicas, with read-your-writes; everything else on the primary.

`ReadRouter.run(read)` runs `read(conn)` on a replica connection when the replica is known to hold every
write that was visible on the primary when the search arrived, and on the primary otherwise. Writes, the
ingestion queue, reconcile, migrations and the reads that decide a write never come here: they use the
primary pool directly.

Read-your-writes, and why it holds (docs/design.md, "Reads from replicas"):

1. A client that saw a write (a file `completed`, through any server process) saw it in a snapshot of the
   primary taken after the write's transaction had committed. PostgreSQL inserts a transaction's commit
   record into the WAL before the commit becomes visible to other snapshots (with any `synchronous_commit`).
2. The search arrives after that. `PrimaryLsn.read()` returns the primary's `pg_current_wal_insert_lsn()`
   from a query *sent after the call*, so the value is at or past the end of that commit record.
3. A standby's `pg_last_wal_replay_lsn()` is the end of the last record it has replayed; once a commit
   record is replayed, every snapshot the standby takes afterwards sees that transaction. So if a value read
   from the replica connection is at or past the target, the *next* statement on that connection (a new
   snapshot: the pool is autocommit) sees the write. The value read is remembered per connection: replay
   only moves forward, so it stays a valid lower bound for later statements on that same server.
4. Otherwise the router polls the replica's replay position for up to `wait_seconds`, then runs the read on
   the primary. No shared memory is involved, so it holds across any number of server processes and pods.

What it costs the primary: one `SELECT pg_current_wal_insert_lsn()` per *batch* of searches. Calls that
arrive while a query is in flight share the next one, so there is at most one in flight and one queued per
process, whatever the search rate (`vectorstore_primary_lsn_reads_total`).

Faults: a replica pool that can't hand out a connection, or a replica connection that breaks, sends the
search to the primary (never a 5xx for the client) and marks the replica down; a background probe brings it
back as soon as a pooled connection answers again. Each search the primary serves instead is counted in
`vectorstore_replica_fallbacks_total{reason}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from vectorstore.observability import metrics
from vectorstore.storage.database import autocommit, configure_connection

log = logging.getLogger("vectorstore")

Pool = AsyncConnectionPool[psycopg.AsyncConnection[Any]]
T = TypeVar("T")
Read = Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]

# Positions as plain integers (bytes since 0/0): psycopg has no pg_lsn type, and integers compare simply.
_PRIMARY_LSN_SQL: Final = "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"
# On a standby, what it has replayed. A server that is no longer in recovery (a replica promoted while our
# connection to it stayed open) is the primary itself: everything committed there is visible there.
_REPLAYED_LSN_SQL: Final = (
    "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
    " ELSE pg_current_wal_insert_lsn() END - '0/0'::pg_lsn"
)

FALLBACK_LAGGING: Final = "lagging"
FALLBACK_UNAVAILABLE: Final = "unavailable"
FALLBACK_FAILED: Final = "failed"


class PrimaryLsn:
    """The primary's WAL insert position, read by a query sent after the caller asked; one query serves all
    the callers that asked before it was sent."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._next: asyncio.Future[int] | None = None
        """The batch new callers join: its query has not been sent yet."""
        self._previous: asyncio.Task[None] | None = None
        self.queries = 0

    async def read(self) -> int:
        batch = self._next
        if batch is None:
            batch = self._next = asyncio.get_running_loop().create_future()
            self._previous = asyncio.create_task(self._fetch(batch, self._previous))
        # Shielded: a caller that goes away (client disconnect) must not cancel the others' answer.
        return await asyncio.shield(batch)

    async def _fetch(self, batch: asyncio.Future[int], previous: asyncio.Task[None] | None) -> None:
        try:
            if previous is not None:
                # One query in flight at a time; callers keep joining `batch` meanwhile. (`wait`: whatever
                # the previous one raised is its callers' business.)
                await asyncio.wait([previous])
            async with self._pool.connection() as conn:
                # Close the batch before the query goes out: whoever asks from now on may have seen a commit
                # this query would not cover, so they wait for the next one.
                if self._next is batch:
                    self._next = None
                self.queries += 1
                metrics.PRIMARY_LSN_READS.inc()
                # Autocommit: one round trip, where the pool's transactional default would add BEGIN and COMMIT.
                async with autocommit(conn):
                    cur = await conn.execute(_PRIMARY_LSN_SQL)
                    row = await cur.fetchone()
            assert row is not None
            batch.set_result(int(row[0]))
        except Exception as exc:
            if self._next is batch:
                self._next = None
            batch.set_exception(exc)
            batch.exception()  # marked retrieved: every caller may have gone away meanwhile
        except asyncio.CancelledError:  # shutdown
            if self._next is batch:
                self._next = None
            batch.cancel()
            raise


class ReadRouter:
    """`run(read)`: on a caught-up replica when there is one, else on the primary."""

    def __init__(
        self,
        primary: Pool,
        replica: Pool | None = None,
        *,
        wait_seconds: float = 0.05,
        checkout_timeout: float = 1.0,
        probe_seconds: float = 0.5,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self.wait_seconds = wait_seconds
        self.checkout_timeout = checkout_timeout
        self.probe_seconds = probe_seconds
        self.lsn = PrimaryLsn(primary)
        self.up = False
        self._replayed: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], int] = weakref.WeakKeyDictionary()
        self._probe: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self.replica is not None

    async def open(self) -> None:
        """Open the replica pool without waiting for it, and start probing: the primary serves until it answers."""
        if self.replica is None:
            return
        await self.replica.open(wait=False)
        self._mark_down(None)

    async def close(self) -> None:
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self.replica is not None:
            await self.replica.close()

    async def run(self, read: Read[T]) -> T:
        if self.replica is None:
            async with self.primary.connection() as conn:
                return await read(conn)
        if not self.up:
            return await self._on_primary(read, FALLBACK_UNAVAILABLE)
        # Before any replica work: the position must be read after the request arrived (see the module doc).
        # A primary that can't answer fails the search as it would without replicas (503).
        target = await self.lsn.read()
        used: psycopg.AsyncConnection[Any] | None = None
        try:
            async with self.replica.connection(timeout=self.checkout_timeout) as conn:
                used = conn
                if await self._caught_up(conn, target):
                    result = await read(conn)
                    metrics.REPLICA_SEARCHES.inc()
                    return result
            reason = FALLBACK_LAGGING
        except (PoolTimeout, PoolClosed) as exc:
            reason = FALLBACK_UNAVAILABLE
            self._mark_down(exc)
        except psycopg.OperationalError as exc:
            # The replica went away mid-query, or cancelled it (a conflict with replay, a shutdown): the read
            # is safe to run again. Only a broken connection means the replica itself is in trouble.
            reason = FALLBACK_FAILED
            if used is None or used.broken or used.closed:
                self._mark_down(exc)
            else:
                log.info("search on a replica failed (%s); ran it on the primary", str(exc).strip()[:200])
        return await self._on_primary(read, reason)

    async def _on_primary(self, read: Read[T], reason: str) -> T:
        metrics.REPLICA_FALLBACKS.labels(reason).inc()
        async with self.primary.connection() as conn:
            return await read(conn)

    async def _caught_up(self, conn: psycopg.AsyncConnection[Any], target: int) -> bool:
        known = self._replayed.get(conn)
        if known is not None and known >= target:
            return True
        deadline = time.monotonic() + self.wait_seconds
        pause = 0.001
        while True:
            cur = await conn.execute(_REPLAYED_LSN_SQL)
            row = await cur.fetchone()
            replayed = int(row[0]) if row is not None and row[0] is not None else 0
            self._replayed[conn] = replayed
            if replayed >= target:
                return True
            if time.monotonic() + pause > deadline:
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)

    def _mark_down(self, exc: BaseException | None) -> None:
        if self.up and exc is not None:
            log.warning("read replicas unavailable (%s); searches go to the primary", str(exc).strip()[:200])
        self.up = False
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_until_up(), name="replica-probe")

    async def _probe_until_up(self) -> None:
        assert self.replica is not None
        first = True
        while not self._closed:
            if not first:
                await asyncio.sleep(self.probe_seconds)
            first = False
            try:
                # Drop the connections that broke while the replica was away, then ask a fresh one.
                await self.replica.check()
                async with self.replica.connection(timeout=self.checkout_timeout) as conn:
                    await conn.execute("SELECT 1")
            except (PoolTimeout, PoolClosed, psycopg.Error) as exc:
                log.debug("read replicas still unavailable: %s", exc)
                continue
            self.up = True
            log.info("read replicas available: searches go to them again")
            return


def make_replica_pool(dsn: str, *, min_size: int, max_size: int) -> Pool:
    """An unopened autocommit pool on the replicas: each statement takes its own snapshot, which the
    read-your-writes check relies on (the position read first, the search after)."""
    return AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        open=False,
        kwargs={"autocommit": True, "application_name": "vectorstore-read"},
        configure=configure_connection,
        # A replica that is gone should cost a request at most this long once; then the router stops asking.
        timeout=1.0,
        # Keep retrying a replica that is away for long: the router probes, and CNPG brings replicas back.
        reconnect_timeout=3600.0,
        name="vectorstore-read",
    )
