"""Export and import of one store: time, archive size against the store's table and indexes, peak RSS, and
whether 100 queries answer the same after the round trip.

    python bench/archive_bench.py [--rows 100000] [--dims 768] [--queries 100] [--json FILE]

The store is made with the server's own code (`stores.insert`), loaded with binary COPY and indexed with
`CREATE INDEX` (maintenance_work_mem 512MB, as the import uses): that load plus index build is the **import
floor**, the least work any import must do. The **export floor** is a bare binary `COPY ... TO STDOUT` of the
same columns, read and thrown away. Export and import then run as the real CLI (`vectorstore export` /
`vectorstore import`, each its own process, DATABASE_URL set), their wall time and peak RSS
(VmHWM) measured. Flat memory is checked by exporting a store a tenth the size too: the peak RSS should
barely move.

Equality: for `--queries` fresh vectors, the top 10 ids and cosine distances before and after, exactly
(sequential scan: the data itself) and through HNSW (ef_search 100: the path searches take; the imported
index is a new build, and pgvector's HNSW build is randomised, so its approximate answers may differ slightly).
The embedding upstream in the spec is an unreachable address: an import that tried to embed would fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from _db import bench_server, finish_report, fresh_database, new_unindexed_store
from large_stores import make_vectors
from psycopg import sql

from vectorstore.storage import tables
from vectorstore.storage.migrations import migrate

STORE_ID = "vs_archivebench"
SMALL_ID = "vs_archivebench_small"
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
]


def _text(i: int) -> str:
    # ~600 characters of varied words: a chunk's text and its tsvector weigh in the table and the archive.
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] + str(j % 13) for j in range(80))


async def build(dsn: str, data: Any) -> dict[str, float]:
    rows, dims = data.shape
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(conn)
        from pgvector.psycopg import register_vector_async

        await register_vector_async(conn)
        record = await new_unindexed_store(conn, STORE_ID, "none", dims, name=STORE_ID, model="bench-model")
        started = time.perf_counter()
        async with conn.transaction():
            for start in range(0, rows, 5000):
                batch = [
                    tables.ChunkRow(
                        id=f"chunk-{i:07d}", content=_text(i), embedding=data[i], file_id=None, attributes={"i": i}
                    )
                    for i in range(start, min(rows, start + 5000))
                ]
                await tables.copy_chunks(conn, record.layout, batch)
        loaded = time.perf_counter() - started
        await conn.execute("SET maintenance_work_mem = '512MB'")
        started = time.perf_counter()
        for statement in tables.index_statements(record.layout):
            await conn.execute(statement)
        indexed = time.perf_counter() - started
        await conn.execute(sql.SQL("ANALYZE {t}").format(t=record.layout.ident))
        # The small store for the flat-memory check: a tenth of the rows.
        small = await new_unindexed_store(conn, SMALL_ID, "none", dims, name=SMALL_ID, model="bench-model")
        await conn.execute(
            sql.SQL(
                "INSERT INTO {s} (id, file_id, chunk_index, filename, content, attributes, embedding)"
                " SELECT id, file_id, chunk_index, filename, content, attributes, embedding FROM {t} LIMIT %s"
            ).format(s=small.layout.ident, t=record.layout.ident),
            [rows // 10],
        )
        for statement in tables.index_statements(small.layout):
            await conn.execute(statement)
    return {"load_seconds": loaded, "index_seconds": indexed}


async def sizes(dsn: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        table = tables.table_name(STORE_ID)
        cur = await conn.execute(
            "SELECT pg_table_size(%s), pg_indexes_size(%s), pg_relation_size(%s)",
            [table, table, f"{table}_hnsw"],
        )
        row = await cur.fetchone()
        assert row is not None
        return {"table_bytes": int(row[0]), "indexes_bytes": int(row[1]), "hnsw_bytes": int(row[2])}


async def export_floor(dsn: str) -> float:
    table = tables.table_name(STORE_ID)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        async with conn.cursor() as cur:
            statement = sql.SQL(
                "COPY (SELECT id, file_id, chunk_index, filename, content, attributes, embedding FROM {t})"
                " TO STDOUT (FORMAT BINARY)"
            ).format(t=sql.Identifier(table))
            async with cur.copy(statement) as copy:
                async for _ in copy:
                    pass
        return time.perf_counter() - started


def _peak_rss_kib(pid: int) -> int | None:
    """VmHWM, the process's own peak RSS (reset by exec, unlike wait4's ru_maxrss, which on Linux keeps the
    forking parent's peak: this bench's numpy arrays)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def run_cli(args: list[str], dsn: str) -> dict[str, Any]:
    """The command in its own process: wall seconds and peak RSS (VmHWM, sampled every 20 ms to the end)."""
    env = {**os.environ, "DATABASE_URL": dsn}
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "vectorstore"), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    peak = 0
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.append(process.stderr.read() if process.stderr else b""))
    reader.start()
    while process.poll() is None:
        peak = max(peak, _peak_rss_kib(process.pid) or 0)
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    reader.join()
    out = b"".join(stderr).decode()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{out}")
    # The command's own last progress line ends with its elapsed seconds: the work, without the ~2 s the
    # process takes to start (imports) and connect.
    progress = [line for line in out.splitlines() if line.startswith(("export: ", "import: "))]
    return {
        "seconds": round(seconds, 2),
        "work_seconds": float(progress[-1].rsplit(", ", 1)[1].rstrip("s")),
        "peak_rss_mb": round(peak / 1024, 1),
        "summary": out.strip().splitlines()[-1],
    }


