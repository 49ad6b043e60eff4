"""Files, vector store files and batches, driven by the real `openai` client against a running server.

The fake upstream's vectors are a hash of the text, so a query equal to a chunk's text scores 1.0: searches
below assert exactly which file, filename and attributes come back.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import openai
import psycopg
import pytest
from fakeembed import FakeEmbedder
from openai import AsyncOpenAI
from server.conftest import LIMITED_KEY, READ_KEY, WRITE_KEY, RunningServer, auth

from ingest.conftest import MAX_UPLOAD, STORE_ID
from ingest.pdfs import make_pdf

ALPHA = "Alpha centauri is the closest star system to the Sun."
BETA = "Beta decay turns a neutron into a proton, an electron and an antineutrino."


def _strategy(attached: Any) -> Any:
    return attached.model_dump()["chunking_strategy"]


async def _top(oai: AsyncOpenAI, query: str, **kwargs: Any) -> list[Any]:
    page = await oai.vector_stores.search(STORE_ID, query=query, **kwargs)
    return list(page.data)


async def test_file_routes(oai: AsyncOpenAI, ingest_server: RunningServer) -> None:
    first = await oai.files.create(file=("a.txt", ALPHA.encode(), "text/plain"), purpose="assistants")
    second = await oai.files.create(file=("b.md", BETA.encode(), "text/markdown"), purpose="user_data")
    assert first.id.startswith("file-") and first.bytes == len(ALPHA.encode()) and first.filename == "a.txt"
    raw = await oai.files.with_raw_response.retrieve(first.id)
    assert raw.headers["openai-poll-after-ms"] == "250"
    assert raw.parse().purpose == "assistants"
    assert (await oai.files.content(first.id)).content == ALPHA.encode()

    listed = [f.id async for f in oai.files.list()]
    assert listed == [second.id, first.id]  # newest first
    assert [f.id async for f in oai.files.list(purpose="user_data")] == [second.id]
    page = await oai.files.list(limit=1, order="asc")
    assert [f.id for f in page.data] == [first.id] and page.has_more
    assert [f.id async for f in oai.files.list(order="asc", limit=1)] == [first.id, second.id]  # auto-pagination

    deleted = await oai.files.delete(first.id)
    assert deleted.deleted and deleted.id == first.id
    with pytest.raises(openai.NotFoundError):
        await oai.files.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.files.create(file=("c.txt", b"x", "text/plain"), purpose="nonsense")  # type: ignore[arg-type]
    assert caught.value.body["param"] == "purpose"  # type: ignore[index]


async def test_create_and_poll_then_search(oai: AsyncOpenAI, fake_embedder: FakeEmbedder) -> None:
    uploaded = await oai.files.create(file=("alpha.txt", f"{ALPHA}\n".encode(), "text/plain"), purpose="assistants")
    attached = await oai.vector_stores.files.create_and_poll(
        uploaded.id, vector_store_id=STORE_ID, attributes={"topic": "space", "year": 2024, "public": True}
    )
    assert attached.status == "completed" and attached.last_error is None
    assert attached.usage_bytes > len(ALPHA)
    # Without a chunking_strategy the declared store's chunking applies, reported as static.
    static = {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 20}
    assert _strategy(attached) == {"type": "static", "static": static}

    [hit] = await _top(oai, ALPHA, max_num_results=5)
    assert hit.file_id == uploaded.id and hit.filename == "alpha.txt"
    assert hit.attributes == {"topic": "space", "year": 2024, "public": True}
    assert hit.content[0].text == ALPHA and hit.score == pytest.approx(1.0)
    # The chunk's own text was embedded, in a batch.
    assert ALPHA in fake_embedder.inputs

    store = await oai.vector_stores.retrieve(STORE_ID)
    assert store.file_counts.completed == 1 and store.file_counts.total == 1

    content = await oai.vector_stores.files.content(uploaded.id, vector_store_id=STORE_ID)
    assert [part.text for part in content.data] == [ALPHA]


async def test_upload_and_poll_with_static_chunking(oai: AsyncOpenAI) -> None:
    paragraphs = [f"Paragraph {i} talks about topic number {i} in several words." for i in range(60)]
    text = "\n\n".join(paragraphs)
    attached = await oai.vector_stores.files.upload_and_poll(
        vector_store_id=STORE_ID,
        file=("long.md", text.encode(), "text/markdown"),
        chunking_strategy={"type": "static", "static": {"max_chunk_size_tokens": 120, "chunk_overlap_tokens": 0}},
    )
    assert attached.status == "completed"
    assert _strategy(attached)["static"]["max_chunk_size_tokens"] == 120
    content = await oai.vector_stores.files.content(attached.id, vector_store_id=STORE_ID)
    chunks = [str(part.text) for part in content.data]
    assert len(chunks) > 3
    # No overlap asked: the chunks are the text, in order, cut at paragraph breaks.
    assert "".join(chunks).replace("\n", "") == text.replace("\n", "")
    assert all(chunk.rstrip().endswith("words.") for chunk in chunks)


async def test_batch_upload_and_poll(oai: AsyncOpenAI) -> None:
    documents = {f"doc{i}.txt": f"Document number {i} is about subject {i}." for i in range(5)}
    batch = await oai.vector_stores.file_batches.upload_and_poll(
        STORE_ID, files=[(name, text.encode(), "text/plain") for name, text in documents.items()]
    )
    assert batch.object == "vector_store.files_batch"
    assert batch.status == "completed"
    assert batch.file_counts.completed == 5 and batch.file_counts.in_progress == 0 and batch.file_counts.total == 5
    raw = await oai.vector_stores.file_batches.with_raw_response.retrieve(batch.id, vector_store_id=STORE_ID)
    assert raw.headers["openai-poll-after-ms"] == "250"
    listed = [f async for f in oai.vector_stores.file_batches.list_files(batch.id, vector_store_id=STORE_ID)]
    assert len(listed) == 5 and {f.status for f in listed} == {"completed"}
    for name, text in documents.items():
        [hit] = await _top(oai, text, max_num_results=1)
        assert hit.filename == name and hit.score == pytest.approx(1.0)


async def test_batch_with_per_file_attributes(oai: AsyncOpenAI) -> None:
    a = await oai.files.create(file=("a.txt", ALPHA.encode(), "text/plain"), purpose="assistants")
    b = await oai.files.create(file=("b.txt", BETA.encode(), "text/plain"), purpose="assistants")
    batch = await oai.vector_stores.file_batches.create_and_poll(
        STORE_ID,
        files=[
            {"file_id": a.id, "attributes": {"kind": "star"}},
            {
                "file_id": b.id,
                "attributes": {"kind": "physics"},
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 300, "chunk_overlap_tokens": 0},
                },
            },
        ],
    )
    assert batch.file_counts.completed == 2
    [hit] = await _top(oai, BETA, filters={"type": "eq", "key": "kind", "value": "physics"})
    assert hit.file_id == b.id and hit.attributes == {"kind": "physics"}
    b_file = await oai.vector_stores.files.retrieve(b.id, vector_store_id=STORE_ID)
    assert _strategy(b_file)["static"]["max_chunk_size_tokens"] == 300


async def test_litellm_chunking_shape_on_attach_and_batches(oai: AsyncOpenAI) -> None:
    """LiteLLM's /v1/rag/ingest forwards `{chunk_size, chunk_overlap}` as is: a synonym of `static` in tokens."""
    paragraphs = "\n\n".join(f"Paragraph {i} talks about topic number {i} in several words." for i in range(60))
    a = await oai.files.create(file=("a.md", paragraphs.encode(), "text/markdown"), purpose="assistants")
    b = await oai.files.create(file=("b.txt", BETA.encode(), "text/plain"), purpose="assistants")
    c = await oai.files.create(file=("c.txt", b"Gamma.", "text/plain"), purpose="assistants")
    attached = await oai.vector_stores.files.create_and_poll(
        a.id,
        vector_store_id=STORE_ID,
        chunking_strategy={"chunk_size": 120, "chunk_overlap": 0},  # type: ignore[arg-type]
    )
    assert attached.status == "completed"
    static = {"max_chunk_size_tokens": 120, "chunk_overlap_tokens": 0}
    assert _strategy(attached) == {"type": "static", "static": static}
    content = await oai.vector_stores.files.content(a.id, vector_store_id=STORE_ID)
    assert len(content.data) > 3
    # On a batch, both at the top and per file.
    batch = await oai.vector_stores.file_batches.create_and_poll(
        STORE_ID,
        files=[
            {"file_id": b.id, "chunking_strategy": {"chunk_size": 300, "chunk_overlap": 150}},  # type: ignore[typeddict-item]
            {"file_id": c.id},
        ],
        chunking_strategy={"chunk_size": 200},  # type: ignore[arg-type]
    )
    assert batch.file_counts.completed == 2
    b_file = await oai.vector_stores.files.retrieve(b.id, vector_store_id=STORE_ID)
    c_file = await oai.vector_stores.files.retrieve(c.id, vector_store_id=STORE_ID)
    assert _strategy(b_file)["static"] == {"max_chunk_size_tokens": 300, "chunk_overlap_tokens": 150}
    assert _strategy(c_file)["static"] == {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 100}
    [hit] = await _top(oai, BETA, max_num_results=1)
    assert hit.file_id == b.id and hit.score == pytest.approx(1.0)


