"""Declared documents: a first sync against `vectorstore ingest` of the same files, then the resyncs that follow.

    python bench/sources_bench.py [--files 1000] [--changed 10] [--dims 256]

The corpus is the first `--files` Cranfield abstracts (../shared/datasets/cranfield/cran.all.1400), one `.txt`
file each, in 10 folders; a generated corpus of the same size stands in when the dataset is absent. The embedding
upstream is the tests' fake (tests/fakeembed.py: deterministic vectors over real HTTP on 127.0.0.1) and counts
every call and input. The server is `vectorstore serve` in its own process, on an embedded PostgreSQL.

1. **First sync**: a fresh database and a server whose store declares the folder as a `path` source. Timed from
   the sync's start (its status `started_at`) until every file is `completed`: listing, reading, queueing and
   the ingestion of every file (extract, chunk, embed, write).
2. **Floor**: a fresh database, the same store without sources, and `vectorstore ingest --store ... DIR` over the
   same folder: upload, attach and poll over HTTP, timed end to end by the command's own clock.
3. **Resync, nothing changed**: the server restarts on the synced database (what a rollout does); the sync's
   own duration (status `duration_seconds`) and the embedding calls it caused (must be 0).
4. **Resync after changing `--changed` files**: their text is edited, the server restarts; the calls it caused,
   and a check that every embedded input comes from a changed file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from _db import bench_server, fresh_database, wait_ready

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the deterministic fake upstream the tests use
FakeEmbedder: Any = importlib.import_module("fakeembed").FakeEmbedder

CRANFIELD = REPO.parent / "shared" / "datasets" / "cranfield" / "cran.all.1400"
KEY = "bench-key-0123456789"
STORE_ID = "vs_sourcesbench"
CLI = "import sys, cli; sys.exit(cli.main())"


def cranfield(limit: int) -> list[str]:
    """Title and abstract of the first `limit` documents, or generated prose when the dataset is absent."""
    if not CRANFIELD.exists():
        rng = random.Random(7)
        words = ["wing", "flow", "pressure", "boundary", "layer", "shock", "mach", "number", "heat", "transfer"]
        return [" ".join(rng.choice(words) for _ in range(180)) + "." for _ in range(limit)]
    texts: list[str] = []
    for record in re.split(r"^\.I \d+\s*$", CRANFIELD.read_text(encoding="utf-8", errors="replace"), flags=re.M)[1:]:
        fields = dict(re.findall(r"^\.([TAWB])\s*$\n(.*?)(?=^\.[TAWB]\s*$|\Z)", record, flags=re.M | re.S))
        text = (fields.get("T", "").strip() + "\n\n" + fields.get("W", "").strip()).strip()
        if text:
            texts.append(text + "\n")
        if len(texts) == limit:
            break
    return texts


def write_corpus(root: Path, texts: list[str]) -> list[Path]:
    paths = []
    for index, text in enumerate(texts):
        path = root / f"part{index % 10}" / f"doc{index:04d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def spec(path: Path, upstream: str, dims: int, source: Path | None) -> Path:
    store: dict[str, Any] = {"name": "bench", "id": STORE_ID}
    if source is not None:
        store["sources"] = [{"name": "cranfield", "path": str(source)}]
    data = {
        "version": 1, "name": "bench", "namespace": "bench", "database": {"cluster": {"name": "pg"}},
        "auth": {"keys": [{"name": "bench", "api_key": {"secret": "s", "key": "k"}, "scope": "write"}]},
        "embedding": {"base_url": upstream, "model": "fake", "dimensions": dims, "batch_size": 64},
        "server": {"max_upload_bytes": 8 << 20, "ingest_concurrency": 2},
        "stores": [store],
        "sync": {"interval": "0"},
    }  # fmt: skip
    path.write_text(json.dumps(data))
    return path


@contextlib.asynccontextmanager
async def serve(spec_path: Path, dsn: str, port: int, log: Path) -> AsyncIterator[str]:
    env = {**os.environ, "DATABASE_URL": dsn, "VECTORSTORE_API_KEY_BENCH": KEY}
    with log.open("ab") as out:
        server = subprocess.Popen(  # noqa: ASYNC220 - started before anything is timed
            [sys.executable, "-c", CLI, "serve", "--spec", str(spec_path), "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            if not await wait_ready(http, f"{base}/ready", seconds=60):
                raise SystemExit(f"server did not become ready; see {log}")
        yield base
    finally:
        server.terminate()
        server.wait(timeout=60)


async def synced(base: str, after: float = 0.0, within: float = 1800.0) -> dict[str, Any]:
    """The source's status once a sync that finished after `after` (a restart) is done and nothing is in progress."""
    headers = {"Authorization": f"Bearer {KEY}"}
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession(headers=headers) as http:
        while True:
            async with http.get(f"{base}/v1/vector_stores/{STORE_ID}/sources") as response:
                (item,) = (await response.json())["data"]
            last = item["last_sync"]
            if (
                last
                and last["finished_at"] >= int(after)
                and item["status"] != "syncing"
                and not item["files"]["in_progress"]
            ):
                return dict(item)
            if time.monotonic() > deadline:
                raise SystemExit(f"not synced: {item}")
            await asyncio.sleep(0.05)


