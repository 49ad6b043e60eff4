"""The issue's round trip, end to end: a server filled through the OpenAI client (uploads, an API store,
prototype rows), `vectorstore export`, the database wiped, `vectorstore import`, a server started on it:
the same search results, and no embedding call made by the import or the restart."""

from __future__ import annotations

import asyncio
import io
import os
import re
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from fakeembed import FakeEmbedder
from openai import AsyncOpenAI
from server.conftest import DOCS_ID, WRITE_KEY, RunningServer, auth, spec_data, start_server, write_spec

from cli import parse, run

QUERIES = ["alpha particles", "beta decay", "gamma rays", "prototype", "letters of the alphabet"]
DOCUMENTS = {
    "alpha.txt": "Alpha particles are helium nuclei. Alpha is the first letter.\n" * 20,
    "beta.md": "# Beta\n\nBeta decay turns a neutron into a proton. Beta is the second letter.\n" * 20,
    "gamma.txt": "Gamma rays are photons of high energy. Gamma is the third letter.\n" * 20,
}


async def _fill(server: RunningServer, http: aiohttp.ClientSession) -> tuple[str, dict[str, bytes]]:
    oai = AsyncOpenAI(base_url=server.url("/v1"), api_key=WRITE_KEY, max_retries=0)
    contents: dict[str, bytes] = {}
    try:
        for name, text in DOCUMENTS.items():
            uploaded = await oai.files.create(file=(name, text.encode(), "text/plain"), purpose="assistants")
            contents[uploaded.id] = text.encode()
            attached = await oai.vector_stores.files.create_and_poll(
                vector_store_id=DOCS_ID, file_id=uploaded.id, attributes={"name": name, "n": len(name)}
            )
            assert attached.status == "completed"
        scratch = await oai.vector_stores.create(name="scratch", metadata={"made": "api"})
        note = await oai.files.create(
            file=("note.txt", b"A note on gamma and beta.", "text/plain"), purpose="assistants"
        )
        contents[note.id] = b"A note on gamma and beta."
        await oai.vector_stores.files.create_and_poll(vector_store_id=scratch.id, file_id=note.id)
    finally:
        await oai.close()
    url = server.url(f"/v1/vector_stores/{DOCS_ID}/embeddings/batch")
    rows = [{"content": f"prototype row {i}", "metadata": {"i": i}} for i in range(3)]
    async with http.post(url, headers=auth(), json={"embeddings": rows}) as response:
        assert response.status == 200, await response.text()
    return scratch.id, contents


async def _answers(server: RunningServer, store_ids: list[str]) -> list[Any]:
    oai = AsyncOpenAI(base_url=server.url("/v1"), api_key=WRITE_KEY, max_retries=0)
    try:
        out = []
        for store_id in store_ids:
            for query in QUERIES:
                page = await oai.vector_stores.search(store_id, query=query, max_num_results=10)
                out.append(
                    [(hit.file_id, hit.filename, hit.score, hit.attributes, hit.content[0].text) for hit in page.data]
                )
        return out
    finally:
        await oai.close()


async def _cli(monkeypatch: pytest.MonkeyPatch, dsn: str, *argv: str) -> tuple[int, str]:
    monkeypatch.setenv("DATABASE_URL", dsn)
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    try:
        code = await asyncio.to_thread(run, parse(list(argv)))
    finally:
        monkeypatch.undo()
    return code, err.getvalue()


