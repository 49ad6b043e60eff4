"""The typed spec. Built only from data that already passed the schema and the semantic checks.

Defaults live in schema.json alone (`apply_defaults` fills them in), so the schema editors see and the
model the code uses can't disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from config import names

Scope = Literal["read", "write"]
Distance = Literal["cosine", "l2", "inner_product"]
SecretProvider = Literal["existing", "onepassword", "external-secrets"]

# pgvector: HNSW indexes `vector` up to 2,000 dimensions and `halfvec` up to 4,000 (REFERENCE §6).
VECTOR_MAX_INDEXED_DIMENSIONS = 2000
HALFVEC_MAX_INDEXED_DIMENSIONS = 4000

VectorType = Literal["vector", "halfvec"]

MAX_SERVER_WORKERS = 32
"""server.workers' maximum in schema.json, also the bound of `vectorstore serve --workers` (a test keeps them equal)."""


def vector_type_for(dimensions: int) -> VectorType:
    """`halfvec` above 2,000 dimensions, where pgvector can no longer index `vector`."""
    return "vector" if dimensions <= VECTOR_MAX_INDEXED_DIMENSIONS else "halfvec"


@dataclass(frozen=True)
class SecretRef:
    secret: str
    key: str
    env: str
    """The env var the server reads this value from; render wires it from a secretKeyRef."""


@dataclass(frozen=True)
class Resources:
    requests: dict[str, str]
    limits: dict[str, str]


@dataclass(frozen=True)
class Cluster:
    name: str
    instances: int
    image: str
    storage_size: str
    storage_class: str | None
    resources: Resources
    parameters: dict[str, str]
    database_resource: bool

    @property
    def rw_host(self) -> str:
        return names.database_rw_host(self.name)

    @property
    def ro_host(self) -> str:
        return names.database_ro_host(self.name)


@dataclass(frozen=True)
class Database:
    cluster: Cluster
    name: str
    owner: str
    credentials_secret: str
    credentials_declared: bool
    """False when the spec names no secret: CNPG then generates `<cluster>-app` with the same keys."""
    username: SecretRef
    password: SecretRef
    pool_min_size: int
    pool_max_size: int
    read_replicas: bool = False
    """Searches go to the replicas (`<cluster>-ro`) through a second pool, with read-your-writes."""


@dataclass(frozen=True)
class SecretSource:
    name: str
    provider: SecretProvider
    item_path: str | None
    store_name: str | None
    store_kind: str
    remote_key: str | None
    refresh_interval: str


@dataclass(frozen=True)
class ApiKey:
    name: str
    api_key: SecretRef
    scope: Scope
    stores: tuple[str, ...] | None
    """Store names the key is limited to; None means every store."""


@dataclass(frozen=True)
class Embedding:
    base_url: str
    model: str
    dimensions: int
    api_key: SecretRef | None
    send_dimensions: bool
    timeout_seconds: float
    max_retries: int
    batch_size: int
    query_cache_size: int


@dataclass(frozen=True)
class Server:
    image: str
    replicas: int
    workers: int
    port: int
    resources: Resources
    max_upload_bytes: int
    ingest_concurrency: int
    pod_monitor: bool


@dataclass(frozen=True)
class LiteLLM:
    api_key_env: str
    namespace: str
    pod_selector: dict[str, str]
    search_defaults: dict[str, Any]


@dataclass(frozen=True)
class Registry:
    name: str
    description: str | None
    search_defaults: dict[str, Any]


@dataclass(frozen=True)
class Store:
    name: str
    id: str
    id_declared: bool
    description: str | None
    metadata: dict[str, str]
    registry: Registry | None
    model: str
    dimensions: int
    distance: Distance
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_ef_search: int
    max_chunk_size_tokens: int
    chunk_overlap_tokens: int

    @property
    def vector_type(self) -> VectorType:
        return vector_type_for(self.dimensions)


@dataclass(frozen=True)
class Spec:
    version: int
    name: str
    namespace: str
    database: Database
    secrets: tuple[SecretSource, ...]
    api_keys: tuple[ApiKey, ...]
    embedding: Embedding
    server: Server
    litellm: LiteLLM
    stores: tuple[Store, ...]
    prune: bool
    source_text: str = field(repr=False, compare=False)
    """The spec file exactly as written; render ships it in the ConfigMap."""

    @property
    def service_url(self) -> str:
        return names.service_url(self.name, self.namespace, self.server.port)

    def secret_refs(self) -> list[SecretRef]:
        """Every secret reference, in a stable order, each env var once."""
        refs: list[SecretRef] = []
        refs += [self.database.username, self.database.password]
        if self.embedding.api_key is not None:
            refs.append(self.embedding.api_key)
        refs += [key.api_key for key in self.api_keys]
        unique: dict[str, SecretRef] = {}
        for ref in refs:
            unique.setdefault(ref.env, ref)
        return list(unique.values())

    def store_by_name(self, name: str) -> Store | None:
        return next((store for store in self.stores if store.name == name), None)