async def started_at(dsn: str) -> float:
    """When the last sync started, to the microsecond (the API rounds it to whole seconds)."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (await conn.execute("SELECT COALESCE(syncing_since, started_at) FROM source_status")).fetchone()
    assert row is not None
    return float(row[0])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--changed", type=int, default=10)
    parser.add_argument("--dims", type=int, default=256)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vs-sources-bench-"))
    texts = cranfield(args.files)
    corpus = work / "corpus"
    paths = write_corpus(corpus, texts)
    upstream = await FakeEmbedder(dimensions=args.dims).start()
    port = 18500 + os.getpid() % 400
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_at_start": os.getloadavg(),
        "files": len(paths),
        "bytes": sum(path.stat().st_size for path in paths),
        "corpus": "cranfield" if CRANFIELD.exists() else "generated",
    }
    try:
        with bench_server() as server_dsn:
            # 1. The first sync.
            dsn = fresh_database(server_dsn, "sources_bench_sync")
            synced_spec = spec(work / "sync.yaml", upstream.base_url, args.dims, corpus)
            upstream.calls.clear()
            async with serve(synced_spec, dsn, port, work / "sync.log") as base:
                status = await synced(base)
                done = time.time()
            assert status["files"]["completed"] == len(paths), status
            first = done - await started_at(dsn)
            results["first_sync"] = {
                "seconds": round(first, 2),
                "files_per_second": round(len(paths) / first, 1),
                "listing_and_queueing_seconds": status["last_sync"]["duration_seconds"],
                "embedding_calls": len(upstream.calls),
                "embedding_inputs": len(upstream.inputs),
            }

            # 2. The floor: the same files through `vectorstore ingest`.
            floor_dsn = fresh_database(server_dsn, "sources_bench_ingest")
            plain_spec = spec(work / "plain.yaml", upstream.base_url, args.dims, None)
            async with serve(plain_spec, floor_dsn, port + 1, work / "ingest.log") as base:
                env = {**os.environ, "VECTORSTORE_API_KEY": KEY}
                started = time.perf_counter()
                run = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", CLI, "ingest", "--store", "bench", str(corpus), "--base-url", base,
                    env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                )  # fmt: skip
                code = await run.wait()
                floor = time.perf_counter() - started
            assert code == 0, f"vectorstore ingest exited {code}"
            results["vectorstore_ingest"] = {
                "seconds": round(floor, 2),
                "files_per_second": round(len(paths) / floor, 1),
            }
            results["sync_vs_ingest_files_per_second"] = round(floor / first, 2)

            # 3. A restart with nothing changed.
            upstream.calls.clear()
            before = time.time()
            async with serve(synced_spec, dsn, port + 2, work / "resync.log") as base:
                status = await synced(base, after=before)
            results["resync_unchanged"] = {
                "sync_seconds": status["last_sync"]["duration_seconds"],
                "unchanged": status["last_sync"]["unchanged"],
                "embedding_calls": len(upstream.calls),
            }

            # 4. A restart after changing some files.
            changed = paths[:: max(1, len(paths) // args.changed)][: args.changed]
            markers = []
            for index, path in enumerate(changed):
                marker = f"edited-{index}-zq"
                markers.append(marker)
                path.write_text(path.read_text(encoding="utf-8") + f"\nRevision note {marker}.\n", encoding="utf-8")
            upstream.calls.clear()
            before = time.time()
            async with serve(synced_spec, dsn, port + 3, work / "changed.log") as base:
                status = await synced(base, after=before)
                done = time.time()
            inputs = upstream.inputs
            from_changed = [text for text in inputs if any(marker in text for marker in markers)]
            results["resync_changed"] = {
                "changed_files": len(changed),
                "updated": status["last_sync"]["updated"],
                "unchanged": status["last_sync"]["unchanged"],
                "sync_seconds": status["last_sync"]["duration_seconds"],
                "until_ingested_seconds": round(done - await started_at(dsn), 2),
                "embedding_calls": len(upstream.calls),
                "embedding_inputs": len(inputs),
                "inputs_from_changed_files": len(from_changed),
            }
            # Each changed file is a few chunks; only its last chunk carries the marker, so compare per file:
            # every input must be text of a changed file.
            changed_texts = [path.read_text(encoding="utf-8") for path in changed]
            stray = [text for text in inputs if not any(text[:60] in whole for whole in changed_texts)]
            results["resync_changed"]["inputs_not_from_changed_files"] = len(stray)
    finally:
        await upstream.close()
        results["load_average_at_end"] = os.getloadavg()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
