"""What one file may cost (docs/ingestion.md): pypdf's own errors are invalid files; a PDF is extracted in a child
process under `ingest.*` limits, and a file over one fails alone, naming the limit, while the server serves on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from fakeembed import FakeEmbedder
from openai import AsyncOpenAI
from server.conftest import READ_KEY, WRITE_KEY, start_server, write_spec

from ingest.conftest import STORE_ID, ingest_spec
from ingest.pdfs import cyclic_pdf, deep_page_tree_pdf, flate_bomb_pdf, make_pdf
from vectorstore.ingest.extract import InvalidFile, extract_text
from vectorstore.ingest.sandbox import Limits, Sandbox


def test_pypdf_errors_are_invalid_files_with_a_reason() -> None:
    # LimitReachedError (a deep page tree) escaped as an internal error, retried at every sync: now invalid.
    with pytest.raises(InvalidFile, match=r"'deep.pdf' is a corrupt PDF \(Maximum page tree depth"):
        extract_text(deep_page_tree_pdf(), "deep.pdf")
    with pytest.raises(InvalidFile, match=r"'cycle\.pdf' is a corrupt PDF"):
        extract_text(cyclic_pdf(), "cycle.pdf")


async def test_a_bomb_over_each_limit_fails_alone_and_the_next_file_is_read() -> None:
    good = make_pdf([["A good page after the bomb."]])
    cases = [
        (Limits(seconds=0.5), flate_bomb_pdf(40_000),
         r"took longer than the limit of 0.5s \(ingest.max_extract_seconds\)"),
        (Limits(text_bytes=50_000), flate_bomb_pdf(5_000),
         r"larger than the limit of 50000 bytes \(ingest.max_extracted_bytes\)"),
        # 60 MB of content stream under a 128 MiB address space: the child can't inflate it, and says so.
        (Limits(memory_bytes=128 << 20), flate_bomb_pdf(60_000, b"(" + b"A" * 1000 + b") Tj\n"), "allocate|memory"),
    ]  # fmt: skip
    for limits, bomb, reason in cases:
        assert len(bomb) < 200_000  # a small file: the cost is all in what it inflates to
        sandbox = Sandbox(limits)
        try:
            started = time.monotonic()
            with pytest.raises(InvalidFile, match=reason):
                await sandbox.extract(bomb, "bomb.pdf", "application/pdf")
            if limits.seconds < 1:
                assert time.monotonic() - started < 10, "killed at the limit, not when the parse ended"
            assert await sandbox.extract(good, "good.pdf", None) == "A good page after the bomb."
        finally:
            await sandbox.close()


async def test_other_kinds_are_held_to_the_text_limit_too() -> None:
    sandbox = Sandbox(Limits(text_bytes=2048))
    try:
        assert await sandbox.extract(b"small enough\n", "a.txt", None) == "small enough\n"
        with pytest.raises(InvalidFile, match=r"larger than the limit of 2048 bytes \(ingest.max_extracted_bytes\)"):
            await sandbox.extract(b"x" * 4096, "big.md", None)
    finally:
        await sandbox.close()


async def test_an_uploaded_bomb_fails_naming_the_limit_while_the_api_answers(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path
) -> None:
    data = ingest_spec(fake_embedder.base_url)
    data["ingest"] = {"max_extract_seconds": 1}
    server = await start_server(write_spec(tmp_path / "stack.yaml", data), fresh_dsn)
    oai = AsyncOpenAI(base_url=server.url("/v1"), api_key=WRITE_KEY, max_retries=0, timeout=30)
    try:
        bomb = await oai.files.create(
            file=("bomb.pdf", flate_bomb_pdf(80_000), "application/pdf"), purpose="assistants"
        )
        await oai.vector_stores.files.create(vector_store_id=STORE_ID, file_id=bomb.id)
        # While the bomb is being extracted, the API answers at once: the parse is in another process.
        slowest = 0.0
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {READ_KEY}"}) as http:
            for _ in range(10):
                started = time.monotonic()
                async with http.get(server.url(f"/v1/vector_stores/{STORE_ID}")) as response:
                    assert response.status == 200
                slowest = max(slowest, time.monotonic() - started)
                await asyncio.sleep(0.05)
        assert slowest < 0.5, f"an API request waited {slowest:.2f}s behind the extraction"
        attached = await oai.vector_stores.files.poll(bomb.id, vector_store_id=STORE_ID, poll_interval_ms=100)
        assert attached.status == "failed" and attached.last_error is not None
        assert attached.last_error.code == "invalid_file"
        assert "ingest.max_extract_seconds" in attached.last_error.message
        good = await oai.vector_stores.files.upload_and_poll(
            vector_store_id=STORE_ID, file=("good.pdf", make_pdf([["The worker moved on."]]), "application/pdf")
        )
        assert good.status == "completed"
    finally:
        await oai.close()
        await server.stop()
