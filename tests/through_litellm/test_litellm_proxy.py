"""Every document operation a LiteLLM user has, through a real LiteLLM proxy loaded with the rendered litellm.yml.

Each document is checked searchable afterwards, through LiteLLM and directly. The fake embedder's vectors are
a hash of the text, so a query equal to a chunk's text scores 1.0 and names exactly one file.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from openai import AsyncOpenAI
from server.conftest import WRITE_KEY

from through_litellm.conftest import (
    FILES_MODEL,
    MASTER_KEY,
    OVERRIDDEN_MAX,
    REGISTRY_NAME,
    STORE_ID,
    Stack,
    files_headers,
)


def server_id(litellm_id: str) -> str:
    """The server's file id inside a LiteLLM-encoded one: LiteLLM answers a model-routed upload with
    `file-` + base64url("litellm:<provider's id>;model,<model name>"), and decodes it again on the way back."""
    encoded = litellm_id.removeprefix("file-")
    try:
        decoded = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return litellm_id
    if not decoded.startswith("litellm:"):
        return litellm_id
    assert decoded.endswith(f";model,{FILES_MODEL}"), decoded
    return decoded.removeprefix("litellm:").split(";", 1)[0]


async def _wait_completed(direct: AsyncOpenAI, file_id: str, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        attached = await direct.vector_stores.files.retrieve(file_id, vector_store_id=STORE_ID)
        if attached.status != "in_progress" or time.monotonic() > deadline:
            return attached
        await asyncio.sleep(0.1)


async def _hits(client: AsyncOpenAI, query: str) -> list[Any]:
    page = await client.vector_stores.search(STORE_ID, query=query, max_num_results=OVERRIDDEN_MAX)
    return list(page.data)


async def _searchable_both_ways(
    via_litellm: AsyncOpenAI, direct: AsyncOpenAI, text: str, file_id: str, *, top_score: bool = True
) -> None:
    """The file is the first hit for one of its chunks' text, through LiteLLM and directly. `top_score`: and that
    chunk is first in both halves of the hybrid ranking (fused score 1), which holds for documents of one chunk;
    in a long document of overlapping chunks a neighbour may lead the keyword half, so there only the file counts."""
    for client in (via_litellm, direct):
        hits = await _hits(client, text)
        assert hits and hits[0].file_id == file_id, hits
        if top_score:
            assert hits[0].score == pytest.approx(1.0), hits


def test_the_snippet_is_the_rendered_one(stack: Stack) -> None:
    snippet = yaml.safe_load(stack.snippet.read_text())
    (entry,) = snippet["vector_store_registry"]
    assert entry["vector_store_name"] == REGISTRY_NAME
    assert entry["litellm_params"]["custom_llm_provider"] == "openai"
    assert entry["litellm_params"]["api_base"] == stack.server.base_url + "/v1"
    assert [model["model_name"] for model in snippet["model_list"]] == [FILES_MODEL]
    assert [entry["custom_llm_provider"] for entry in snippet["files_settings"]] == ["openai"]
    # The proxy loads exactly these bytes (config.yaml only adds the master key and the include).
    assert (stack.proxy.log_path.parent / "litellm.yml").read_bytes() == stack.snippet.read_bytes()


async def _upload_via_litellm(via_litellm: AsyncOpenAI, name: str, text: str) -> str:
    """POST /v1/files through LiteLLM's files model (header `x-litellm-model`); returns LiteLLM's file id."""
    uploaded = await via_litellm.files.create(
        file=(name, text.encode(), "text/plain"), purpose="assistants", extra_headers=dict(files_headers())
    )
    assert uploaded.id != server_id(uploaded.id), "a model-routed upload gets a LiteLLM-encoded id"
    return uploaded.id


async def test_upload_attach_list_search_remove(stack: Stack, via_litellm: AsyncOpenAI, direct: AsyncOpenAI) -> None:
    text = "Upload through LiteLLM, then attach the LiteLLM file id to the store."
    litellm_id = await _upload_via_litellm(via_litellm, "notes.txt", text)
    ours = server_id(litellm_id)
    assert (await direct.files.retrieve(ours)).filename == "notes.txt"
    # Attached through LiteLLM with the id LiteLLM gave: it decodes it before calling the server.
    attached = await via_litellm.vector_stores.files.create(vector_store_id=STORE_ID, file_id=litellm_id)
    assert attached.status == "in_progress" and server_id(attached.id) == ours
    done = await _wait_completed(direct, ours)
    assert done.status == "completed", done
    await _searchable_both_ways(via_litellm, direct, text, ours)
    hit = (await _hits(via_litellm, text))[0]
    assert hit.filename == "notes.txt"
    assert ours in [f.id async for f in via_litellm.vector_stores.files.list(STORE_ID)]
    # Remove: detach through LiteLLM (LiteLLM's id or ours), then delete the file through the files model.
    removed = await via_litellm.vector_stores.files.delete(litellm_id, vector_store_id=STORE_ID)
    assert removed.deleted
    assert all(h.file_id != ours for h in await _hits(direct, text))
    assert ours not in [f.id async for f in via_litellm.vector_stores.files.list(STORE_ID)]
    deleted = await via_litellm.files.delete(litellm_id)
    assert deleted.deleted and deleted.id == ours
    with pytest.raises(openai.NotFoundError):
        await direct.files.retrieve(ours)


async def test_upload_picks_the_model_by_form_field(stack: Stack, direct: AsyncOpenAI) -> None:
    """Clients that can't set a header name the files model in the multipart form instead."""
    form = aiohttp.FormData()
    form.add_field("purpose", "assistants")
    form.add_field("model", FILES_MODEL)
    form.add_field("file", b"Picked by the form field.", filename="form.txt", content_type="text/plain")
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {MASTER_KEY}"}
        async with http.post(stack.proxy.base_url + "/v1/files", data=form, headers=headers) as response:
            assert response.status == 200, await response.text()
            body = await response.json()
    ours = server_id(body["id"])
    assert ours != body["id"]
    assert (await direct.files.retrieve(ours)).filename == "form.txt"
    await direct.files.delete(ours)