async def answers(dsn: str, queries: Any, *, exact: bool) -> list[list[tuple[str, float]]]:
    table = sql.Identifier(tables.table_name(STORE_ID))
    out = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        from pgvector.psycopg import register_vector_async

        await register_vector_async(conn)
        await conn.execute("SET hnsw.ef_search = 100")
        if exact:
            await conn.execute("SET enable_indexscan = off")
            await conn.execute("SET enable_bitmapscan = off")
        for query in queries:
            cur = await conn.execute(
                sql.SQL("SELECT id, embedding <=> %s AS d FROM {t} ORDER BY embedding <=> %s LIMIT 10").format(t=table),
                [query, query],
            )
            out.append([(str(row[0]), float(row[1])) for row in await cur.fetchall()])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    data, queries = make_vectors(args.rows, args.dims, clusters=100, queries=args.queries)
    with bench_server() as server, tempfile.TemporaryDirectory(prefix="vs-archive-") as tmp:
        source = fresh_database(server, "archive_source")
        target = fresh_database(server, "archive_target")
        spec = Path(tmp) / "stack.yaml"
        spec.write_text(
            json.dumps(
                {
                    "version": 1,
                    "namespace": "bench",
                    "database": {"cluster": {"name": "pg"}},
                    "auth": {"keys": [{"name": "w", "api_key": {"secret": "s", "key": "w"}, "scope": "write"}]},
                    "embedding": {"base_url": "http://127.0.0.1:9", "model": "bench-model", "dimensions": args.dims},
                }
            )
        )
        floor = asyncio.run(build(source, data))
        size = asyncio.run(sizes(source))
        export_floor_seconds = asyncio.run(export_floor(source))
        archive, small_archive = Path(tmp) / "store.vsa", Path(tmp) / "small.vsa"
        exported = run_cli(["export", STORE_ID, "-o", str(archive), "--spec", str(spec)], source)
        exported_small = run_cli(["export", SMALL_ID, "-o", str(small_archive), "--spec", str(spec)], source)
        imported = run_cli(["import", str(archive), "--spec", str(spec)], target)
        exact_before = asyncio.run(answers(source, queries, exact=True))
        exact_after = asyncio.run(answers(target, queries, exact=True))
        hnsw_before = asyncio.run(answers(source, queries, exact=False))
        hnsw_after = asyncio.run(answers(target, queries, exact=False))
        archive_bytes = archive.stat().st_size
    import_floor = floor["load_seconds"] + floor["index_seconds"]
    overlap = [len({i for i, _ in a} & {i for i, _ in b}) / 10 for a, b in zip(hnsw_before, hnsw_after, strict=True)]
    report: dict[str, Any] = {
        "rows": args.rows,
        "dims": args.dims,
        "export": exported,
        "export_small_store": {"rows": args.rows // 10, **exported_small},
        "import": imported,
        "export_floor_seconds": round(export_floor_seconds, 2),
        "export_vs_floor": round(exported["work_seconds"] / export_floor_seconds, 2),
        "import_floor_seconds": {k: round(v, 2) for k, v in floor.items()},
        "import_vs_floor": round(imported["work_seconds"] / import_floor, 2),
        "archive_bytes": archive_bytes,
        **size,
        "archive_vs_table": round(archive_bytes / size["table_bytes"], 2),
        "archive_vs_table_and_indexes": round(archive_bytes / (size["table_bytes"] + size["indexes_bytes"]), 2),
        "exact_top10_identical": sum(a == b for a, b in zip(exact_before, exact_after, strict=True)),
        "hnsw_top10_identical": sum(a == b for a, b in zip(hnsw_before, hnsw_after, strict=True)),
        "hnsw_top10_mean_overlap": round(float(np.mean(overlap)), 4),
        "queries": args.queries,
        "command": " ".join(["python bench/archive_bench.py", *sys.argv[1:]]),
    }
    finish_report(report, args.json)


if __name__ == "__main__":
    main()