async def test_bad_litellm_chunking_is_refused_whole(oai: AsyncOpenAI) -> None:
    """Same limits as `static`, the field named as sent; a refused batch attaches nothing."""
    uploaded = await oai.files.create(file=("a.txt", ALPHA.encode(), "text/plain"), purpose="assistants")
    other = await oai.files.create(file=("b.txt", BETA.encode(), "text/plain"), purpose="assistants")
    cases: list[tuple[object, str]] = [
        ({"chunk_size": 50, "chunk_overlap": 0}, "chunking_strategy.chunk_size"),
        ({"chunk_size": 200, "chunk_overlap": 150}, "chunking_strategy.chunk_overlap"),
        ({"chunk_size": 200, "separators": ["."]}, "chunking_strategy.separators"),
        ({"size": 200}, "chunking_strategy.type"),
    ]
    for value, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            await oai.vector_stores.files.create(
                vector_store_id=STORE_ID,
                file_id=uploaded.id,
                chunking_strategy=value,  # type: ignore[arg-type]
            )
        assert caught.value.body["param"] == param  # type: ignore[index]
    assert "chunk_overlap" in caught.value.message and "max_chunk_size_tokens" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.vector_stores.file_batches.create(
            STORE_ID,
            files=[
                {"file_id": uploaded.id},
                {"file_id": other.id, "chunking_strategy": {"chunk_size": 5000}},  # type: ignore[typeddict-item]
            ],
        )
    assert caught.value.body["param"] == "files[1].chunking_strategy.chunk_size"  # type: ignore[index]
    assert (await oai.vector_stores.retrieve(STORE_ID)).file_counts.total == 0


