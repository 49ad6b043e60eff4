"""Every name that render and serve must agree on, derived in one place.

A Deployment rendered by `render` and a server started by `serve` meet only through these names: the env
var a secret reference becomes, the path the spec is mounted at, the service URL LiteLLM calls, the id of
each store. Changing one here changes both sides at once.
"""

from __future__ import annotations

import hashlib
import re
import uuid

# Fixed namespace for store ids derived from names: uuid5(NAMESPACE_DNS, "stores.vectorstore.dev").
# Never change it: every derived id in every deployment depends on it.
STORE_ID_NAMESPACE = uuid.UUID("037f31bf-dfba-546d-8650-6483a89a4efe")

SPEC_MOUNT_DIR = "/etc/vectorstore"
SPEC_FILE_NAME = "stack.yaml"
SPEC_MOUNT_PATH = f"{SPEC_MOUNT_DIR}/{SPEC_FILE_NAME}"
SPEC_ENV = "VECTORSTORE_SPEC"
EMBEDDING_API_KEY_ENV = "VECTORSTORE_EMBEDDING_API_KEY"
RERANK_API_KEY_ENV = "VECTORSTORE_RERANK_API_KEY"
API_KEY_ENV_PREFIX = "VECTORSTORE_API_KEY_"
# libpq reads these; CNPG's basic-auth secret has exactly the keys `username` and `password`.
DATABASE_USERNAME_KEY = "username"
DATABASE_PASSWORD_KEY = "password"  # noqa: S105 - the key name CNPG uses, not a value
DATABASE_PORT = 5432
# Where the server finds the replicas: a libpq connection string whose settings override the primary's (so
# `host=<cluster>-ro` alone means the same database, user and password on the replicas).
DATABASE_READ_URL_ENV = "DATABASE_READ_URL"
HEALTH_PATH = "/health"
READY_PATH = "/ready"
METRICS_PATH = "/metrics"


def derived_store_id(name: str) -> str:
    """The id of a store declared without one: the same for the same name, on every machine, forever."""
    return str(uuid.uuid5(STORE_ID_NAMESPACE, name))


def api_key_env(key_name: str) -> str:
    """Env var that holds the bearer key named `key_name` in auth.keys."""
    return API_KEY_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", key_name.upper())


def service_host(app_name: str, namespace: str) -> str:
    return f"{app_name}.{namespace}.svc.cluster.local"


def service_url(app_name: str, namespace: str, port: int) -> str:
    """Base URL LiteLLM calls, without /v1: LiteLLM appends the path itself (REFERENCE §2)."""
    return f"http://{service_host(app_name, namespace)}:{port}"


def database_rw_host(cluster_name: str) -> str:
    """CNPG's read-write service for the primary; the server lives in the same namespace."""
    return f"{cluster_name}-rw"


def database_ro_host(cluster_name: str) -> str:
    """CNPG's read-only service: it balances connections over the streaming replicas (never the primary)."""
    return f"{cluster_name}-ro"


def database_read_url(cluster_name: str) -> str:
    """The value of DATABASE_READ_URL in the Deployment: only the host differs from the primary's settings."""
    return f"host={database_ro_host(cluster_name)}"


def config_map_name(app_name: str) -> str:
    return f"{app_name}-spec"


def dashboard_config_map_name(app_name: str) -> str:
    return f"{app_name}-dashboard"


def prometheus_job(app_name: str, namespace: str) -> str:
    """The `job` label the Prometheus Operator gives the targets of the rendered PodMonitor (same name as the
    server's objects): `<namespace>/<PodMonitor name>`. The alerts and the dashboard select on it."""
    return f"{namespace}/{app_name}"


CONSOLE_PATH = "/console"
CONSOLE_ASSETS = {
    f"{CONSOLE_PATH}/": "index.html",
    f"{CONSOLE_PATH}/console.js": "console.js",
    f"{CONSOLE_PATH}/console.css": "console.css",
    f"{CONSOLE_PATH}/favicon.svg": "favicon.svg",
}
"""The console's files by path (vectorstore/console/static/): public like /health, they hold no data."""


