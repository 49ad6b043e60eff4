"""What the server Deployment gains from `stores[].sources`: read-only volumes for `path` sources that declare one,
and for each `git` source a hardened git-sync sidecar writing into an emptyDir the server reads read-only.

The server finds each checkout at `config.names.git_checkout_path(...)`, under the directory render passes in
`VECTORSTORE_GIT_CHECKOUTS`; without that variable (a laptop) it fetches with `git` itself. Same spec, both places.
"""

from __future__ import annotations

from collections.abc import Iterator

from config import Spec, Store, names
from config.model import GitSource, PathSource, Source
from render.common import Document

# Pinned in the spec (sync.git_sync_image, default registry.k8s.io/git-sync/git-sync:v4.4.0). v4 flags:
# --repo --ref --root --link --period --depth --max-failures --http-bind --stale-worktree-timeout.
GIT_SYNC_FIRST_PORT = 9101
"""git-sync's HTTP endpoint (probes); one port per sidecar, all in the pod's one network namespace."""
GIT_CHECKOUT_SIZE_LIMIT = "1Gi"
GIT_SYNC_RESOURCES: Document = {
    "requests": {"cpu": "10m", "memory": "32Mi"},
    "limits": {"cpu": "500m", "memory": "256Mi"},
}
GIT_SYNC_TIMEOUT = "5m"
GIT_SYNC_STALE_WORKTREE = "10m"
"""How long git-sync keeps the previous checkout after a new one: a sync reading it is never cut short."""


def _sources(spec: Spec) -> Iterator[tuple[Store, Source]]:
    for store in spec.stores:
        for source in store.sources:
            yield store, source


def git_sources(spec: Spec) -> list[tuple[Store, Source, GitSource]]:
    return [
        (store, source, source.location) for store, source in _sources(spec) if isinstance(source.location, GitSource)
    ]


def env(spec: Spec) -> list[Document]:
    """Tells the server that git-sync keeps the checkouts (and where), when there is any git source."""
    if not git_sources(spec):
        return []
    return [{"name": names.GIT_CHECKOUTS_ENV, "value": names.GIT_CHECKOUTS_DIR}]


def volumes(spec: Spec) -> list[Document]:
    out: list[Document] = []
    for store, source in _sources(spec):
        location = source.location
        if isinstance(location, PathSource) and location.volume is not None:
            volume = location.volume
            name = names.source_volume_name(store.id, source.name)
            if volume.kind == "config_map":
                out.append({"name": name, "configMap": {"name": volume.name}})
            elif volume.kind == "pvc":
                out.append({"name": name, "persistentVolumeClaim": {"claimName": volume.name, "readOnly": True}})
            else:
                out.append({"name": name, "emptyDir": {"sizeLimit": volume.size_limit}})
    for store, source, _ in git_sources(spec):
        out.append(
            {"name": names.git_volume_name(store.id, source.name), "emptyDir": {"sizeLimit": GIT_CHECKOUT_SIZE_LIMIT}}
        )
    return out


def server_mounts(spec: Spec) -> list[Document]:
    """Every source volume, mounted read-only into the server: it reads sources, it never writes them."""
    out: list[Document] = []
    for store, source in _sources(spec):
        location = source.location
        if isinstance(location, PathSource) and location.volume is not None:
            name = names.source_volume_name(store.id, source.name)
            out.append({"name": name, "mountPath": location.path.rstrip("/") or "/", "readOnly": True})
    for store, source, _ in git_sources(spec):
        directory = names.git_checkout_volume_dir(names.GIT_CHECKOUTS_DIR, store.id, source.name)
        out.append({"name": names.git_volume_name(store.id, source.name), "mountPath": directory, "readOnly": True})
    return out


def _period(spec: Spec) -> str:
    seconds = int(spec.sync.interval_seconds)
    # With the schedule off the server reads sources at startup only; git-sync keeps the checkout fresh for it.
    return f"{seconds}s" if seconds > 0 else "1h"


def _ports(spec: Spec, count: int) -> list[int]:
    ports: list[int] = []
    candidate = GIT_SYNC_FIRST_PORT
    while len(ports) < count:
        if candidate != spec.server.port:
            ports.append(candidate)
        candidate += 1
    return ports


def _credentials(location: GitSource) -> list[Document]:
    """git-sync reads a private repository's username and token from these variables, out of the Secret."""
    if location.credentials is None:
        return []
    return [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.secret, "key": ref.key}}}
        for name, ref in (
            ("GITSYNC_USERNAME", location.credentials.username),
            ("GITSYNC_PASSWORD", location.credentials.password),
        )
    ]


def git_sync_containers(spec: Spec, security_context: Document) -> list[Document]:
    git = git_sources(spec)
    containers: list[Document] = []
    for (store, source, location), port in zip(git, _ports(spec, len(git)), strict=True):
        directory = names.git_checkout_volume_dir(names.GIT_CHECKOUTS_DIR, store.id, source.name)
        probe: Document = {"tcpSocket": {"port": port}, "periodSeconds": 30, "timeoutSeconds": 3, "failureThreshold": 3}
        containers.append(
            {
                "name": names.git_sync_container_name(store.id, source.name),
                "image": spec.sync.git_sync_image,
                "imagePullPolicy": "Always",
                "args": [
                    f"--repo={location.repo}",
                    f"--ref={location.ref}",
                    f"--root={directory}/{names.GIT_SYNC_ROOT}",
                    f"--link={names.GIT_SYNC_LINK}",
                    f"--period={_period(spec)}",
                    "--depth=1",
                    # Keep trying through outages: the server reports the source as failed meanwhile, and a
                    # crash-looping sidecar would make the whole pod unready.
                    "--max-failures=-1",
                    f"--sync-timeout={GIT_SYNC_TIMEOUT}",
                    f"--stale-worktree-timeout={GIT_SYNC_STALE_WORKTREE}",
                    f"--http-bind=:{port}",
                    # With credentials, a redirect is never followed: the token is for this repository's origin
                    # only (docs/sources.md, "What a source can reach").
                    *(["--git-config=http.followRedirects:false"] if location.credentials is not None else []),
                ],
                # git-sync writes its git config under HOME, and git its temporary files under TMPDIR: the
                # volume's top, outside --root (which git-sync empties), on a read-only root file system.
                "env": [
                    {"name": "HOME", "value": directory},
                    {"name": "TMPDIR", "value": directory},
                    *_credentials(location),
                ],
                "resources": GIT_SYNC_RESOURCES,
                # TCP, not git-sync's HTTP `/` (5xx until the first sync): an unreachable repository must not make
                # the pod unready; the server's status endpoint and metrics report it instead.
                "livenessProbe": probe,
                "readinessProbe": probe,
                "securityContext": security_context,
                "volumeMounts": [{"name": names.git_volume_name(store.id, source.name), "mountPath": directory}],
            }
        )
    return containers