def _resources(data: dict[str, Any]) -> Resources:
    return Resources(requests=dict(data.get("requests", {})), limits=dict(data.get("limits", {})))


def _secret_ref(data: dict[str, Any] | None, env: str) -> SecretRef | None:
    if data is None:
        return None
    return SecretRef(secret=data["secret"], key=data["key"], env=env)


def _parameter(value: Any) -> str:
    # CNPG wants strings; YAML `on`/`true` both mean the PostgreSQL boolean `on`.
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def build_spec(data: dict[str, Any], source_text: str) -> Spec:
    """Turn defaulted, validated data into the typed spec."""
    db = data["database"]
    cluster = db["cluster"]
    credentials = db.get("credentials")
    credentials_secret = credentials["secret"] if credentials else f"{cluster['name']}-app"
    embedding = data["embedding"]
    server = data["server"]
    litellm = data["litellm"]
    stores = tuple(_store(store, embedding, litellm) for store in data["stores"])
    return Spec(
        version=data["version"],
        name=data["name"],
        namespace=data["namespace"],
        database=Database(
            cluster=Cluster(
                name=cluster["name"],
                instances=cluster["instances"],
                image=cluster["image"],
                storage_size=cluster["storage"]["size"],
                storage_class=cluster["storage"].get("storage_class"),
                resources=_resources(cluster["resources"]),
                parameters={key: _parameter(value) for key, value in sorted(cluster["parameters"].items())},
                database_resource=cluster["database_resource"],
            ),
            name=db["name"],
            owner=db["owner"],
            credentials_secret=credentials_secret,
            credentials_declared=credentials is not None,
            username=SecretRef(credentials_secret, names.DATABASE_USERNAME_KEY, "PGUSER"),
            password=SecretRef(credentials_secret, names.DATABASE_PASSWORD_KEY, "PGPASSWORD"),
            pool_min_size=db["pool"]["min_size"],
            pool_max_size=db["pool"]["max_size"],
            read_replicas=db["read_replicas"],
        ),
        secrets=tuple(
            SecretSource(
                name=item["name"],
                provider=item["provider"],
                item_path=item.get("item_path"),
                store_name=item.get("store", {}).get("name"),
                store_kind=item.get("store", {}).get("kind", "ClusterSecretStore"),
                remote_key=item.get("remote_key"),
                refresh_interval=item["refresh_interval"],
            )
            for item in data["secrets"]
        ),
        api_keys=tuple(
            ApiKey(
                name=key["name"],
                api_key=SecretRef(key["api_key"]["secret"], key["api_key"]["key"], names.api_key_env(key["name"])),
                scope=key["scope"],
                stores=tuple(key["stores"]) if "stores" in key else None,
            )
            for key in data["auth"]["keys"]
        ),
        embedding=Embedding(
            base_url=embedding["base_url"].rstrip("/"),
            model=embedding["model"],
            dimensions=embedding["dimensions"],
            api_key=_secret_ref(embedding.get("api_key"), names.EMBEDDING_API_KEY_ENV),
            send_dimensions=embedding["send_dimensions"],
            timeout_seconds=float(embedding["timeout_seconds"]),
            max_retries=embedding["max_retries"],
            batch_size=embedding["batch_size"],
            query_cache_size=embedding["query_cache_size"],
        ),
        server=Server(
            image=server["image"],
            replicas=server["replicas"],
            workers=server["workers"],
            port=server["port"],
            resources=_resources(server["resources"]),
            max_upload_bytes=server["max_upload_bytes"],
            ingest_concurrency=server["ingest_concurrency"],
            pod_monitor=server["pod_monitor"],
        ),
        litellm=LiteLLM(
            api_key_env=litellm["api_key_env"],
            namespace=litellm.get("namespace", data["namespace"]),
            pod_selector=dict(sorted(litellm["pod_selector"].items())),
            search_defaults=dict(litellm.get("search_defaults", {})),
        ),
        stores=stores,
        prune=data["reconcile"]["prune"],
        source_text=source_text,
    )


def _store(data: dict[str, Any], embedding: dict[str, Any], litellm: dict[str, Any]) -> Store:
    overrides = data.get("embedding", {})
    registry = data.get("registry")
    return Store(
        name=data["name"],
        id=data.get("id") or names.derived_store_id(data["name"]),
        id_declared="id" in data,
        description=data.get("description"),
        metadata=dict(data["metadata"]),
        registry=Registry(
            name=registry["name"],
            description=registry.get("description", data.get("description")),
            search_defaults={**litellm.get("search_defaults", {}), **registry.get("search_defaults", {})},
        )
        if registry
        else None,
        model=overrides.get("model", embedding["model"]),
        dimensions=overrides.get("dimensions", embedding["dimensions"]),
        distance=data["distance"],
        hnsw_m=data["index"]["m"],
        hnsw_ef_construction=data["index"]["ef_construction"],
        hnsw_ef_search=data["index"]["ef_search"],
        max_chunk_size_tokens=data["chunking"]["max_chunk_size_tokens"],
        chunk_overlap_tokens=data["chunking"]["chunk_overlap_tokens"],
    )
