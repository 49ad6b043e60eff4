"""OGX's own Python client (`llama-stack-client`, PyPI) against a running server, unchanged.

Run by tests/server/test_ogx.py::test_llama_stack_client in a subprocess, with a Python that has the client
(it needs Python >= 3.12; the project's floor is 3.11, so CI installs it in its own venv, see .ci/run):

    python ogx_client_script.py BASE_URL API_KEY DIMENSIONS

It walks what an OGX user does, asserts as it goes, and prints one JSON line with what it saw; any failure is
a traceback and exit 1. It imports nothing of this project.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import llama_stack_client  # type: ignore[import-not-found, unused-ignore]


def _wait_completed(client: Any, store_id: str, file_id: str) -> str:
    deadline = time.monotonic() + 60
    while True:
        status = str(client.vector_stores.files.retrieve(file_id, vector_store_id=store_id).status)
        if status != "in_progress" or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def main(base_url: str, api_key: str, dimensions: int) -> dict[str, Any]:
    client = llama_stack_client.LlamaStackClient(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
    seen: dict[str, Any] = {"version": llama_stack_client.__version__}

    # Stores: what OGX's docs send on create, then list, retrieve, modify, delete.
    ogx_extras = {"embedding_model": "fake-model", "embedding_dimension": dimensions, "provider_id": "pgvector"}
    store = client.vector_stores.create(name="from-ogx", metadata={"team": "a"}, extra_body=ogx_extras)
    assert store.id.startswith("vs_") and store.status == "completed", store
    assert store.created_at <= time.time(), store.created_at
    assert store.id in [s.id for s in client.vector_stores.list()]
    assert client.vector_stores.retrieve(store.id).name == "from-ogx"
    assert client.vector_stores.update(store.id, name="renamed").name == "renamed"
    try:
        client.vector_stores.create(name="bad", extra_body={"embedding_model": "all-MiniLM-L6-v2"})
        raise AssertionError("a model the server can't serve was accepted")
    except llama_stack_client.BadRequestError as exc:
        seen["refused_model"] = str(exc)

    # Files: upload, attach (OpenAI's asynchronous attach: poll until done), a batch, contents with vectors.
    text = "pgvector keeps embeddings next to the rows they describe. " * 4
    uploaded = client.files.create(file=("ogx.txt", text.encode(), "text/plain"), purpose="assistants")
    client.vector_stores.files.create(store.id, file_id=uploaded.id, attributes={"topic": "db"}, extra_body=ogx_extras)
    seen["attach_status"] = _wait_completed(client, store.id, uploaded.id)
    second = client.files.create(
        file=("two.txt", b"reciprocal rank fusion of two rankings", "text/plain"), purpose="assistants"
    )
    batch = client.vector_stores.file_batches.create(store.id, file_ids=[second.id])
    seen["batch_id"] = batch.id
    seen["batch_file_status"] = _wait_completed(client, store.id, second.id)
    contents = client.vector_stores.files.content(
        uploaded.id, vector_store_id=store.id, include_embeddings=True, include_metadata=True
    )
    seen["content_dimensions"] = sorted({len(item.embedding or []) for item in contents.data})
    seen["content_metadata"] = [dict(item.metadata or {}) for item in contents.data]

    # The chunk API: precomputed embeddings in the client's required shape, then a query.
    vector = [0.0] * dimensions
    vector[0] = 1.0
    client.vector_io.insert(
        vector_store_id=store.id,
        chunks=[
            {
                "chunk_id": "ogx-chunk-1",
                "content": "BM25 ranks chunks by the words they share with the query",
                "metadata": {"document_id": "doc-7"},
                "embedding": vector,
                "embedding_model": "fake-model",
                "embedding_dimension": dimensions,
                "chunk_metadata": {"chunk_id": "ogx-chunk-1", "document_id": "doc-7"},
            }
        ],
    )
    answer = client.vector_io.query(
        vector_store_id=store.id, query="BM25 ranks chunks", params={"mode": "keyword", "max_chunks": 3}
    )
    seen["query_chunk_ids"] = [chunk.chunk_id for chunk in answer.chunks]
    seen["query_embedding_dimensions"] = sorted({len(chunk.embedding) for chunk in answer.chunks})
    seen["query_scores"] = list(answer.scores)

    # Search in every mode and with every ranker OGX's client types offer.
    searches: dict[str, list[str]] = {}
    for mode in ("vector", "keyword", "hybrid"):
        page = client.vector_stores.search(store.id, query="rank fusion", search_mode=mode)
        searches[mode] = [hit.content[0].text for hit in page.data]
    for name, options in (
        ("rrf", {"ranker": "rrf", "impact_factor": 30.0}),
        ("weighted", {"ranker": "weighted", "alpha": 0.7}),
        ("weights", {"ranker": "weighted", "weights": {"vector": 1.0, "keyword": 2.0}}),
    ):
        page = client.vector_stores.search(store.id, query="rank fusion", ranking_options=options)  # type: ignore[arg-type, unused-ignore]
        searches[name] = [hit.content[0].text for hit in page.data]
    page = client.vector_stores.search(
        store.id, query="rank fusion", extra_body={"ranking_options": {"ranker": {"type": "rrf", "impact_factor": 5}}}
    )
    searches["rrf_object"] = [hit.content[0].text for hit in page.data]
    seen["searches"] = searches

    assert client.vector_stores.delete(store.id).deleted
    return seen


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
