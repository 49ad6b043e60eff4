"""The `vector_store_registry` snippet for LiteLLM's config (litellm.yml)."""

from __future__ import annotations

from config import Spec, Store
from render.common import Document

LITELLM_HEADER = (
    "# Rendered by `vectorstore render` from the stack spec. Paste these entries into LiteLLM's config.yaml\n"
    "# (or merge this file into it). The ids are stable: the server recreates each store with the same id.\n"
)


def registry_entry(spec: Spec, store: Store) -> Document:
    assert store.registry is not None
    params: Document = {
        "vector_store_id": store.id,
        "custom_llm_provider": "pg_vector",
    }
    if store.registry.description is not None:
        params["vector_store_description"] = store.registry.description
    # Both directly under litellm_params: LiteLLM reads them there, not under vector_store_metadata.
    params["api_base"] = spec.service_url
    params["api_key"] = f"os.environ/{spec.litellm.api_key_env}"
    # LiteLLM passes every other key of litellm_params to each search: the place for search defaults.
    for key, value in sorted(store.registry.search_defaults.items()):
        params.setdefault(key, value)
    return {"vector_store_name": store.registry.name, "litellm_params": params}


def document(spec: Spec) -> Document:
    return {
        "vector_store_registry": [registry_entry(spec, store) for store in spec.stores if store.registry is not None]
    }
