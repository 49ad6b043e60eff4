"""`vectorstore ingest` against a running server: progress, skip by content hash, failure summary, exit codes."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import pytest
from openai import AsyncOpenAI
from server.conftest import WRITE_KEY, RunningServer

from cli import parse
from ingest.conftest import STORE_ID
from vectorstore.ingest.cli import ingest, run
from vectorstore.options import IngestOptions


def _folder(root: Path) -> Path:
    docs = root / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# Alpha\n\nAlpha is the first letter.\n")
    (docs / "b.txt").write_text("Beta is the second letter.\n")
    (docs / "sub" / "c.html").write_text("<p>Gamma is the third letter.</p><script>x()</script>")
    (docs / "empty.txt").write_bytes(b"")
    (docs / "photo.png").write_bytes(b"\x89PNG\r\n")
    (docs / ".hidden.txt").write_text("not sent")
    return docs


def _options(server: RunningServer, *paths: Path, store: str = "docs") -> IngestOptions:
    options = parse(["ingest", "--store", store, "--base-url", server.base_url, *map(str, paths)])
    assert isinstance(options, IngestOptions)
    return options


class _Terminal(io.StringIO):
    """Output that says it is a terminal, as a user's shell is."""

    def isatty(self) -> bool:
        return True


async def _run(server: RunningServer, *paths: Path, store: str = "docs", tty: bool = False) -> tuple[int, str]:
    out = _Terminal() if tty else io.StringIO()
    code = await asyncio.to_thread(lambda: asyncio.run(run(_options(server, *paths, store=store), WRITE_KEY, out)))
    return code, out.getvalue()


async def _search_texts(oai: AsyncOpenAI, query: str) -> list[str]:
    page = await oai.vector_stores.search(STORE_ID, query=query, max_num_results=1)
    return [str(hit.content[0].text) for hit in page.data]


async def test_ingest_folder_skips_known_files_and_reports_failures(
    ingest_server: RunningServer, oai: AsyncOpenAI, tmp_path: Path
) -> None:
    docs = _folder(tmp_path)
    code, output = await _run(ingest_server, docs)
    assert code == 1, output
    assert "skipping" in output and "photo.png" in output
    assert "3 ingested (3 chunks), 0 already there, 1 failed" in output
    assert "FAILED" in output and "empty.txt" in output and "invalid_file" in output
    assert ".hidden" not in output
    # Not a terminal: one plain line per file, with the rate, and no control characters.
    lines = [line for line in output.splitlines() if line.startswith("[")]
    assert len(lines) == 4 and all("files/s" in line for line in lines), output
    assert "\x1b" not in output and "\r" not in output
    files = [f async for f in oai.vector_stores.files.list(STORE_ID)]
    assert sorted(f.status for f in files) == ["completed", "completed", "completed", "failed"]
    [hit] = (await oai.vector_stores.search(STORE_ID, query="Beta is the second letter.", max_num_results=1)).data
    assert hit.filename == "b.txt" and hit.attributes is not None
    assert str(hit.attributes["path"]).endswith("docs/b.txt") and len(str(hit.attributes["sha256"])) == 64

    # Second run: unchanged files are skipped (by content hash), a changed one is sent again.
    (docs / "empty.txt").unlink()
    (docs / "b.txt").write_text("Beta, changed.\n")
    code, output = await _run(ingest_server, docs)
    assert code == 0, output
    assert "1 ingested (1 chunks), 2 already there, 0 failed" in output
    # The old version of b.txt left the store (empty.txt, gone from the folder, stays as it was).
    files = [f async for f in oai.vector_stores.files.list(STORE_ID)]
    assert sorted(f.status for f in files) == ["completed", "completed", "completed", "failed"]
    assert await _search_texts(oai, "Beta is the second letter.") != ["Beta is the second letter."]
    assert await _search_texts(oai, "Beta, changed.") == ["Beta, changed."]


async def test_ingest_by_store_id_and_bad_arguments(
    ingest_server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    note = tmp_path / "note.txt"
    note.write_text("A single note.")
    code, output = await _run(ingest_server, note, store=STORE_ID)
    assert code == 0 and "1 ingested" in output
    with pytest.raises(Exception, match="no vector store with id or name 'nope'"):
        await _run(ingest_server, note, store="nope")
    monkeypatch.delenv("VECTORSTORE_API_KEY", raising=False)
    assert await asyncio.to_thread(ingest, _options(ingest_server, note)) == 2
    monkeypatch.setenv("VECTORSTORE_API_KEY", WRITE_KEY)
    assert await asyncio.to_thread(ingest, _options(ingest_server, tmp_path / "missing.txt")) == 2
    assert await asyncio.to_thread(ingest, _options(ingest_server, note, store="nope")) == 2
    assert await asyncio.to_thread(ingest, _options(ingest_server, note)) == 0


async def test_ingest_on_a_terminal_shows_a_progress_bar(ingest_server: RunningServer, tmp_path: Path) -> None:
    docs = tmp_path / "many"
    docs.mkdir()
    for index in range(12):
        (docs / f"note-{index:02d}.txt").write_text(f"Note number {index} is about progress bars.\n")
    (docs / "empty.txt").write_bytes(b"")
    code, output = await _run(ingest_server, docs, tty=True)
    assert code == 1, output
    assert "\x1b[" in output, "a live display, drawn with terminal control sequences"
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)
    # The bar's last state: every file, the chunks, the failure, a rate and the elapsed time.
    assert "13/13 files, 12 chunks, 1 failed, 0 skipped" in plain, plain
    assert re.search(r"\d+\.\d files/s, ETA", plain), plain
    assert "FAILED" in plain and "empty.txt" in plain
    # And the summary after it.
    assert "12 ingested (12 chunks), 0 already there, 1 failed" in plain


def test_base_url_refuses_credentials_without_quoting_them(capsys: pytest.CaptureFixture[str]) -> None:
    """The key comes from --api-key-env; a user:password@ in --base-url is refused, and not echoed (the shell's
    output may land in a CI log)."""
    for url, message in (
        ("http://admin:hunter2-cli@127.0.0.1:8000", "must not hold credentials (user:password@)"),
        ("127.0.0.1:8000", "must be an http:// or https:// URL"),
    ):
        with pytest.raises(SystemExit) as exited:
            parse(["ingest", "--store", "docs", "--base-url", url, "."])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --base-url: {message}" in err and "hunter2" not in err
    options = parse(["ingest", "--store", "docs", "--base-url", "https://vectors.example/base", "."])
    assert isinstance(options, IngestOptions) and options.base_url == "https://vectors.example/base"
