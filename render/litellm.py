"""What LiteLLM needs from the spec: its config snippet (litellm.yml: the `vector_store_registry` entries, and with
provider `openai` the files route) and a patch for LiteLLM's own Deployment that gives its pod the key the snippet
names (litellm-deployment-patch.yaml).

Provider `openai` is LiteLLM's OpenAI vector store provider pointed at this server: it sends search, chat
`file_search`, `/v1/rag/query`, vector store files and `/v1/rag/ingest` over the plain OpenAI API, which the server
speaks. `pg_vector` is LiteLLM's pgvector provider: search and chat only (REFERENCE §2, docs/render.md).
"""

from __future__ import annotations

from config import Spec, Store
from render.common import Document

_FAILURE_MODE = (
    "# LiteLLM's default vector_store_search_failure_mode is `annotate`: a failed search (wrong api_base, a\n"
    "# missing or wrong key) still answers the chat with 200, only without the stores' context. To make such a\n"
    "# search fail the request instead, recommended, set in LiteLLM's config.yaml:\n"
    "#\n"
    "# litellm_settings:\n"
    "#   vector_store_search_failure_mode: error\n"
)


def header(spec: Spec) -> str:
    text = (
        "# Rendered by `vectorstore render` from the stack spec. Paste these entries into LiteLLM's config.yaml\n"
        "# (or merge this file into it). The ids are stable: the server recreates each store with the same id.\n"
        "#\n"
        "# Every key under a store's litellm_params is merged over each search request: a max_num_results there\n"
        "# (from the spec's search_overrides) is what every caller gets, whatever it asks for.\n"
        "#\n" + _FAILURE_MODE
    )
    if spec.litellm.provider == "pg_vector":
        return text + (
            "#\n"
            "# Provider pg_vector: LiteLLM can search these stores and chat with them, but not upload, attach or\n"
            "# /v1/rag/ingest documents; load them through the server itself. Provider openai can do all of it.\n"
        )
    text += (
        "#\n# Provider openai: LiteLLM's users can also upload, attach, /v1/rag/ingest, list and remove documents.\n"
    )
    if spec.litellm.files_model is not None:
        text += (
            f"# Uploads reach the server through the model {spec.litellm.files_model}: send the header\n"
            f"# `x-litellm-model: {spec.litellm.files_model}` (or the form field `model`) with POST /v1/files,\n"
            "# retrieve and delete. Its file ids are LiteLLM-encoded; attach them through LiteLLM as they are.\n"
            "# It is no chat model: the server has no /v1/chat/completions.\n"
        )
    if spec.litellm.files_settings:
        text += (
            "# files_settings: every POST /v1/files that names no model goes to the server (none to OpenAI).\n"
            "# LiteLLM's model-less DELETE /v1/files/{id} ignores files_settings (it takes an openai deployment's\n"
            "# credentials): delete with the LiteLLM-encoded id or the header `x-litellm-model`.\n"
        )
    return text


def deployment_patch_header(spec: Spec) -> str:
    text = (
        "# Rendered by `vectorstore render` from the stack spec. Edit the spec and render again; do not edit.\n"
        "# A strategic-merge patch for LiteLLM's own Deployment (not one of this directory's resources): it gives\n"
        "# LiteLLM's container the env var litellm.yml's api_key names, from the same Secret key the server reads.\n"
        "# Add it to the kustomization that deploys LiteLLM:\n"
        "#   patches:\n"
        "#     - path: litellm-deployment-patch.yaml\n"
        "# or apply it once:\n"
        f"#   kubectl patch deployment {spec.litellm.deployment_name} -n {spec.litellm.namespace}"
        " --patch-file litellm-deployment-patch.yaml\n"
    )
    if spec.litellm.provider == "openai":
        return text + (
            "# The key must be present: `optional: false` keeps LiteLLM's pod from starting without it. With provider\n"
            "# openai, LiteLLM falls back to OPENAI_API_KEY when the env var is missing or empty, and would send\n"
            "# the operator's OpenAI key to the vector store server (which refuses it and logs nothing of it).\n"
        )
    return text + (
        "# The key must be present: `optional: false` keeps LiteLLM's pod from starting without it. Without it,\n"
        '# LiteLLM\'s first search fails with "PG Vector API key is required. Set PG_VECTOR_API_KEY".\n'
    )


def api_base(spec: Spec) -> str:
    """LiteLLM's pg_vector appends `/v1/vector_stores` itself; its openai provider appends only `/vector_stores`
    and `/files` to what it is given (REFERENCE §2)."""
    return spec.litellm.api_base + ("/v1" if spec.litellm.provider == "openai" else "")


def _api_key(spec: Spec) -> str:
    return f"os.environ/{spec.litellm.api_key_env}"


def registry_entry(spec: Spec, store: Store) -> Document:
    assert store.registry is not None
    params: Document = {
        "vector_store_id": store.id,
        "custom_llm_provider": spec.litellm.provider,
    }
    if store.registry.description is not None:
        params["vector_store_description"] = store.registry.description
    # Both directly under litellm_params: LiteLLM reads them there, not under vector_store_metadata.
    params["api_base"] = api_base(spec)
    params["api_key"] = _api_key(spec)
    # LiteLLM merges every other key of litellm_params over each search request: these override callers.
    for key, value in sorted(store.registry.search_overrides.items()):
        params.setdefault(key, value)
    return {"vector_store_name": store.registry.name, "litellm_params": params}


def _files_target(spec: Spec) -> Document:
    return {"custom_llm_provider": "openai", "api_base": api_base(spec), "api_key": _api_key(spec)}


def document(spec: Spec) -> Document:
    doc: Document = {
        "vector_store_registry": [registry_entry(spec, store) for store in spec.stores if store.registry is not None]
    }
    if spec.litellm.provider != "openai":
        return doc
    if spec.litellm.files_model is not None:
        # A model entry only for files: LiteLLM routes POST /v1/files to a deployment's provider, base and key when
        # the request names the model (`x-litellm-model` or the form field `model`), and leaves every other
        # provider's uploads alone.
        target = _files_target(spec)
        doc["model_list"] = [
            {
                "model_name": spec.litellm.files_model,
                "litellm_params": {
                    "model": f"openai/{spec.litellm.files_model}",
                    "api_base": target["api_base"],
                    "api_key": target["api_key"],
                },
            }
        ]
    if spec.litellm.files_settings:
        doc["files_settings"] = [_files_target(spec)]
    return doc


def deployment_patch(spec: Spec) -> Document:
    """LiteLLM's Deployment, only the fields the patch sets: the key's env var, from its Secret key, required."""
    ref = spec.litellm_key.api_key
    env = {
        "name": spec.litellm.api_key_env,
        "valueFrom": {"secretKeyRef": {"name": ref.secret, "key": ref.key, "optional": False}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": spec.litellm.deployment_name, "namespace": spec.litellm.namespace},
        "spec": {"template": {"spec": {"containers": [{"name": spec.litellm.deployment_container, "env": [env]}]}}},
    }
