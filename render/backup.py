"""Backups and point-in-time restore of the CNPG cluster through the Barman Cloud plugin (REFERENCE §5):
`ObjectStore`s, the Cluster's `spec.plugins`, `bootstrap.recovery` with its `externalClusters[]` entry, and a
`ScheduledBackup`. The in-tree `spec.backup.barmanObjectStore` is deprecated since CNPG 1.26, so never rendered.
"""

from __future__ import annotations

from config import Spec, names
from config.model import ObjectStoreLocation
from render.common import Document, metadata

BARMAN_API = "barmancloud.cnpg.io/v1"
CNPG_API = "postgresql.cnpg.io/v1"
COMPONENT = "database"


def _credentials(location: ObjectStoreLocation) -> Document:
    secret = location.credentials_secret

    def ref(key: str) -> Document:
        return {"name": secret, "key": key}

    if location.kind == "s3":
        return {
            "s3Credentials": {
                "accessKeyId": ref(names.S3_ACCESS_KEY_ID_KEY),
                "secretAccessKey": ref(names.S3_SECRET_ACCESS_KEY_KEY),
            }
        }
    if location.kind == "gs":
        return {"googleCredentials": {"applicationCredentials": ref(names.GCS_CREDENTIALS_KEY)}}
    return {"azureCredentials": {"connectionString": ref(names.AZURE_CONNECTION_STRING_KEY)}}


def _configuration(location: ObjectStoreLocation) -> Document:
    out: Document = {"destinationPath": location.destination}
    if location.endpoint is not None:
        out["endpointURL"] = location.endpoint
    out.update(_credentials(location))
    return out


def object_stores(spec: Spec) -> list[Document]:
    """The ObjectStore archived to (with retention), and the one a restore reads from: two objects even when
    they share a bucket, so the archive's settings can never point the restore elsewhere or back."""
    db = spec.database
    out: list[Document] = []
    if db.backup is not None:
        configuration = _configuration(db.backup.location)
        if db.backup.wal_compression is not None:
            configuration["wal"] = {"compression": db.backup.wal_compression}
        if db.backup.data_compression is not None:
            configuration["data"] = {"compression": db.backup.data_compression}
        out.append(
            {
                "apiVersion": BARMAN_API,
                "kind": "ObjectStore",
                "metadata": metadata(spec, names.backup_object_store_name(db.cluster.name), COMPONENT),
                "spec": {"configuration": configuration, "retentionPolicy": db.backup.retention},
            }
        )
    if db.restore is not None:
        out.append(
            {
                "apiVersion": BARMAN_API,
                "kind": "ObjectStore",
                "metadata": metadata(spec, names.recovery_object_store_name(db.cluster.name), COMPONENT),
                "spec": {"configuration": _configuration(db.restore.location)},
            }
        )
    return out


def cluster_fields(spec: Spec) -> Document:
    """What the Cluster's spec gains: the WAL archiver plugin, and the recovery source."""
    db = spec.database
    out: Document = {}
    if db.backup is not None:
        out["plugins"] = [
            {
                "name": names.BARMAN_CLOUD_PLUGIN,
                "isWALArchiver": True,
                "parameters": {
                    "barmanObjectName": names.backup_object_store_name(db.cluster.name),
                    "serverName": db.backup.location.server_name,
                },
            }
        ]
    if db.restore is not None:
        out["externalClusters"] = [
            {
                "name": names.RECOVERY_SOURCE,
                "plugin": {
                    "name": names.BARMAN_CLOUD_PLUGIN,
                    "parameters": {
                        "barmanObjectName": names.recovery_object_store_name(db.cluster.name),
                        "serverName": db.restore.location.server_name,
                    },
                },
            }
        ]
    return out


def recovery(spec: Spec) -> Document | None:
    """`bootstrap.recovery`, or None for a new, empty cluster (initdb). The database, owner and secret keep the
    server's credentials working on the restored cluster."""
    db = spec.database
    if db.restore is None:
        return None
    out: Document = {"source": names.RECOVERY_SOURCE, "database": db.name, "owner": db.owner}
    if db.credentials_declared:
        out["secret"] = {"name": db.credentials_secret}
    if db.restore.target_time is not None:
        out["recoveryTarget"] = {"targetTime": db.restore.target_time}
    return out


def scheduled_backup(spec: Spec) -> list[Document]:
    db = spec.database
    if db.backup is None:
        return []
    return [
        {
            "apiVersion": CNPG_API,
            "kind": "ScheduledBackup",
            "metadata": metadata(spec, names.backup_object_store_name(db.cluster.name), COMPONENT),
            "spec": {
                "cluster": {"name": db.cluster.name},
                "schedule": db.backup.schedule,
                "method": "plugin",
                "pluginConfiguration": {"name": names.BARMAN_CLOUD_PLUGIN},
                # A base backup at once: WAL is only restorable from a base backup, so a new cluster (or a
                # restored one, on its new timeline) is covered from its first minutes, not from 03:00.
                "immediate": True,
                "backupOwnerReference": "self",
            },
        }
    ]
