"""Backups and restore (database.backup / database.restore): the objects reference each other correctly, the
restore never archives over its source, credentials are only ever Secret references, and no rendered
NetworkPolicy keeps the database pods from reaching the object store. (The CRD schemas and checkov run over
these objects in test_render_schemas.py and test_render_checkov.py, like every other case.)"""

from __future__ import annotations

from typing import Any

from config import Spec, names

PLUGIN = "barman-cloud.cloudnative-pg.io"


def _named(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def test_backup_objects_reference_each_other(case_spec: Spec, objects: list[dict[str, Any]]) -> None:
    db = case_spec.database
    cluster = _named(objects, "Cluster")[db.cluster.name]["spec"]
    stores = _named(objects, "ObjectStore")
    scheduled = _named(objects, "ScheduledBackup")
    if db.backup is None:
        assert "plugins" not in cluster and not scheduled
        assert names.backup_object_store_name(db.cluster.name) not in stores
    else:
        (plugin,) = cluster["plugins"]
        assert plugin["name"] == PLUGIN and plugin["isWALArchiver"] is True
        store = stores[plugin["parameters"]["barmanObjectName"]]["spec"]
        assert store["configuration"]["destinationPath"] == db.backup.location.destination
        assert store["retentionPolicy"] == db.backup.retention
        assert plugin["parameters"]["serverName"] == db.backup.location.server_name
        (backup,) = scheduled.values()
        assert backup["spec"]["cluster"] == {"name": db.cluster.name}
        assert backup["spec"]["method"] == "plugin"
        assert backup["spec"]["pluginConfiguration"] == {"name": PLUGIN}
        assert len(backup["spec"]["schedule"].split()) == 6 or backup["spec"]["schedule"].startswith("@")
        assert "backup" not in cluster, "the deprecated in-tree barmanObjectStore is never rendered"
    if db.restore is None:
        assert "externalClusters" not in cluster and "recovery" not in cluster["bootstrap"]
    else:
        recovery = cluster["bootstrap"]["recovery"]
        assert "initdb" not in cluster["bootstrap"]
        (origin,) = [item for item in cluster["externalClusters"] if item["name"] == recovery["source"]]
        assert origin["plugin"]["name"] == PLUGIN and "isWALArchiver" not in origin["plugin"]
        source = stores[origin["plugin"]["parameters"]["barmanObjectName"]]["spec"]["configuration"]
        assert source["destinationPath"] == db.restore.location.destination
        if db.restore.target_time is not None:
            assert recovery["recoveryTarget"] == {"targetTime": db.restore.target_time}
        if db.backup is not None:
            # What the restore reads from and what it archives to are never the same folder.
            archive = stores[cluster["plugins"][0]["parameters"]["barmanObjectName"]]["spec"]["configuration"]
            assert (archive["destinationPath"], cluster["plugins"][0]["parameters"]["serverName"]) != (
                source["destinationPath"],
                origin["plugin"]["parameters"]["serverName"],
            )


def test_object_store_credentials_are_secret_references(case_spec: Spec, objects: list[dict[str, Any]]) -> None:
    for store in _named(objects, "ObjectStore").values():
        configuration = store["spec"]["configuration"]
        credentials = [value for key, value in configuration.items() if key.endswith("Credentials")]
        assert len(credentials) == 1
        for ref in credentials[0].values():
            assert set(ref) == {"name", "key"}, "a credential is a secretKeyRef, never a value"


def test_no_network_policy_cuts_the_database_off_from_its_object_store(
    case_spec: Spec, objects: list[dict[str, Any]]
) -> None:
    """The only rendered NetworkPolicy selects the server's pods, for ingress: the database pods' egress (WAL to
    the object store) is not restricted by anything rendered. If a policy ever restricts their egress, it must
    allow the object store: this test is where that gets decided."""
    for policy in _named(objects, "NetworkPolicy").values():
        selected = policy["spec"]["podSelector"].get("matchLabels", {})
        restricts_egress = "Egress" in policy["spec"].get("policyTypes", [])
        selects_database = selected.get("cnpg.io/cluster") == case_spec.database.cluster.name or not selected
        assert not (restricts_egress and selects_database), policy["metadata"]["name"]
        assert selected.get("app.kubernetes.io/name") == "vectorstore"
