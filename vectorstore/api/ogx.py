"""What OGX (ex-Llama Stack) clients send beyond OpenAI's API, shared by the resource modules that accept it.

OGX's `vector_stores.create` carries `embedding_model`, `embedding_dimension` and `provider_id` (in the OpenAI
SDK's `extra_body`), and some of its clients send them on file attach and file batches too. They are honoured,
never ignored: a store is created with the model they name when this server can serve it, a store's own model
is the only one an attach may name, and anything else is a 400 that says what would have been accepted
(docs/search.md, "Coming from OGX").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from config import Spec
from vectorstore.api import common
from vectorstore.errors import BadRequest
from vectorstore.storage import files, stores

FIELDS = frozenset({"embedding_model", "embedding_dimension", "provider_id"})
PROVIDER_IDS = ("pgvector", "remote::pgvector")
"""This server's vector provider, as OGX names providers: the provider id of a run.yaml (`pgvector`) and the
provider type (`remote::pgvector`)."""
_MAX_DIMENSION = 64000


@dataclass(frozen=True)
class Model:
    name: str
    dimensions: int


def servable(spec: Spec) -> list[Model]:
    """The (model, dimensions) pairs this server embeds with: the spec's embedding first, then each declared
    store's own, each once. They all go to the same upstream, which serves them (reconcile embedded with them)."""
    models = [Model(spec.embedding.model, spec.embedding.dimensions)]
    for store in spec.stores:
        model = Model(store.model, store.dimensions)
        if model not in models:
            models.append(model)
    return models


def _listing(models: list[Model]) -> str:
    return ", ".join(f"'{model.name}' ({model.dimensions} dimensions)" for model in models)


def _provider(body: Mapping[str, Any]) -> None:
    provider = common.opt_str(body, "provider_id", max_len=256)
    if provider is not None and provider not in PROVIDER_IDS:
        raise BadRequest(
            f"'provider_id' is '{provider[:80]}', but this server's vector provider is "
            f"{' or '.join(repr(p) for p in PROVIDER_IDS)}; send one of those or leave it out.",
            param="provider_id",
        )


def _requested(body: Mapping[str, Any]) -> tuple[str | None, int | None]:
    _provider(body)
    model = common.opt_str(body, "embedding_model", max_len=512)
    dimension = common.opt_int(body, "embedding_dimension", lo=1, hi=_MAX_DIMENSION)
    return model, dimension


def model_for_new_store(spec: Spec, body: Mapping[str, Any]) -> Model:
    """The model a store created through the API gets: the spec's embedding, or the servable model the body
    names. 400 for a model or dimension this server can't serve, listing the ones it can."""
    name, dimension = _requested(body)
    models = servable(spec)
    # Without a model, the spec's is the one meant: a bare dimension does not pick another model.
    candidates = [models[0]] if name is None else [m for m in models if m.name == name]
    if name is not None and not candidates:
        raise BadRequest(
            f"'embedding_model' is '{name[:120]}', which this server can't serve; it embeds with {_listing(models)}.",
            param="embedding_model",
            code="model_not_found",
        )
    chosen = next((m for m in candidates if dimension is None or m.dimensions == dimension), None)
    if chosen is None:
        raise BadRequest(
            f"'embedding_dimension' is {dimension}, but {_listing(candidates)} "
            f"{'is' if len(candidates) == 1 else 'are'} what this server serves"
            f"{'' if name is None else f' for {name!r}'}.",
            param="embedding_dimension",
        )
    return chosen


def check_store_model(spec: Spec, store: stores.StoreRecord, body: Mapping[str, Any]) -> None:
    """An attach or batch naming a model must name the store's own (for a declared store, the spec's)."""
    name, dimension = _requested(body)
    if name is not None and name != store.model:
        known = "" if any(m.name == name for m in servable(spec)) else " (nor one this server can serve)"
        raise BadRequest(
            f"'embedding_model' is '{name[:120]}', but vector store '{store.id}' embeds with '{store.model}'"
            f"{known}; leave it out or send '{store.model}'.",
            param="embedding_model",
        )
    if dimension is not None and dimension != store.dimensions:
        raise BadRequest(
            f"'embedding_dimension' is {dimension}, but vector store '{store.id}' holds {store.dimensions}-dimension "
            "vectors; leave it out or send that.",
            param="embedding_dimension",
        )


_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no", "")


def query_flag(request: web.Request, key: str) -> bool:
    """A boolean query parameter as OGX's client sends one (`true` / `false`); 400 naming it otherwise."""
    text = request.query.get(key)
    if text is None or text.lower() in _FALSE:
        return False
    if text.lower() in _TRUE:
        return True
    raise BadRequest(f"'{key}' must be true or false; got '{text[:40]}'.", param=key)


def content_item(
    store: stores.StoreRecord, chunk: files.StoredChunk, with_embeddings: bool, with_metadata: bool
) -> dict[str, Any]:
    """One chunk of a file's contents in OGX's shape: OpenAI's `{type, text}` plus what was asked for."""
    item: dict[str, Any] = {"type": "text", "text": chunk.content}
    if with_embeddings:
        item["embedding"] = chunk.embedding
    if with_metadata:
        item["metadata"] = chunk.attributes
        item["chunk_metadata"] = {
            "chunk_id": chunk.id,
            "created_timestamp": chunk.created_at,
            "updated_timestamp": chunk.created_at,
            "chunk_embedding_model": store.model,
            "chunk_embedding_dimension": store.dimensions,
        }
    return item