async def _ingest_at(base_url: str, body: dict[str, Any] | aiohttp.FormData) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        kwargs: dict[str, Any] = {"json": body} if isinstance(body, dict) else {"data": body}
        async with http.post(base_url + "/v1/rag/ingest", headers=headers, **kwargs) as response:
            return response.status, await response.json(content_type=None)


async def _ingest(stack: Stack, body: dict[str, Any] | aiohttp.FormData) -> tuple[int, dict[str, Any]]:
    return await _ingest_at(stack.proxy.base_url, body)


def _options(chunking: dict[str, Any] | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {"vector_store": {"vector_store_id": STORE_ID}}
    if chunking is not None:
        options["chunking_strategy"] = chunking
    return options


def _base64_file(name: str, text: str) -> dict[str, str]:
    return {"filename": name, "content": base64.b64encode(text.encode()).decode(), "content_type": "text/plain"}


async def _ingested(
    stack: Stack, via_litellm: AsyncOpenAI, direct: AsyncOpenAI, answer: tuple[int, dict[str, Any]], text: str
) -> Any:
    status, body = answer
    assert status == 200 and body["status"] == "completed", body
    assert body["vector_store_id"] == STORE_ID
    file_id = body["file_id"]
    done = await _wait_completed(direct, file_id)
    assert done.status == "completed", done
    await _searchable_both_ways(via_litellm, direct, text, file_id)
    return done


UUID_NAME = r"[0-9a-f]{32}\.txt"


async def test_rag_ingest_multipart(stack: Stack, via_litellm: AsyncOpenAI, direct: AsyncOpenAI) -> None:
    text = "Multipart ingest through LiteLLM lands in the declared store."
    form = aiohttp.FormData()
    form.add_field("file", text.encode(), filename="handbook.txt", content_type="text/plain")
    form.add_field("request", json.dumps({"ingest_options": _options()}))
    done = await _ingested(stack, via_litellm, direct, await _ingest(stack, form), text)
    # LiteLLM's {"type": "auto"} default: 800/400 tokens.
    assert done.chunking_strategy.static.max_chunk_size_tokens == 800
    # LiteLLM renames the upload to <uuid>.txt and passes no attributes: the original name is lost on its way.
    stored = await direct.files.retrieve(done.id)
    assert re.fullmatch(UUID_NAME, stored.filename), stored.filename
    assert done.attributes == {}


async def test_rag_ingest_json_base64(stack: Stack, via_litellm: AsyncOpenAI, direct: AsyncOpenAI) -> None:
    text = "A JSON body with a base64 file is ingested too."
    answer = await _ingest(stack, {"file": _base64_file("b64.txt", text), "ingest_options": _options()})
    await _ingested(stack, via_litellm, direct, answer, text)


async def test_rag_ingest_existing_file_id(stack: Stack, via_litellm: AsyncOpenAI, direct: AsyncOpenAI) -> None:
    text = "An uploaded file, ingested later by its id."
    litellm_id = await _upload_via_litellm(via_litellm, "later.txt", text)
    # LiteLLM's ingest doesn't decode its own file ids (its vector store files routes do): the server's 404,
    # as LiteLLM's 200 `failed`. With the id inside, it works.
    status, body = await _ingest(stack, {"file_id": litellm_id, "ingest_options": _options()})
    assert status == 200 and body["status"] == "failed" and "No file found" in body["error"], body
    answer = await _ingest(stack, {"file_id": server_id(litellm_id), "ingest_options": _options()})
    done = await _ingested(stack, via_litellm, direct, answer, text)
    assert done.id == server_id(litellm_id)


@pytest.mark.parametrize(
    ("chunking", "expected"),
    [
        ({"type": "static", "static": {"max_chunk_size_tokens": 150, "chunk_overlap_tokens": 30}}, (150, 30)),
        ({"chunk_size": 120, "chunk_overlap": 20}, (120, 20)),
    ],
    ids=["openai-static", "litellm-chunk-size"],
)
async def test_rag_ingest_chunking(
    stack: Stack, via_litellm: AsyncOpenAI, direct: AsyncOpenAI, chunking: dict[str, Any], expected: tuple[int, int]
) -> None:
    # A word of its own in every sentence, so the keyword half tells the cases apart.
    tag = "doc" + "".join(chr(ord("a") + int(digit)) for digit in f"{expected[0]}{expected[1]}")
    sentences = [f"Sentence {i} of the chunked {tag} document about {tag}." for i in range(80)]
    text = " ".join(sentences)
    answer = await _ingest(stack, {"file": _base64_file("long.txt", text), "ingest_options": _options(chunking)})
    status, body = answer
    assert status == 200 and body["status"] == "completed", body
    done = await _wait_completed(direct, body["file_id"])
    assert done.status == "completed", done
    static = done.chunking_strategy.static
    assert (static.max_chunk_size_tokens, static.chunk_overlap_tokens) == expected
    content = await direct.vector_stores.files.content(done.id, vector_store_id=STORE_ID)
    chunks = [str(part.text) for part in content.data]
    assert len(chunks) > 3
    try:
        await _searchable_both_ways(via_litellm, direct, chunks[1], done.id, top_score=False)
    finally:
        # The cases share a store and their documents share all but the tag: the other case's file can win the
        # vector half of a hybrid ranking over a neighbour chunk of this one (seen in CI), so none is left behind.
        await direct.vector_stores.files.delete(done.id, vector_store_id=STORE_ID)
        await direct.files.delete(done.id)


async def test_rag_ingest_bad_chunking_is_reported_and_leaves_an_orphan(
    stack: Stack, via_litellm: AsyncOpenAI, direct: AsyncOpenAI
) -> None:
    """LiteLLM turns our 400 into 200 `failed`, with our message; its upload stays on the server, unattached."""
    before = {f.id async for f in direct.files.list()}
    store_before = (await direct.vector_stores.retrieve(STORE_ID)).file_counts.total
    answer = await _ingest(
        stack, {"file": _base64_file("bad.txt", "Never chunked."), "ingest_options": _options({"size": 200})}
    )
    status, body = answer
    assert status == 200 and body["status"] == "failed", body
    # The operator reads our message in LiteLLM's answer and log: both accepted shapes are named.
    for shape in ("max_chunk_size_tokens", "chunk_overlap_tokens", "chunk_size", "chunk_overlap"):
        assert shape in body["error"], body["error"]
    assert (
        "max_chunk_size_tokens" in stack.proxy.log().split("rag/ingest")[-1]
        or "max_chunk_size_tokens" in stack.proxy.log()
    )
    assert (await direct.vector_stores.retrieve(STORE_ID)).file_counts.total == store_before
    orphans = [f async for f in direct.files.list() if f.id not in before]
    assert len(orphans) == 1 and re.fullmatch(UUID_NAME, orphans[0].filename)
    # How an operator finds it: a file no store lists.
    attached = {f.id async for f in direct.vector_stores.files.list(STORE_ID)}
    assert orphans[0].id not in attached
    await direct.files.delete(orphans[0].id)


async def test_wrong_key_in_litellm_env_is_refused_and_never_logged(stack: Stack) -> None:
    """The second proxy's store key is wrong and shaped like an OpenAI key: 401s, and the key appears nowhere."""
    log_before = len(stack.server.log_path.read_bytes())
    proxy = stack.wrong_key_proxy
    client = proxy.client()
    answers: list[str] = []
    try:
        with pytest.raises(openai.AuthenticationError) as search:
            await client.vector_stores.search(STORE_ID, query="anything")
        with pytest.raises(openai.AuthenticationError) as upload:
            await client.files.create(
                file=("w.txt", b"wrong key", "text/plain"), purpose="assistants", extra_headers=dict(files_headers())
            )
        answers += [search.value.message, upload.value.message]
        status, body = await _ingest_at(
            proxy.base_url, {"file": _base64_file("w.txt", "Wrong key."), "ingest_options": _options()}
        )
        assert status == 200 and body["status"] == "failed" and "401" in body["error"], body
        answers.append(json.dumps(body))
    finally:
        await client.close()
    server_log = stack.server.log_path.read_bytes()[log_before:].decode(errors="replace")
    refused = [json.loads(line) for line in server_log.splitlines() if '"status": 401' in line]
    assert {entry["path"] for entry in refused} >= {f"/v1/vector_stores/{STORE_ID}/search", "/v1/files"}
    for text in [server_log, *answers]:
        assert "WRONGwrong" not in text and "DECOYdecoy" not in text
    assert "DECOYdecoy" not in stack.server.log_path.read_text(errors="replace")


async def test_server_down_leaves_nothing_half_ingested(
    stack: Stack, via_litellm: AsyncOpenAI, direct: AsyncOpenAI
) -> None:
    """LiteLLM answers what it can't reach; after the restart, the store and the files are as before."""
    files_before = {f.id async for f in direct.files.list()}
    count_before = (await direct.vector_stores.retrieve(STORE_ID)).file_counts.total
    await direct.close()
    stack.server.stop()
    try:
        status, body = await _ingest(
            stack, {"file": _base64_file("down.txt", "Server down."), "ingest_options": _options()}
        )
        assert status == 200 and body["status"] == "failed", body
        assert "connect" in body["error"].lower(), body
        # Search and upload: LiteLLM's 500, naming the connection failure.
        with pytest.raises(openai.InternalServerError) as search:
            await via_litellm.vector_stores.search(STORE_ID, query="Server down.")
        assert "connect" in search.value.message.lower()
        with pytest.raises(openai.InternalServerError) as upload:
            await _upload_via_litellm(via_litellm, "down.txt", "Server down.")
        assert "connection error" in upload.value.message.lower()
    finally:
        stack.server.start()
        await stack.server.wait_ready()
    async with AsyncOpenAI(base_url=stack.server.base_url + "/v1", api_key=WRITE_KEY, max_retries=0) as again:
        assert {f.id async for f in again.files.list()} == files_before
        assert (await again.vector_stores.retrieve(STORE_ID)).file_counts.total == count_before
    # And LiteLLM reaches it again, with nothing to restart on its side.
    text = "Back after the outage."
    answer = await _ingest(stack, {"file": _base64_file("back.txt", text), "ingest_options": _options()})
    assert answer[0] == 200 and answer[1]["status"] == "completed", answer


async def test_files_settings_take_model_less_uploads_and_deletes(
    stack: Stack, via_litellm: AsyncOpenAI, direct: AsyncOpenAI
) -> None:
    """With `files_settings`, an upload that names no model comes here, under the server's own id."""
    uploaded = await via_litellm.files.create(
        file=("plain.txt", b"No model named.", "text/plain"), purpose="assistants"
    )
    assert server_id(uploaded.id) == uploaded.id
    assert (await direct.files.retrieve(uploaded.id)).filename == "plain.txt"
    deleted = await via_litellm.files.delete(uploaded.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        await direct.files.retrieve(uploaded.id)


async def test_without_files_settings_model_less_calls(stack: Stack) -> None:
    """The default render (no files_settings), as LiteLLM 1.108.7 treats it: a model-less upload is refused by
    LiteLLM itself; a model-less delete ignores files_settings and takes the credentials of an `openai`
    deployment of model_list, here the files model, so it reaches the server (with this proxy's wrong key).
    With real OpenAI models in model_list too, it may go to OpenAI instead: docs/render.md says so."""
    log_before = len(stack.server.log_path.read_bytes())
    client = stack.wrong_key_proxy.client()
    try:
        with pytest.raises(openai.InternalServerError) as upload:
            await client.files.create(file=("x.txt", b"x", "text/plain"), purpose="assistants")
        with pytest.raises(openai.AuthenticationError):
            await client.files.delete("file-0123456789abcdef01234567")
    finally:
        await client.close()
    assert "files_settings is not set" in upload.value.message
    server_log = stack.server.log_path.read_bytes()[log_before:].decode(errors="replace")
    # Access lines only: the server's background work (compaction, statistics) may log in the same window.
    records = [json.loads(line) for line in server_log.splitlines() if line.startswith("{")]
    paths = [record["path"] for record in records if "path" in record]
    assert paths.count("/v1/files/file-0123456789abcdef01234567") == 1 and "/v1/files" not in paths


async def test_registry_overrides_still_override_callers(
    stack: Stack, via_litellm: AsyncOpenAI, direct: AsyncOpenAI
) -> None:
    """What litellm.yml's header says holds for provider openai too: the registry's max_num_results wins."""
    for index in range(OVERRIDDEN_MAX + 2):
        text = f"Override check document {index}."
        answer = await _ingest(stack, {"file": _base64_file(f"o{index}.txt", text), "ingest_options": _options()})
        assert answer[0] == 200 and answer[1]["status"] == "completed", answer
        assert (await _wait_completed(direct, answer[1]["file_id"])).status == "completed"
    query = "Override check document"
    asked = OVERRIDDEN_MAX + 2
    direct_page = await direct.vector_stores.search(STORE_ID, query=query, max_num_results=asked)
    litellm_page = await via_litellm.vector_stores.search(STORE_ID, query=query, max_num_results=asked)
    assert len(direct_page.data) == asked
    assert len(litellm_page.data) == OVERRIDDEN_MAX