async def test_attribute_update_and_detach_are_visible_at_once(oai: AsyncOpenAI) -> None:
    uploaded = await oai.files.create(file=("a.txt", ALPHA.encode(), "text/plain"), purpose="assistants")
    await oai.vector_stores.files.create_and_poll(uploaded.id, vector_store_id=STORE_ID, attributes={"stage": "draft"})
    published: Any = {"type": "eq", "key": "stage", "value": "published"}
    assert await _top(oai, ALPHA, filters=published) == []

    updated = await oai.vector_stores.files.update(
        uploaded.id, vector_store_id=STORE_ID, attributes={"stage": "published"}
    )
    assert updated.attributes == {"stage": "published"}
    [hit] = await _top(oai, ALPHA, filters=published)
    assert hit.attributes == {"stage": "published"}

    deleted = await oai.vector_stores.files.delete(uploaded.id, vector_store_id=STORE_ID)
    assert deleted.deleted and deleted.object == "vector_store.file.deleted"
    assert await _top(oai, ALPHA) == []
    store = await oai.vector_stores.retrieve(STORE_ID)
    assert store.file_counts.total == 0
    # The File itself remains and can be attached again.
    again = await oai.vector_stores.files.create_and_poll(uploaded.id, vector_store_id=STORE_ID)
    assert again.status == "completed" and again.attributes == {}


