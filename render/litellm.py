"""What LiteLLM needs from the spec: the `vector_store_registry` snippet (litellm.yml) and a patch for LiteLLM's
own Deployment that gives its pod the key the snippet names (litellm-deployment-patch.yaml)."""

from __future__ import annotations

from config import Spec, Store
from render.common import Document

LITELLM_HEADER = (
    "# Rendered by `vectorstore render` from the stack spec. Paste these entries into LiteLLM's config.yaml\n"
    "# (or merge this file into it). The ids are stable: the server recreates each store with the same id.\n"
    "#\n"
    "# Every key under litellm_params is merged over each search request: a max_num_results here (from the\n"
    "# spec's search_overrides) is what every caller gets, whatever it asks for.\n"
    "#\n"
    "# LiteLLM's default vector_store_search_failure_mode is `annotate`: a failed search (wrong api_base, a\n"
    "# missing or wrong key) still answers the chat with 200, only without the stores' context. To make such a\n"
    "# search fail the request instead, recommended, set in LiteLLM's config.yaml:\n"
    "#\n"
    "# litellm_settings:\n"
    "#   vector_store_search_failure_mode: error\n"
)


def deployment_patch_header(spec: Spec) -> str:
    return (
        "# Rendered by `vectorstore render` from the stack spec. Edit the spec and render again; do not edit.\n"
        "# A strategic-merge patch for LiteLLM's own Deployment (not one of this directory's resources): it gives\n"
        "# LiteLLM's container the env var litellm.yml's api_key names, from the same Secret key the server reads.\n"
        "# Add it to the kustomization that deploys LiteLLM:\n"
        "#   patches:\n"
        "#     - path: litellm-deployment-patch.yaml\n"
        "# or apply it once:\n"
        f"#   kubectl patch deployment {spec.litellm.deployment_name} -n {spec.litellm.namespace}"
        " --patch-file litellm-deployment-patch.yaml\n"
        '# Without it, LiteLLM\'s first search fails with "PG Vector API key is required. Set PG_VECTOR_API_KEY".\n'
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
    # LiteLLM merges every other key of litellm_params over each search request: these override callers.
    for key, value in sorted(store.registry.search_overrides.items()):
        params.setdefault(key, value)
    return {"vector_store_name": store.registry.name, "litellm_params": params}


def document(spec: Spec) -> Document:
    return {
        "vector_store_registry": [registry_entry(spec, store) for store in spec.stores if store.registry is not None]
    }


def deployment_patch(spec: Spec) -> Document:
    """LiteLLM's Deployment, only the fields the patch sets: the key's env var, from its Secret key."""
    ref = spec.litellm_key.api_key
    env = {"name": spec.litellm.api_key_env, "valueFrom": {"secretKeyRef": {"name": ref.secret, "key": ref.key}}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": spec.litellm.deployment_name, "namespace": spec.litellm.namespace},
        "spec": {"template": {"spec": {"containers": [{"name": spec.litellm.deployment_container, "env": [env]}]}}},
    }
