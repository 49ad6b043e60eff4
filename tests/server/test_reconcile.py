"""Reconcile and plan on a real database: create, drift, migrate, prune, replicas racing, a lost database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fakeembed import FakeEmbedder

from config import Spec
from config.names import derived_store_id
from server.conftest import DOCS_ID, STANDARD_STORES, spec_data, start_server, write_spec
from vectorstore.state import READINESS
from vectorstore.storage import reconcile, stores, tables
from vectorstore.storage.migrations import MigrationError, migrate

NOTES_ID = derived_store_id("notes")


async def run(dsn: str, spec: Spec) -> reconcile.Plan:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(conn)
        return await reconcile.reconcile(conn, spec)


async def records(dsn: str) -> dict[str, stores.StoreRecord]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return {record.id: record for record in await stores.all_stores(conn)}


def spec_with(tmp_path: Path, stores_: list[dict[str, Any]], *, prune: bool = False, name: str = "s.yaml") -> Spec:
    return write_spec(tmp_path / name, spec_data("http://127.0.0.1:9", stores=stores_, prune=prune))


async def test_create_then_idempotent_then_drift(
    fresh_dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = spec_with(tmp_path, STANDARD_STORES)
    caplog.set_level("INFO", logger="vectorstore")
    first = await run(fresh_dsn, spec)
    assert first.counts()["create"] == 2
    assert "reconcile: 2 created, 0 updated, 0 migrating, 0 cancelled, 0 unchanged, 0 pruned" in caplog.text
    got = await records(fresh_dsn)
    assert set(got) == {DOCS_ID, NOTES_ID}
    docs = got[DOCS_ID]
    assert (docs.name, docs.description, docs.metadata, docs.declared) == ("docs", "Product docs", {"team": "a"}, True)
    assert (docs.dimensions, docs.distance, docs.vector_type) == (8, "cosine", "vector")

    assert (await run(fresh_dsn, spec)).counts() == {
        "create": 0,
        "update": 0,
        "migrate": 0,
        "cancel": 0,
        "unchanged": 2,
        "prune": 0,
        "refuse": 0,
    }

    # Drift made behind the spec's back comes back.
    async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
        await conn.execute("UPDATE vector_stores SET name = 'hacked', metadata = '{}' WHERE id = %s", [DOCS_ID])
    plan = await run(fresh_dsn, spec)
    [update] = plan.of("update")
    assert {diff.field for diff in update.diffs} == {"name", "metadata"}
    assert (await records(fresh_dsn))[DOCS_ID].name == "docs"

    # A spec change to description/metadata/index parameters is applied.
    changed = [
        {**STANDARD_STORES[0], "description": "new", "metadata": {"team": "b"}, "index": {"m": 24, "ef_search": 80}},
        STANDARD_STORES[1],
    ]
    plan = await run(fresh_dsn, spec_with(tmp_path, changed, name="c.yaml"))
    [update] = plan.of("update")
    assert {d.field for d in update.diffs} == {"description", "metadata", "hnsw_m", "ef_search"}
    docs = (await records(fresh_dsn))[DOCS_ID]
    assert (docs.description, docs.metadata, docs.hnsw_m, docs.ef_search) == ("new", {"team": "b"}, 24, 80)


async def test_removed_store_is_kept_or_pruned(fresh_dsn: str, tmp_path: Path) -> None:
    await run(fresh_dsn, spec_with(tmp_path, STANDARD_STORES))
    only_docs = [STANDARD_STORES[0]]
    plan = await run(fresh_dsn, spec_with(tmp_path, only_docs, name="b.yaml"))
    assert [c.store_id for c in plan.of("update")] == [NOTES_ID]
    got = await records(fresh_dsn)
    assert NOTES_ID in got and not got[NOTES_ID].declared  # kept, and now the API may manage it
    plan = await run(fresh_dsn, spec_with(tmp_path, only_docs, prune=True, name="c.yaml"))
    assert [c.store_id for c in plan.of("prune")] == [NOTES_ID]
    assert set(await records(fresh_dsn)) == {DOCS_ID}
    async with await psycopg.AsyncConnection.connect(fresh_dsn) as conn:
        cur = await conn.execute("SELECT to_regclass(%s)", [tables.table_name(NOTES_ID)])
        assert (await cur.fetchone()) == (None,)  # its table went with it


async def test_vector_changes_on_a_store_with_data_become_migrations(fresh_dsn: str, tmp_path: Path) -> None:
    await run(fresh_dsn, spec_with(tmp_path, STANDARD_STORES))
    async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
        from pgvector.psycopg import register_vector_async

        await register_vector_async(conn)
        docs = (await records(fresh_dsn))[DOCS_ID]
        async with conn.transaction():
            await tables.copy_chunks(conn, docs.layout, [tables.ChunkRow("r1", "text", [1.0] + [0.0] * 7)])
    for change, field in (
        ({"embedding": {"dimensions": 16}}, "dimensions"),
        ({"distance": "l2"}, "distance"),
        ({"embedding": {"model": "other"}}, "model"),
    ):
        spec = spec_with(tmp_path, [{**STANDARD_STORES[0], **change}, STANDARD_STORES[1]], name=f"{field}.yaml")
        # Recorded for the background migrator (vectorstore/migration), not applied here: no refusal.
        [migrate] = (await run(fresh_dsn, spec)).of("migrate")
        assert migrate.store_id == DOCS_ID and f"{field}:" in migrate.reason
        async with await psycopg.AsyncConnection.connect(fresh_dsn) as conn:
            cur = await conn.execute(
                "SELECT phase, target->>%s FROM store_migrations WHERE vector_store_id = %s", [field, DOCS_ID]
            )
            phase, wanted = await cur.fetchone() or (None, None)
        assert phase == "pending" and wanted is not None
    assert (await records(fresh_dsn))[DOCS_ID].dimensions == 8  # the active generation is untouched
    # The spec back as it was: the pending migration is cancelled.
    [cancel] = (await run(fresh_dsn, spec_with(tmp_path, STANDARD_STORES, name="back.yaml"))).of("cancel")
    assert cancel.store_id == DOCS_ID

    # The empty store may change shape: its table is rebuilt (3,000 dimensions -> halfvec).
    spec = spec_with(
        tmp_path, [STANDARD_STORES[0], {**STANDARD_STORES[1], "embedding": {"dimensions": 3000}}], name="notes.yaml"
    )
    plan = await run(fresh_dsn, spec)
    assert [c.store_id for c in plan.of("update")] == [NOTES_ID]
    notes = (await records(fresh_dsn))[NOTES_ID]
    assert (notes.dimensions, notes.vector_type) == (3000, "halfvec")


async def test_replicas_reconcile_one_database_at_once(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    many = [{"name": f"store-{i}"} for i in range(20)]
    spec = write_spec(tmp_path / "s.yaml", spec_data(fake_embedder.base_url, stores=many))
    servers = await asyncio.gather(*(start_server(spec, fresh_dsn) for _ in range(4)))
    try:
        summaries = [server.app[READINESS].summary for server in servers]
        assert sorted(s["create"] for s in summaries) == [0, 0, 0, 20]
        assert all(s["refuse"] == 0 for s in summaries)
        got = await records(fresh_dsn)
        assert set(got) == {derived_store_id(f"store-{i}") for i in range(20)}
        assert "startup failed" not in caplog.text and "ERROR" not in caplog.text
    finally:
        await asyncio.gather(*(server.stop() for server in servers))


async def test_lost_database_comes_back_with_the_same_ids(
    pg_dsn: str, fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path / "s.yaml", spec_data(fake_embedder.base_url))
    server = await start_server(spec, fresh_dsn)
    before = set(await records(fresh_dsn))
    await server.stop()
    dbname = psycopg.conninfo.conninfo_to_dict(fresh_dsn)["dbname"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{dbname}"')
    assert await records_or_none(fresh_dsn) is None  # really gone
    server = await start_server(spec, fresh_dsn)
    try:
        assert set(await records(fresh_dsn)) == before == {DOCS_ID, NOTES_ID}
    finally:
        await server.stop()


async def records_or_none(dsn: str) -> dict[str, stores.StoreRecord] | None:
    try:
        return await records(dsn)
    except psycopg.errors.UndefinedTable:
        return None


def plan_cli(spec_path: Path, dsn: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["DATABASE_URL"] = dsn
    return subprocess.run(
        [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", "plan", "--spec", str(spec_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


async def test_plan_exit_codes(fresh_dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    spec = write_spec(path, spec_data("http://127.0.0.1:9"))
    fresh = plan_cli(path, fresh_dsn)
    assert fresh.returncode == 3, fresh.stderr
    assert f"create  'docs' ({DOCS_ID})" in fresh.stdout
    await run(fresh_dsn, spec)
    same = plan_cli(path, fresh_dsn)
    assert same.returncode == 0 and "0 to create, 0 to update" in same.stdout
    write_spec(path, spec_data("http://127.0.0.1:9", stores=[{**STANDARD_STORES[0], "description": "changed"}]))
    changed = plan_cli(path, fresh_dsn)
    assert changed.returncode == 3
    assert "update  'docs'" in changed.stdout and "description: 'Product docs' -> 'changed'" in changed.stdout
    assert (await records(fresh_dsn))[DOCS_ID].description == "Product docs"  # plan wrote nothing
    async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
        await conn.execute(
            f"INSERT INTO {tables.table_name(DOCS_ID)} (id, content, embedding) VALUES ('x', 'x', '[1,0,0,0,0,0,0,0]')"
        )
    write_spec(path, spec_data("http://127.0.0.1:9", stores=[{**STANDARD_STORES[0], "distance": "l2"}]))
    migrate = plan_cli(path, fresh_dsn)
    assert migrate.returncode == 3, migrate.stderr
    assert "migrate 'docs'" in migrate.stdout and "distance: 'cosine' -> 'l2'" in migrate.stdout
    assert "online migration: copy the vectors into a new table (no embedding call): 1 chunks" in migrate.stdout
    write_spec(path, spec_data("http://127.0.0.1:9", stores=[{**STANDARD_STORES[0], "embedding": {"model": "m2"}}]))
    reembed = plan_cli(path, fresh_dsn)
    assert "online migration: re-embed every chunk with m2 (8 dimensions): 1 chunks, ~0 tokens" in reembed.stdout
    assert "extra disk until keep_previous ends" in reembed.stdout


async def test_extension_privilege_error_says_what_to_do(fresh_dsn: str) -> None:
    info = psycopg.conninfo.conninfo_to_dict(fresh_dsn)
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS vs_app")
        conn.execute("CREATE ROLE vs_app LOGIN")
        conn.execute(f'GRANT ALL ON DATABASE "{info["dbname"]}" TO vs_app')
        conn.execute("GRANT ALL ON SCHEMA public TO vs_app")
    app_dsn = psycopg.conninfo.make_conninfo(fresh_dsn, user="vs_app")
    try:
        async with await psycopg.AsyncConnection.connect(app_dsn, autocommit=True) as conn:
            with pytest.raises(MigrationError) as error:
                await migrate(conn)
        message = str(error.value)
        assert "vs_app" in message and "vector" in message and "vectorstore render" in message
    finally:
        with psycopg.connect(fresh_dsn, autocommit=True) as conn:
            conn.execute("REVOKE ALL ON SCHEMA public FROM vs_app")
            conn.execute(f'REVOKE ALL ON DATABASE "{info["dbname"]}" FROM vs_app')
            conn.execute("DROP ROLE vs_app")