def database_object_name(cluster_name: str, database: str) -> str:
    """Name of the CNPG `Database` object: a DNS-1123 subdomain, where a PostgreSQL name may hold `_`."""
    suffix = re.sub(r"[^a-z0-9]+", "-", database.lower()).strip("-") or "database"
    return f"{cluster_name}-{suffix}"


# --- declared documents (stores[].sources, docs/sources.md) ---------------------------------------------------

# The keys a `s3.credentials` Secret must hold.
S3_ACCESS_KEY_ID_KEY = "access_key_id"
S3_SECRET_ACCESS_KEY_KEY = "secret_access_key"  # noqa: S105 - a key name, not a value
# The keys a `git.credentials` Secret must hold (git-sync reads them as GITSYNC_USERNAME / GITSYNC_PASSWORD).
GIT_USERNAME_KEY = "username"
GIT_PASSWORD_KEY = "password"  # noqa: S105 - a key name, not a value
SOURCE_SECRET_ENV_PREFIX = "VECTORSTORE_SOURCE_"  # noqa: S105 - an env var prefix, not a value
SOURCE_FILE_OWNER_PREFIX = "source:"
# Where render mounts the git-sync checkouts, and the env var that tells the server to read them there instead
# of fetching with `git` itself: the same spec works on a laptop (no variable) and in the cluster.
GIT_CHECKOUTS_ENV = "VECTORSTORE_GIT_CHECKOUTS"
GIT_CHECKOUTS_DIR = "/var/lib/vectorstore/git"
GIT_SYNC_ROOT = "root"
"""Subdirectory of a checkout volume that git-sync owns (`--root`, which it empties at start); the volume's top
is git-sync's HOME (its git config)."""
GIT_SYNC_LINK = "current"
"""git-sync's `--link`: a symlink to the worktree of the synced commit, swapped atomically."""


def source_secret_env(secret: str, key: str) -> str:
    """Env var holding key `key` of Secret `secret` for a source (S3 credentials)."""
    return SOURCE_SECRET_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", f"{secret}_{key}".upper())


def source_file_owner(source: str) -> str:
    """`owner` of the Files a sync creates: keys limited to some stores never see them in /files."""
    return SOURCE_FILE_OWNER_PREFIX + source


def source_hash(store_id: str, source: str) -> str:
    """12 hex characters naming one source of one store in volume and container names (DNS labels)."""
    return hashlib.sha256(f"{store_id}\0{source}".encode()).hexdigest()[:12]


def source_volume_name(store_id: str, source: str) -> str:
    return f"source-{source_hash(store_id, source)}"


def git_volume_name(store_id: str, source: str) -> str:
    return f"git-{source_hash(store_id, source)}"


def git_sync_container_name(store_id: str, source: str) -> str:
    return f"git-sync-{source_hash(store_id, source)}"


def git_checkout_volume_dir(root: str, store_id: str, source: str) -> str:
    """Where a git source's volume is mounted, in the server and in its git-sync sidecar."""
    return f"{root.rstrip('/')}/{source_hash(store_id, source)}"


def git_checkout_path(root: str, store_id: str, source: str) -> str:
    """The directory the server reads for a git source when git-sync keeps the checkout (before `git.path`)."""
    return f"{git_checkout_volume_dir(root, store_id, source)}/{GIT_SYNC_ROOT}/{GIT_SYNC_LINK}"


# --- backups and restore (database.backup / database.restore, docs/operations.md) ----------------------------

BARMAN_CLOUD_PLUGIN = "barman-cloud.cloudnative-pg.io"
RECOVERY_SOURCE = "origin"
"""The `externalClusters[]` entry a restored cluster bootstraps from."""
# The keys a backup credentials Secret holds, per object store (S3 shares the sources' key names).
GCS_CREDENTIALS_KEY = "application_credentials"
AZURE_CONNECTION_STRING_KEY = "connection_string"


def backup_object_store_name(cluster_name: str) -> str:
    """The ObjectStore the cluster archives to; also its ScheduledBackup's name."""
    return f"{cluster_name}-backup"


def recovery_object_store_name(cluster_name: str) -> str:
    """The ObjectStore a restored cluster reads its backup from (never the one it archives to)."""
    return f"{cluster_name}-recovery"
