"""The server's objects: ConfigMap (the spec), Deployment, Service, NetworkPolicy, PDB and PodMonitor."""

from __future__ import annotations

import hashlib
import json

from config import Spec, names
from render import sources
from render.common import HTTP_PORT_NAME, Document, metadata, selector_labels
from render.database import resources

COMPONENT = "server"
CONTAINER_NAME = "server"
# Numeric, not a name: kubelet can only prove runAsNonRoot for a numeric uid. The Dockerfile uses the same.
RUN_AS_UID = 10001
RUN_AS_GID = 10001
CHECKSUM_ANNOTATION = "checksum/config"
TMP_SIZE_LIMIT = "256Mi"

# checkov skips, each for a reason that holds for every spec. Added only when the check would fail.
SKIP_SECRETS_AS_ENV = (
    "CKV_K8S_35=the server and libpq read each secret from the env var config.names derives "
    "(PGPASSWORD, VECTORSTORE_API_KEY_*); values come from secretKeyRef and never appear in a manifest"
)
SKIP_CPU_LIMIT = (
    "CKV_K8S_11=no CPU limit by default: CFS throttling adds tail latency to searches; "
    "set server.resources.limits.cpu in the spec to add one"
)
SKIP_DIGEST = (
    "CKV_K8S_43=server.image in the spec is pinned by tag, which the spec validator requires; "
    "write image:tag@sha256:... in the spec to pin by digest"
)
SKIP_DIGEST_GIT_SYNC = (
    "CKV_K8S_43=server.image and sync.git_sync_image in the spec are pinned by tag, which the spec validator "
    "requires; write image:tag@sha256:... in the spec to pin them by digest"
)


def config_map_data(spec: Spec) -> dict[str, str]:
    # The spec exactly as written: it holds secret references only, by construction of the validator.
    return {names.SPEC_FILE_NAME: spec.source_text}


def config_checksum(spec: Spec) -> str:
    """sha256 of the ConfigMap's data, canonical JSON: any change to the spec changes it and rolls the pods."""
    canonical = json.dumps(config_map_data(spec), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def config_map(spec: Spec) -> Document:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(spec, names.config_map_name(spec.name), COMPONENT),
        "data": config_map_data(spec),
    }


def env(spec: Spec) -> list[Document]:
    db = spec.database
    out: list[Document] = [
        {"name": "PGHOST", "value": db.cluster.rw_host},
        {"name": "PGPORT", "value": str(names.DATABASE_PORT)},
        {"name": "PGDATABASE", "value": db.name},
    ]
    if db.read_replicas:
        # Searches' second target: only the host differs, so port, database and credentials come from the
        # same PG* variables as the primary's (libpq fills in what the connection string leaves out).
        out.append({"name": names.DATABASE_READ_URL_ENV, "value": names.database_read_url(db.cluster.name)})
    for ref in spec.secret_refs():
        out.append({"name": ref.env, "valueFrom": {"secretKeyRef": {"name": ref.secret, "key": ref.key}}})
    out += sources.env(spec)
    return out


def _skips(spec: Spec) -> dict[str, str]:
    reasons = [SKIP_SECRETS_AS_ENV]
    if "cpu" not in spec.server.resources.limits:
        reasons.append(SKIP_CPU_LIMIT)
    git_sync_by_tag = bool(sources.git_sources(spec)) and "@sha256:" not in spec.sync.git_sync_image
    if git_sync_by_tag:
        reasons.append(SKIP_DIGEST_GIT_SYNC)
    elif "@sha256:" not in spec.server.image:
        reasons.append(SKIP_DIGEST)
    return {f"checkov.io/skip{index}": reason for index, reason in enumerate(reasons, start=1)}


def _probe(path: str, *, failure_threshold: int) -> Document:
    return {
        "httpGet": {"path": path, "port": HTTP_PORT_NAME},
        "periodSeconds": 10,
        "timeoutSeconds": 3,
        "failureThreshold": failure_threshold,
    }


SECURITY_CONTEXT: Document = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_UID,
    "runAsGroup": RUN_AS_GID,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def deployment(spec: Spec) -> Document:
    server = spec.server
    container: Document = {
        "name": CONTAINER_NAME,
        "image": server.image,
        "imagePullPolicy": "Always",
        "command": ["vectorstore", "serve", "--spec", names.SPEC_MOUNT_PATH, "--host", "0.0.0.0"],  # noqa: S104
        "ports": [{"name": HTTP_PORT_NAME, "containerPort": server.port, "protocol": "TCP"}],
        "env": env(spec),
        "resources": resources(server.resources),
        # Liveness is only "the process answers": a database outage must make the pod unready, not restart it.
        "livenessProbe": _probe(names.HEALTH_PATH, failure_threshold=6),
        "readinessProbe": _probe(names.READY_PATH, failure_threshold=3),
        "securityContext": SECURITY_CONTEXT,
        "volumeMounts": [
            {"name": "spec", "mountPath": names.SPEC_MOUNT_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
            *sources.server_mounts(spec),
        ],
    }
    pod: Document = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_UID,
            "runAsGroup": RUN_AS_GID,
            "fsGroup": RUN_AS_GID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container, *sources.git_sync_containers(spec, SECURITY_CONTEXT)],
        "volumes": [
            {"name": "spec", "configMap": {"name": names.config_map_name(spec.name)}},
            # The only writable path (HOME and caches point here); the server spools nothing to disk, so a
            # small bound keeps a runaway writer from filling the node.
            {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
            *sources.volumes(spec),
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(spec, spec.name, COMPONENT, image=server.image, annotations=_skips(spec)),
        "spec": {
            "replicas": server.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector_labels(spec)},
            "template": {
                "metadata": {
                    "labels": metadata(spec, spec.name, COMPONENT, image=server.image)["labels"],
                    "annotations": {CHECKSUM_ANNOTATION: config_checksum(spec)},
                },
                "spec": pod,
            },
        },
    }


def service(spec: Spec) -> Document:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(spec, spec.name, COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(spec),
            "ports": [
                {"name": HTTP_PORT_NAME, "port": spec.server.port, "targetPort": HTTP_PORT_NAME, "protocol": "TCP"}
            ],
        },
    }


def network_policy(spec: Spec) -> Document:
    """Only the LiteLLM pods, in their namespace, may open the server's port; everything else is denied."""
    peer: Document = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": spec.litellm.namespace}},
        "podSelector": {"matchLabels": dict(sorted(spec.litellm.pod_selector.items()))},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(spec, spec.name, COMPONENT),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(spec)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [peer], "ports": [{"protocol": "TCP", "port": spec.server.port}]}],
        },
    }


def pod_disruption_budget(spec: Spec) -> Document:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(spec, spec.name, COMPONENT),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(spec)}},
    }


def pod_monitor(spec: Spec) -> Document:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": metadata(spec, spec.name, COMPONENT),
        "spec": {
            "selector": {"matchLabels": selector_labels(spec)},
            "podMetricsEndpoints": [{"port": HTTP_PORT_NAME, "path": names.METRICS_PATH}],
        },
    }


def documents(spec: Spec) -> list[Document]:
    out = [config_map(spec), deployment(spec), service(spec), network_policy(spec)]
    if spec.server.replicas > 1:
        out.append(pod_disruption_budget(spec))
    if spec.server.pod_monitor:
        out.append(pod_monitor(spec))
    return out
