"""The deletion brake (docs/sources.md, "The deletion brake"): a sync that would delete all of a source's files,
or more than `sync.max_delete` of them, deletes nothing until the operator confirms; a volume declared as
mounted must be a mount point before its listing is believed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakeembed import FakeEmbedder
from server.conftest import RunningServer

from config.model import parse_max_delete
from sources.conftest import Mount, attachments, source_status, start_with_sources, sync_again, wait_synced
from vectorstore.sources.service import SYNCER


def test_the_limit_holds_more_than_its_share_or_count_and_always_all_unless_off() -> None:
    half = parse_max_delete("50%")
    assert not half.holds(0, 0) and not half.holds(0, 10)
    assert not half.holds(5, 10) and half.holds(6, 10)
    assert half.holds(1, 1) and half.holds(3, 3)  # every file: held whatever the share
    count = parse_max_delete(200)
    assert not count.holds(200, 1000) and count.holds(201, 1000) and count.holds(3, 3)
    assert parse_max_delete(0).holds(1, 1000)
    off = parse_max_delete("100%")
    assert not off.holds(3, 3) and not off.holds(1000, 1000)


async def _metric(http: aiohttp.ClientSession, url: str, source: str) -> str:
    async with http.get(url) as response:
        text = await response.text()
    line = f'vectorstore_source_deletes_held{{source="{source}",store="docs"}}'
    return next((row.split()[-1] for row in text.splitlines() if row.startswith(line)), "absent")


async def test_an_unmounted_volume_deletes_nothing(
    fresh_dsn: str,
    fake_embedder: FakeEmbedder,
    tmpfs: Mount,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    files = {"a.md": "Alpha on the volume.\n", "b.md": "Bravo on the volume.\n"}

    def fill() -> None:
        for name, text in files.items():
            (tmpfs.path / name).write_text(text)

    fill()
    # The same mount read twice: declared as a volume (a PVC render mounts), and as a plain path.
    sources: list[dict[str, Any]] = [{"name": "declared", "path": str(tmpfs.path), "volume": {"pvc": "docs"}},
               {"name": "plain", "path": str(tmpfs.path)}]  # fmt: skip
    server = await start_with_sources(fake_embedder, fresh_dsn, tmp_path / "spec.yaml", sources)
    try:
        await wait_synced(http, server)
        before = attachments(fresh_dsn)
        assert len(before) == 4 and all(row["status"] == "completed" for row in before)

        tmpfs.unmount()  # the directory underneath is real, and empty
        caplog.set_level(logging.WARNING, logger="vectorstore")
        (result,) = await sync_again(server, http)
        declared, plain = result.sources
        assert declared.error is not None and "nothing is mounted there" in declared.error
        assert plain.error is None and plain.deleted == 0
        assert plain.held == {"would_delete": 2, "files": 2, "max_delete": "50%"}
        assert attachments(fresh_dsn) == before
        status = {item["name"]: item for item in (await source_status(http, server))["data"]}
        assert status["declared"]["status"] == "failed"
        assert status["plain"]["status"] == "held"
        assert status["plain"]["last_sync"]["held"] == {"would_delete": 2, "files": 2, "max_delete": "50%"}
        assert await _metric(http, server.url("/metrics"), "plain") == "2.0"
        held_lines = [record.getMessage() for record in caplog.records if "deletions held" in record.getMessage()]
        assert held_lines and "2 of its 2 file(s) are gone" in held_lines[0] and "--allow-deletes" in held_lines[0]

        tmpfs.mount()  # back, with the same content (new mtimes: read again, found unchanged)
        fill()
        (result,) = await sync_again(server, http)
        assert [(source.error, source.held, source.unchanged) for source in result.sources] == [
            (None, None, 2),
            (None, None, 2),
        ]
        assert attachments(fresh_dsn) == before
        assert await _metric(http, server.url("/metrics"), "plain") == "0.0"
    finally:
        await server.stop()


async def test_a_real_emptying_is_held_then_confirmed(
    handbook: RunningServer, fresh_dsn: str, docs: Path, http: aiohttp.ClientSession
) -> None:
    for path in (docs / "a.md", docs / "guide" / "b.txt", docs / "guide" / "c.md"):
        path.unlink()
    (docs / "new.md").write_text("A new page arrives as the old ones go.\n")
    (result,) = await sync_again(handbook, http)
    (source,) = result.sources
    # Adds and updates of the same listing apply; the deletions wait.
    assert source.added == 1 and source.deleted == 0
    assert source.held == {"would_delete": 3, "files": 3, "max_delete": "50%"}
    assert sorted(row["filename"] for row in attachments(fresh_dsn)) == [
        "a.md",
        "guide/b.txt",
        "guide/c.md",
        "new.md",
    ]
    (status,) = (await source_status(http, handbook))["data"]
    assert status["status"] == "held" and status["last_sync"]["held"]["would_delete"] == 3

    handbook.app[SYNCER].allow_deletes = True  # what `vectorstore sync --allow-deletes` sets
    (result,) = await sync_again(handbook, http)
    assert result.sources[0].deleted == 3 and result.sources[0].held is None
    assert [row["filename"] for row in attachments(fresh_dsn)] == ["new.md"]
    (status,) = (await source_status(http, handbook))["data"]
    assert status["status"] == "ok" and status["last_sync"]["held"] is None


async def test_deletions_over_a_count_are_held_and_under_it_applied(
    handbook: RunningServer, fresh_dsn: str, docs: Path, http: aiohttp.ClientSession
) -> None:
    import dataclasses

    for index in range(4):
        (docs / f"extra-{index}.md").write_text(f"Extra page number {index}.\n")
    (result,) = await sync_again(handbook, http)
    assert result.sources[0].added == 4 and len(attachments(fresh_dsn)) == 7
    syncer = handbook.app[SYNCER]
    syncer.spec = dataclasses.replace(
        syncer.spec, sync=dataclasses.replace(syncer.spec.sync, max_delete=parse_max_delete(1))
    )
    (docs / "extra-0.md").unlink()
    (docs / "extra-1.md").unlink()
    (result,) = await sync_again(handbook, http)
    assert result.sources[0].held == {"would_delete": 2, "files": 7, "max_delete": "1"}
    assert len(attachments(fresh_dsn)) == 7
    (docs / "extra-1.md").write_text("Extra page number 1.\n")  # one deletion left: under the limit
    (result,) = await sync_again(handbook, http)
    assert result.sources[0].held is None and result.sources[0].deleted == 1
    assert len(attachments(fresh_dsn)) == 6