async def test_export_wipe_import_answers_the_same_with_no_embedding_call(
    fresh_dsn: str,
    fake_embedder: FakeEmbedder,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec_path = tmp_path / "stack.yaml"
    spec = write_spec(spec_path, spec_data(fake_embedder.base_url))
    server = await start_server(spec, fresh_dsn)
    try:
        scratch_id, contents = await _fill(server, http)
        before = await _answers(server, [DOCS_ID, scratch_id])
    finally:
        await server.stop()
    assert any(before) and all(hits for hits in before[: len(QUERIES)])

    archives = {DOCS_ID: tmp_path / "docs.vsa", scratch_id: tmp_path / "scratch.vsa"}
    for ref, path in (("docs", archives[DOCS_ID]), (scratch_id, archives[scratch_id])):
        code, output = await _cli(monkeypatch, fresh_dsn, "export", ref, "-o", str(path), "--spec", str(spec_path))
        assert code == 0, output
        assert "vectorstore export: store" in output and path.stat().st_size > 0
    assert sorted(os.listdir(tmp_path)) == ["docs.vsa", "scratch.vsa", "stack.yaml"]  # no .partial left

    # The database lost: every table, the extension, the migrations.
    async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
        await conn.execute("DROP SCHEMA public CASCADE")
        await conn.execute("CREATE SCHEMA public")
    fake_embedder.reset()

    for path in archives.values():
        code, output = await _cli(monkeypatch, fresh_dsn, "import", str(path), "--spec", str(spec_path))
        assert code == 0, output
        assert "0 embedding calls" in output
    server = await start_server(spec, fresh_dsn)
    try:
        assert fake_embedder.calls == [], "the import or the restart embedded something"
        after = await _answers(server, [DOCS_ID, scratch_id])
        # Only the searches' own queries, each once (both stores share the model: the query cache answers twice).
        assert fake_embedder.inputs == QUERIES
        oai = AsyncOpenAI(base_url=server.url("/v1"), api_key=WRITE_KEY, max_retries=0)
        try:
            for file_id, content in contents.items():
                assert (await oai.files.content(file_id)).content == content
            store = await oai.vector_stores.retrieve(scratch_id)
            assert store.name == "scratch" and store.metadata == {"made": "api"}
            assert store.file_counts.completed == 1
        finally:
            await oai.close()
    finally:
        await server.stop()
    assert after == before

    # Again, without --replace: refused, nothing changed; with it: in place.
    code, output = await _cli(monkeypatch, fresh_dsn, "import", str(archives[DOCS_ID]), "--spec", str(spec_path))
    assert code == 1
    assert f"store {DOCS_ID} ('docs') already exists: --replace" in output and "nothing was imported" in output
    code, output = await _cli(
        monkeypatch, fresh_dsn, "import", str(archives[DOCS_ID]), "--replace", "--spec", str(spec_path)
    )
    assert code == 0, output
    # Plain progress lines (stderr is no terminal here), the last with the final counts.
    progress = [line for line in output.splitlines() if line.startswith("import: ")]
    last = re.fullmatch(r"import: (\d+)/(\d+) chunks, 3 files \(\d+ bytes\), \d+ chunks/s, [\d.]+s", progress[-1])
    assert last is not None and last[1] == last[2] and int(last[1]) > 3, progress
    assert all("\x1b" not in line for line in output.splitlines())


async def test_cli_errors_are_one_clear_line(
    fresh_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_embedder: FakeEmbedder
) -> None:
    spec_path = tmp_path / "stack.yaml"
    write_spec(spec_path, spec_data(fake_embedder.base_url))
    code, output = await _cli(
        monkeypatch, fresh_dsn, "export", "nope", "-o", str(tmp_path / "x"), "--spec", str(spec_path)
    )
    assert (code, output.strip()) == (
        1,
        "vectorstore export: this database has no stores yet (the server never ran on it)",
    )
    assert not (tmp_path / "x").exists()
    bad = tmp_path / "bad.vsa"
    bad.write_bytes(b"VSARCHIV\x00\x01H\x00\x00")
    code, output = await _cli(monkeypatch, fresh_dsn, "import", str(bad), "--spec", str(spec_path))
    assert code == 1
    assert output.strip() == (
        f"vectorstore import: {bad}: truncated archive: it ends at byte 13, inside the record header at byte 10 "
        "(the end record never came); nothing was imported"
    )
    assert "Traceback" not in output
    code, output = await _cli(monkeypatch, fresh_dsn, "import", str(tmp_path / "missing.vsa"), "--spec", str(spec_path))
    assert code == 2 and "can't read" in output
