"""The CloudNativePG Cluster (and optional Database) the stores live in."""

from __future__ import annotations

from config import Spec, names
from config.model import Resources
from render import backup
from render.common import Document, metadata

CNPG_API = "postgresql.cnpg.io/v1"
# Runs as superuser in the application database right after initdb: the reason the old setup needed
# enableSuperuserAccess and an init container is gone.
CREATE_EXTENSION_SQL = "CREATE EXTENSION IF NOT EXISTS vector"


def resources(value: Resources) -> Document:
    out: Document = {}
    if value.requests:
        out["requests"] = dict(sorted(value.requests.items()))
    if value.limits:
        out["limits"] = dict(sorted(value.limits.items()))
    return out


def cluster(spec: Spec) -> Document:
    db = spec.database
    cnpg = db.cluster
    storage: Document = {"size": cnpg.storage_size}
    if cnpg.storage_class is not None:
        storage["storageClass"] = cnpg.storage_class
    initdb: Document = {"database": db.name, "owner": db.owner}
    if db.credentials_declared:
        initdb["secret"] = {"name": db.credentials_secret}
    initdb["postInitApplicationSQL"] = [CREATE_EXTENSION_SQL]
    body: Document = {
        "instances": cnpg.instances,
        "imageName": cnpg.image,
        "storage": storage,
    }
    cluster_resources = resources(cnpg.resources)
    if cluster_resources:
        body["resources"] = cluster_resources
    if cnpg.parameters:
        # The model already turned every value into a string, as CNPG requires.
        body["postgresql"] = {"parameters": dict(sorted(cnpg.parameters.items()))}
    recovery = backup.recovery(spec)
    body["bootstrap"] = {"recovery": recovery} if recovery is not None else {"initdb": initdb}
    body.update(backup.cluster_fields(spec))
    return {
        "apiVersion": CNPG_API,
        "kind": "Cluster",
        "metadata": metadata(spec, cnpg.name, "database", image=cnpg.image),
        "spec": body,
    }


def database(spec: Spec) -> Document:
    """A CNPG `Database` that keeps the `vector` extension present (CNPG >= 1.26), beyond initdb's one-off SQL."""
    db = spec.database
    return {
        "apiVersion": CNPG_API,
        "kind": "Database",
        "metadata": metadata(spec, names.database_object_name(db.cluster.name, db.name), "database"),
        "spec": {
            "name": db.name,
            "owner": db.owner,
            "cluster": {"name": db.cluster.name},
            "extensions": [{"name": "vector", "ensure": "present"}],
        },
    }


def documents(spec: Spec) -> list[Document]:
    """The ObjectStores the Cluster references come first, its ScheduledBackup after it."""
    out = [*backup.object_stores(spec), cluster(spec)]
    if spec.database.cluster.database_resource:
        out.append(database(spec))
    return out + backup.scheduled_backup(spec)
