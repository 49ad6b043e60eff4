"""`vectorstore sync` (one shot, exit code) and `vectorstore plan` (what a sync would change), as commands."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from fakeembed import FakeEmbedder

from sources.conftest import sources_spec

CLI = "import sys, cli; sys.exit(cli.main(sys.argv[1:]))"


async def vectorstore(dsn: str, *args: str) -> tuple[int, str]:
    """Run the command in its own process (the fake upstream keeps serving in this one); (exit code, output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "VECTORSTORE_", "DATABASE_URL"))}
    env.update({"DATABASE_URL": dsn, "VECTORSTORE_EMBEDDING_API_KEY": "upstream-key"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLI, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, output.decode()


def spec_file(path: Path, embed_url: str, sources: list[dict[str, Any]]) -> str:
    path.write_text(json.dumps(sources_spec(embed_url, sources)))
    return str(path)


async def test_sync_exits_0_when_everything_is_in_and_1_when_anything_failed(
    fresh_dsn: str, fake_embedder: FakeEmbedder, docs: Path, tmp_path: Path
) -> None:
    spec = spec_file(tmp_path / "spec.yaml", fake_embedder.base_url, [{"name": "handbook", "path": str(docs)}])
    code, output = await vectorstore(fresh_dsn, "sync", "--spec", spec)
    assert code == 0, output
    assert f"docs/handbook ({docs}): 3 added, 0 updated, 0 deleted, 0 unchanged, 0 failed" in output
    assert "everything is in" in output
    assert len(fake_embedder.calls) > 0

    await asyncio.to_thread((docs / "logo.png").write_bytes, b"\x89PNG")
    await asyncio.to_thread((docs / "broken.md").write_bytes, b"\x80\x81 not UTF-8")
    code, output = await vectorstore(fresh_dsn, "sync", "--spec", spec)
    assert code == 1, output
    assert "failed: logo.png: 'logo.png': unsupported file type" in output
    assert "docs/handbook: ingestion failed: broken.md: 'broken.md' is not valid UTF-8" in output

    missing = spec_file(tmp_path / "missing.yaml", fake_embedder.base_url, [{"name": "handbook", "path": "nowhere"}])
    code, output = await vectorstore(fresh_dsn, "sync", "--spec", missing)
    assert code == 1 and "can't read the source" in output and "does not exist" in output, output

    code, output = await vectorstore(fresh_dsn, "sync", "--spec", str(tmp_path / "no-such-spec.yaml"))
    assert code == 2 and "vectorstore sync:" in output and "Traceback" not in output


async def test_plan_counts_what_a_sync_would_change_and_says_a_rename_is_delete_plus_add(
    fresh_dsn: str, fake_embedder: FakeEmbedder, docs: Path, tmp_path: Path
) -> None:
    spec = spec_file(tmp_path / "spec.yaml", fake_embedder.base_url, [{"name": "handbook", "path": str(docs)}])
    code, output = await vectorstore(fresh_dsn, "plan", "--spec", spec)  # an empty database
    assert code == 3 and "sources 'docs' (vs_sources0001): 3 to add, 0 to update, 0 to delete" in output, output

    code, output = await vectorstore(fresh_dsn, "sync", "--spec", spec)
    assert code == 0, output
    code, output = await vectorstore(fresh_dsn, "plan", "--spec", spec)
    assert code == 0 and "handbook: 0 to add, 0 to update, 0 to delete, 3 unchanged, 0 failed" in output, output

    def edit() -> None:
        (docs / "a.md").write_text("Alpha, changed.\n")
        (docs / "new.md").write_text("New.\n")
        (docs / "guide" / "c.md").unlink()

    await asyncio.to_thread(edit)
    code, output = await vectorstore(fresh_dsn, "plan", "--spec", spec)
    assert code == 3 and "handbook: 1 to add, 1 to update, 1 to delete, 1 unchanged" in output, output

    renamed = spec_file(tmp_path / "renamed.yaml", fake_embedder.base_url, [{"name": "manual", "path": str(docs)}])
    code, output = await vectorstore(fresh_dsn, "plan", "--spec", renamed)
    assert code == 3, output
    assert "manual: 3 to add" in output
    assert "handbook: no longer declared: its 3 document(s) would be deleted (renaming a source" in output


async def test_sync_waits_while_another_replica_syncs_the_store(
    fresh_dsn: str, fake_embedder: FakeEmbedder, docs: Path, tmp_path: Path
) -> None:
    import psycopg

    from sources.conftest import STORE_ID
    from vectorstore.sources.status import lock_key

    spec = spec_file(tmp_path / "spec.yaml", fake_embedder.base_url, [{"name": "handbook", "path": str(docs)}])
    async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as replica:
        # A server's scheduled sync holds the store's lock when the Job starts.
        await replica.execute("SELECT pg_advisory_lock(%s)", [lock_key(STORE_ID)])
        command = asyncio.create_task(vectorstore(fresh_dsn, "sync", "--spec", spec))
        await asyncio.sleep(3.0)
        assert not command.done()
        await replica.execute("SELECT pg_advisory_unlock(%s)", [lock_key(STORE_ID)])
        code, output = await command
    assert code == 0 and "3 added" in output, output


async def test_sync_holds_a_mass_deletion_until_allow_deletes(
    fresh_dsn: str, fake_embedder: FakeEmbedder, docs: Path, tmp_path: Path
) -> None:
    spec = spec_file(tmp_path / "spec.yaml", fake_embedder.base_url, [{"name": "handbook", "path": str(docs)}])
    code, output = await vectorstore(fresh_dsn, "sync", "--spec", spec)
    assert code == 0, output
    for path in (docs / "a.md", docs / "guide" / "b.txt", docs / "guide" / "c.md"):
        await asyncio.to_thread(path.unlink)
    code, output = await vectorstore(fresh_dsn, "plan", "--spec", spec)
    assert "handbook: 0 to add, 0 to update, 0 to delete, 0 unchanged, 0 failed; 3 of its 3 file(s) are gone" in output
    code, output = await vectorstore(fresh_dsn, "sync", "--spec", spec)
    assert code == 1, output
    assert "0 deleted" in output and "held until `vectorstore sync --allow-deletes` or a higher limit" in output
    code, output = await vectorstore(fresh_dsn, "sync", "--spec", spec, "--allow-deletes")
    assert code == 0, output
    assert f"docs/handbook ({docs}): 0 added, 0 updated, 3 deleted, 0 unchanged, 0 failed" in output
