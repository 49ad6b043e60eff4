"""Where referenced Secrets come from: a OnePasswordItem, an ExternalSecret, or nothing (`existing`).

Only names and keys are rendered; a secret value never passes through the renderer.
"""

from __future__ import annotations

from config import Spec
from config.model import SecretSource
from render.common import Document, metadata

BASIC_AUTH = "kubernetes.io/basic-auth"


def referenced_keys(spec: Spec, secret: str) -> list[str]:
    """Every key of `secret` the server (or, for backups, the Barman Cloud plugin) reads, sorted, each once."""
    keys = {ref.key for ref in spec.secret_refs() if ref.secret == secret}
    return sorted(keys | {key for name, key in spec.object_store_secret_keys() if name == secret})


def _is_database_secret(spec: Spec, source: SecretSource) -> bool:
    return source.name == spec.database.credentials_secret


def onepassword_item(spec: Spec, source: SecretSource) -> Document:
    doc: Document = {
        "apiVersion": "onepassword.com/v1",
        "kind": "OnePasswordItem",
        "metadata": metadata(spec, source.name, "secrets"),
    }
    if _is_database_secret(spec, source):
        # CNPG's initdb secret must be basic-auth; the operator copies this type onto the Secret it makes.
        doc["type"] = BASIC_AUTH
    doc["spec"] = {"itemPath": source.item_path}
    return doc


def external_secret(spec: Spec, source: SecretSource) -> Document:
    target: Document = {"name": source.name, "creationPolicy": "Owner"}
    if _is_database_secret(spec, source):
        # A template with only a type keeps the fetched data as it is and sets the Secret's type.
        target["template"] = {"type": BASIC_AUTH}
    body: Document = {
        "refreshInterval": source.refresh_interval,
        "secretStoreRef": {"name": source.store_name, "kind": source.store_kind},
        "target": target,
    }
    keys = referenced_keys(spec, source.name)
    if keys:
        body["data"] = [{"secretKey": key, "remoteRef": {"key": source.remote_key, "property": key}} for key in keys]
    else:
        # Listed but referenced by nothing: fetch the whole remote entry rather than an empty Secret.
        body["dataFrom"] = [{"extract": {"key": source.remote_key}}]
    return {
        "apiVersion": "external-secrets.io/v1",
        "kind": "ExternalSecret",
        "metadata": metadata(spec, source.name, "secrets"),
        "spec": body,
    }


def documents(spec: Spec) -> list[Document]:
    out: list[Document] = []
    for source in sorted(spec.secrets, key=lambda item: item.name):
        if source.provider == "onepassword":
            out.append(onepassword_item(spec, source))
        elif source.provider == "external-secrets":
            out.append(external_secret(spec, source))
    return out
