"""Spec in, files out: one YAML file per object, a kustomization.yaml listing them, litellm.yml and the patch for
LiteLLM's Deployment.

Pure and deterministic: the same spec gives the same bytes, with no timestamps or environment in them.
"""

from __future__ import annotations

from config import Spec
from render import alerts, dashboard, database, litellm, secrets, server
from render.common import Document
from render.yamlout import dump

KUSTOMIZATION = "kustomization.yaml"
LITELLM_FILE = "litellm.yml"
LITELLM_PATCH_FILE = "litellm-deployment-patch.yaml"
NOT_RESOURCES = frozenset({KUSTOMIZATION, LITELLM_FILE, LITELLM_PATCH_FILE})
"""Files that are no object of this directory: litellm.yml is LiteLLM's config, the patch is for LiteLLM's
Deployment (applied where LiteLLM is deployed)."""


def documents(spec: Spec) -> list[Document]:
    """Every Kubernetes object, in apply order (secrets and database before the server that needs them)."""
    return [
        *secrets.documents(spec),
        *database.documents(spec),
        *server.documents(spec),
        *alerts.documents(spec),
        *dashboard.documents(spec),
    ]


def file_name(document: Document) -> str:
    return f"{document['kind'].lower()}-{document['metadata']['name']}.yaml"


def kustomization(resources: list[str]) -> Document:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
    }


def render_files(spec: Spec) -> dict[str, str]:
    """File name -> content, sorted by name. litellm.yml and LiteLLM's Deployment patch are not this
    directory's objects, so not resources."""
    objects = documents(spec)
    files = {file_name(document): dump(document) for document in objects}
    if len(files) != len(objects) or set(files) & NOT_RESOURCES:
        raise AssertionError("two rendered objects share a file name")
    files[KUSTOMIZATION] = dump(kustomization(sorted(files)))
    files[LITELLM_FILE] = dump(litellm.document(spec), header=litellm.header(spec))
    files[LITELLM_PATCH_FILE] = dump(litellm.deployment_patch(spec), header=litellm.deployment_patch_header(spec))
    return dict(sorted(files.items()))
