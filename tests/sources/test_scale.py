"""A source of 10,000 files: the listing streams, files are read one at a time, memory stays bounded."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path

import psycopg
from server.conftest import write_spec

from sources.conftest import STORE_ID, sources_spec
from vectorstore.sources.engine import Syncer
from vectorstore.sources.readers import Context
from vectorstore.storage import reconcile
from vectorstore.storage.migrations import migrate

FILES = 10_000
FILE_BYTES = 4_000
MEMORY_BOUND = 16 * 2**20
"""Well under the 40 MB the files hold: what stays in memory is their paths and one file at a time."""


def make_source(root: Path, files: int = FILES) -> None:
    """`files` files of 4 kB in 100 directories."""
    line = "Scale test sentence about streaming listings and bounded memory. "
    for index in range(files):
        directory = root / f"d{index % 100:03d}"
        directory.mkdir(parents=True, exist_ok=True)
        text = f"Document {index}. " + line * (FILE_BYTES // len(line) + 1)
        (directory / f"doc{index:05d}.md").write_text(text[:FILE_BYTES])


async def test_ten_thousand_files_stream_with_bounded_memory(fresh_dsn: str, tmp_path: Path) -> None:
    root = tmp_path / "many"
    await asyncio.to_thread(make_source, root)
    spec = write_spec(tmp_path / "spec.yaml", sources_spec("http://127.0.0.1:9", [{"name": "bulk", "path": str(root)}]))
    async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
        await migrate(conn)
        await reconcile.reconcile(conn, spec)
    syncer = Syncer(fresh_dsn, spec, Context(base_dir=tmp_path, work_dir=tmp_path / "clones"))

    # The dry run (`vectorstore plan`) lists, reads and hashes every file: 40 MB pass through it.
    tracemalloc.start()
    try:
        (planned,) = await syncer.sync_all(dry_run=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert planned.sources[0].added == FILES
    assert peak < MEMORY_BOUND, f"peak {peak / 2**20:.1f} MiB"

    # The real sync writes them all (queued for ingestion, which is not started here), then finds them unchanged.
    (synced,) = await syncer.sync_all()
    assert synced.sources[0].added == FILES and synced.sources[0].error is None
    (again,) = await syncer.sync_all()
    assert (again.sources[0].unchanged, again.sources[0].changes) == (FILES, 0)
    async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*), count(DISTINCT path), count(DISTINCT file_id) FROM source_files"
            " WHERE vector_store_id = %s",
            [STORE_ID],
        )
        assert await cur.fetchone() == (FILES, FILES, FILES)
        cur = await conn.execute("SELECT count(*) FROM ingest_jobs WHERE vector_store_id = %s", [STORE_ID])
        assert await cur.fetchone() == (FILES,)