async def test_deleting_a_file_removes_it_from_every_store(oai: AsyncOpenAI) -> None:
    other = await oai.vector_stores.create(name="other")
    uploaded = await oai.files.create(file=("a.txt", ALPHA.encode(), "text/plain"), purpose="assistants")
    await oai.vector_stores.files.create_and_poll(uploaded.id, vector_store_id=STORE_ID)
    await oai.vector_stores.files.create_and_poll(uploaded.id, vector_store_id=other.id)
    assert len(await _top(oai, ALPHA)) == 1
    await oai.files.delete(uploaded.id)
    assert await _top(oai, ALPHA) == []
    assert (await oai.vector_stores.search(other.id, query=ALPHA)).data == []
    with pytest.raises(openai.NotFoundError):
        await oai.vector_stores.files.retrieve(uploaded.id, vector_store_id=other.id)
    assert (await oai.vector_stores.retrieve(other.id)).file_counts.total == 0


async def test_store_created_with_file_ids(oai: AsyncOpenAI) -> None:
    a = await oai.files.create(file=("a.txt", ALPHA.encode(), "text/plain"), purpose="assistants")
    b = await oai.files.create(file=("b.txt", BETA.encode(), "text/plain"), purpose="assistants")
    store = await oai.vector_stores.create(
        name="with-files",
        file_ids=[a.id, b.id],
        chunking_strategy={"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 50}},
    )
    assert store.file_counts.total == 2
    files = [f async for f in oai.vector_stores.files.list(store.id)]
    assert {f.id for f in files} == {a.id, b.id}
    for f in files:
        done = await oai.vector_stores.files.poll(f.id, vector_store_id=store.id)
        assert done.status == "completed"
        assert _strategy(done)["static"]["chunk_overlap_tokens"] == 50
    assert (await oai.vector_stores.retrieve(store.id)).file_counts.completed == 2
    with pytest.raises(openai.NotFoundError) as caught:
        await oai.vector_stores.create(name="missing", file_ids=["file-doesnotexist"])
    assert caught.value.body["param"] == "file_ids[0]"  # type: ignore[index]


async def test_list_filter_by_status(oai: AsyncOpenAI) -> None:
    good = await oai.files.create(file=("good.txt", ALPHA.encode(), "text/plain"), purpose="assistants")
    bad = await oai.files.create(file=("bad.txt", b"", "text/plain"), purpose="assistants")
    await oai.vector_stores.files.create_and_poll(good.id, vector_store_id=STORE_ID)
    await oai.vector_stores.files.create_and_poll(bad.id, vector_store_id=STORE_ID)
    completed = [f.id async for f in oai.vector_stores.files.list(STORE_ID, filter="completed")]
    failed = [f.id async for f in oai.vector_stores.files.list(STORE_ID, filter="failed")]
    assert completed == [good.id] and failed == [bad.id], [
        f.last_error async for f in oai.vector_stores.files.list(STORE_ID)
    ]
    everything = [f.id async for f in oai.vector_stores.files.list(STORE_ID, order="asc", limit=1)]
    assert everything == [good.id, bad.id]


GARBAGE = bytes((i * 7919 + 13) % 256 for i in range(5000))


@pytest.mark.parametrize(
    ("name", "data", "mime", "code", "reason"),
    [
        ("empty.txt", b"", "text/plain", "invalid_file", "empty"),
        ("garbage.txt", GARBAGE, "text/plain", "invalid_file", "binary|UTF-8"),
        ("latin1.txt", "café crème".encode("latin-1"), "text/plain", "invalid_file", "not valid UTF-8"),
        ("broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage", "application/pdf", "invalid_file", "PDF"),
        ("image.png", b"\x89PNG\r\n\x1a\n" + GARBAGE, "image/png", "unsupported_file", "unsupported file type"),
        ("archive.zip", b"PK\x03\x04" + GARBAGE, "application/zip", "unsupported_file", "unsupported file type"),
    ],
)
async def test_bad_files_fail_with_a_reason(
    oai: AsyncOpenAI, name: str, data: bytes, mime: str, code: str, reason: str
) -> None:
    uploaded = await oai.files.create(file=(name, data, mime), purpose="assistants")
    attached = await oai.vector_stores.files.create_and_poll(uploaded.id, vector_store_id=STORE_ID)
    assert attached.status == "failed"
    assert attached.last_error is not None and attached.last_error.code == code
    import re

    assert re.search(reason, attached.last_error.message), attached.last_error.message
    assert name in attached.last_error.message
    assert attached.usage_bytes == 0
    # Nothing of it is searchable, and the server goes on serving.
    content = await oai.vector_stores.files.content(uploaded.id, vector_store_id=STORE_ID)
    assert content.data == []
    good = await oai.vector_stores.files.upload_and_poll(
        vector_store_id=STORE_ID, file=("ok.txt", ALPHA.encode(), "text/plain")
    )
    assert good.status == "completed"
    store = await oai.vector_stores.retrieve(STORE_ID)
    assert (store.file_counts.failed, store.file_counts.completed) == (1, 1)


async def test_pdf_is_ingested(oai: AsyncOpenAI) -> None:
    pdf = make_pdf([["Gamma rays come from radioactive decay."], ["Second page text."]])
    attached = await oai.vector_stores.files.upload_and_poll(
        vector_store_id=STORE_ID, file=("paper.pdf", pdf, "application/pdf")
    )
    assert attached.status == "completed"
    content = await oai.vector_stores.files.content(attached.id, vector_store_id=STORE_ID)
    text = " ".join(str(part.text) for part in content.data)
    assert "Gamma rays come from radioactive decay." in text and "Second page text." in text


async def test_upload_over_the_limit_gets_413(oai: AsyncOpenAI, ingest_server: RunningServer) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        await oai.files.create(file=("big.txt", b"a" * (MAX_UPLOAD + 1), "text/plain"), purpose="assistants")
    assert caught.value.status_code == 413
    assert "max_upload_bytes" in caught.value.message
    # Exactly at the limit is fine.
    ok = await oai.files.create(file=("limit.txt", b"a" * MAX_UPLOAD, "text/plain"), purpose="assistants")
    assert ok.bytes == MAX_UPLOAD
    assert [f.id async for f in oai.files.list()] == [ok.id]


async def test_invalid_requests_name_the_param(oai: AsyncOpenAI) -> None:
    uploaded = await oai.files.create(file=("a.txt", ALPHA.encode(), "text/plain"), purpose="assistants")

    def static(size: int, overlap: int) -> dict[str, Any]:
        return {"type": "static", "static": {"max_chunk_size_tokens": size, "chunk_overlap_tokens": overlap}}

    cases: list[tuple[dict[str, Any], str]] = [
        ({"chunking_strategy": static(50, 0)}, "chunking_strategy.static.max_chunk_size_tokens"),
        ({"chunking_strategy": static(200, 150)}, "chunking_strategy.static.chunk_overlap_tokens"),
        ({"attributes": {"k": {"nested": 1}}}, "attributes.k"),
        ({"attributes": {f"k{i}": i for i in range(17)}}, "attributes"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            await oai.vector_stores.files.create(vector_store_id=STORE_ID, file_id=uploaded.id, **extra)
        assert caught.value.body["param"] == param  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        await oai.vector_stores.files.create(vector_store_id=STORE_ID, file_id="file-missing")
    with pytest.raises(openai.NotFoundError):
        await oai.vector_stores.files.create(vector_store_id="vs_missing", file_id=uploaded.id)
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.vector_stores.files.list(STORE_ID, filter="nope")  # type: ignore[arg-type]
    assert caught.value.body["param"] == "filter"  # type: ignore[index]
    assert (await oai.vector_stores.retrieve(STORE_ID)).file_counts.total == 0


async def test_cancel_batch_keeps_counts_consistent(oai: AsyncOpenAI, fake_embedder: FakeEmbedder) -> None:
    fake_embedder.delay_seconds = 0.3
    uploaded = [
        await oai.files.create(file=(f"f{i}.txt", f"File {i} text.".encode(), "text/plain"), purpose="assistants")
        for i in range(8)
    ]
    batch = await oai.vector_stores.file_batches.create(STORE_ID, file_ids=[f.id for f in uploaded])
    assert batch.status == "in_progress" and batch.file_counts.total == 8
    cancelled = await oai.vector_stores.file_batches.cancel(batch.id, vector_store_id=STORE_ID)
    assert cancelled.file_counts.total == 8 and cancelled.file_counts.cancelled >= 4
    final = await oai.vector_stores.file_batches.poll(batch.id, vector_store_id=STORE_ID)
    counts = final.file_counts
    assert final.status == "cancelled" and counts.in_progress == 0
    assert counts.cancelled + counts.completed == 8 and counts.failed == 0
    # What completed is searchable; what was cancelled is not.
    for f in uploaded:
        state = (await oai.vector_stores.files.retrieve(f.id, vector_store_id=STORE_ID)).status
        content = await oai.vector_stores.files.content(f.id, vector_store_id=STORE_ID)
        assert (state == "completed") == bool(content.data)


async def test_keys_limited_to_a_store_see_only_their_files(ingest_server: RunningServer) -> None:
    writer = AsyncOpenAI(base_url=ingest_server.url("/v1"), api_key=WRITE_KEY, max_retries=0)
    limited = AsyncOpenAI(base_url=ingest_server.url("/v1"), api_key=LIMITED_KEY, max_retries=0)
    reader = AsyncOpenAI(base_url=ingest_server.url("/v1"), api_key=READ_KEY, max_retries=0)
    try:
        mine = await writer.files.create(file=("w.txt", b"writer's file", "text/plain"), purpose="assistants")
        theirs = await limited.files.create(file=("l.txt", b"limited's file", "text/plain"), purpose="assistants")
        assert [f.id async for f in limited.files.list()] == [theirs.id]
        with pytest.raises(openai.NotFoundError):
            await limited.files.content(mine.id)
        assert {f.id async for f in writer.files.list()} == {mine.id, theirs.id}
        with pytest.raises(openai.PermissionDeniedError):
            await reader.files.create(file=("r.txt", b"x", "text/plain"), purpose="assistants")
        assert [f.id async for f in reader.files.list()] == [theirs.id, mine.id]
    finally:
        for client in (writer, limited, reader):
            await client.close()


async def test_raw_routes_without_prefix_and_errors(ingest_server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        # JSON where multipart is read: 415, as the contract says.
        async with http.post(ingest_server.url("/files"), headers=auth(), json={"purpose": "assistants"}) as response:
            assert response.status == 415
            body = await response.json()
            assert body["error"]["param"] == "file" and body["error"]["code"] == "unsupported_media_type"
        # Multipart without the file (a form without files would go url-encoded: 415 as above).
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("purpose", "assistants")
        async with http.post(ingest_server.url("/files"), headers=auth(), data=form) as response:
            assert response.status == 400
            assert (await response.json())["error"]["param"] == "file"
        form = aiohttp.FormData()
        form.add_field("purpose", "assistants")
        async with http.post(ingest_server.url("/files"), headers=auth(), data=form) as response:
            assert response.status == 415
        async with http.get(
            ingest_server.url(f"/vector_stores/{STORE_ID}/file_batches/vsfb_x"), headers=auth()
        ) as response:
            assert response.status == 404
            assert (await response.json())["error"]["param"] == "batch_id"


async def test_concurrent_attach_counts_always_add_up(oai: AsyncOpenAI) -> None:
    uploaded = [
        await oai.files.create(file=(f"c{i}.txt", f"Concurrent file {i}.".encode(), "text/plain"), purpose="assistants")
        for i in range(6)
    ]
    await asyncio.gather(*(oai.vector_stores.files.create(vector_store_id=STORE_ID, file_id=f.id) for f in uploaded))
    for _ in range(200):
        counts = (await oai.vector_stores.retrieve(STORE_ID)).file_counts
        assert counts.total == 6
        assert counts.in_progress + counts.completed + counts.failed + counts.cancelled == 6
        if counts.completed == 6:
            break
        await asyncio.sleep(0.05)
    assert counts.completed == 6


async def test_deleting_a_store_during_ingestion(oai: AsyncOpenAI, fake_embedder: FakeEmbedder) -> None:
    store = await oai.vector_stores.create(name="short-lived")
    text = "\n\n".join(f"Paragraph {i} of a file that takes a while to embed." for i in range(200))
    uploaded = await oai.files.create(file=("slow.md", text.encode(), "text/markdown"), purpose="assistants")
    fake_embedder.delay_seconds = 0.2
    await oai.vector_stores.files.create(vector_store_id=store.id, file_id=uploaded.id)
    for _ in range(100):
        if fake_embedder.calls:
            break
        await asyncio.sleep(0.05)
    deleted = await oai.vector_stores.delete(store.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        await oai.vector_stores.retrieve(store.id)
    # The worker gets over it: the next file in another store is ingested normally.
    fake_embedder.delay_seconds = 0.0
    done = await oai.vector_stores.files.upload_and_poll(
        vector_store_id=STORE_ID, file=("after.txt", ALPHA.encode(), "text/plain")
    )
    assert done.status == "completed"
    assert (await oai.files.retrieve(uploaded.id)).id == uploaded.id


async def test_same_file_attached_concurrently(oai: AsyncOpenAI) -> None:
    uploaded = await oai.files.create(file=("a.txt", ALPHA.encode(), "text/plain"), purpose="assistants")
    results = await asyncio.gather(
        *(oai.vector_stores.files.create(vector_store_id=STORE_ID, file_id=uploaded.id) for _ in range(6)),
        return_exceptions=True,
    )
    assert all(not isinstance(r, BaseException) or isinstance(r, openai.ConflictError) for r in results), results
    assert any(not isinstance(r, BaseException) for r in results)
    done = await oai.vector_stores.files.poll(uploaded.id, vector_store_id=STORE_ID)
    assert done.status == "completed"
    assert [f.id async for f in oai.vector_stores.files.list(STORE_ID)] == [uploaded.id]
    assert len(await _top(oai, ALPHA)) == 1


async def test_ingestion_leaves_statistics_current(oai: AsyncOpenAI, ingest_server: RunningServer) -> None:
    """The worker analyzes a store after loading it, which also gives keyword search its term statistics."""
    text = "\n\n".join(f"Paragraph {i} on the aerodynamics of slender bodies at incidence." for i in range(60))
    await oai.vector_stores.files.upload_and_poll(vector_store_id=STORE_ID, file=("bodies.md", text.encode()))
    async with await psycopg.AsyncConnection.connect(ingest_server.dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT s.last_analyze IS NOT NULL, v.analyzed_rows, (SELECT count(*) FROM text_stats t"
            " WHERE t.vector_store_id = v.id) FROM vector_stores v JOIN pg_stat_user_tables s"
            " ON s.relid = to_regclass(v.table_name) WHERE v.id = %s",
            [STORE_ID],
        )
        analyzed, rows, lexemes = await cur.fetchone() or (False, 0, 0)
    assert analyzed and rows > 1 and lexemes > 5


async def test_attributes_beyond_64_bits_come_back_exactly(oai: AsyncOpenAI, ingest_server: RunningServer) -> None:
    # Raw HTTP: the SDK's models would turn every number into a float on the way in and out.
    big = 123456789012345678901234567890
    uploaded = await oai.files.create(file=("big.txt", ALPHA.encode(), "text/plain"), purpose="assistants")
    base = ingest_server.url(f"/v1/vector_stores/{STORE_ID}")
    async with aiohttp.ClientSession(headers=auth(WRITE_KEY)) as http:
        body = {"file_id": uploaded.id, "attributes": {"big": big, "n": 7}}
        async with http.post(f"{base}/files", json=body) as response:
            assert response.status == 200, await response.text()
        for _ in range(100):
            async with http.get(f"{base}/files/{uploaded.id}") as response:
                if (await response.json())["status"] == "completed":
                    break
            await asyncio.sleep(0.1)
        async with http.post(f"{base}/search", json={"query": ALPHA}) as response:
            page = json.loads(await response.read())
    assert page["data"][0]["attributes"] == {"big": big, "n": 7}
    assert type(page["data"][0]["attributes"]["big"]) is int and type(page["data"][0]["attributes"]["n"]) is int
