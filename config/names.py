"""Every name that render and serve must agree on, derived in one place.

A Deployment rendered by `render` and a server started by `serve` meet only through these names: the env
var a secret reference becomes, the path the spec is mounted at, the service URL LiteLLM calls, the id of
each store. Changing one here changes both sides at once.
"""

from __future__ import annotations

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


def database_object_name(cluster_name: str, database: str) -> str:
    """Name of the CNPG `Database` object: a DNS-1123 subdomain, where a PostgreSQL name may hold `_`."""
    suffix = re.sub(r"[^a-z0-9]+", "-", database.lower()).strip("-") or "database"
    return f"{cluster_name}-{suffix}"
