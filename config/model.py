"""The typed spec. Built only from data that already passed the schema and the semantic checks.

Defaults live in schema.json alone (`apply_defaults` fills them in), so the schema editors see and the
model the code uses can't disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from config import names

Scope = Literal["read", "write"]
Distance = Literal["cosine", "l2", "inner_product"]
SecretProvider = Literal["existing", "onepassword", "external-secrets"]

# pgvector: HNSW indexes `vector` up to 2,000 dimensions and `halfvec` up to 4,000, and `bit` up to 64,000
# (REFERENCE §6); a `vector` column holds up to 16,000, the bound for binary quantization.
VECTOR_MAX_INDEXED_DIMENSIONS = 2000
HALFVEC_MAX_INDEXED_DIMENSIONS = 4000
VECTOR_MAX_DIMENSIONS = 16000

VectorType = Literal["vector", "halfvec"]
Quantization = Literal["none", "halfvec", "binary"]
EmbeddingProvider = Literal["openai", "builtin"]
SearchMode = Literal["hybrid", "vector", "keyword"]

# The model built into the server (`embedding.provider: builtin`): wordllama's l2_supercat, whose 256-dimension
# weights ship inside its wheel. Its shorter Matryoshka prefixes (64, 128) are valid dimensions too. These are
# the values a builtin spec may omit; they depend on the provider, which the schema's plain defaults can't say.
BUILTIN_MODEL = "wordllama/l2_supercat"
BUILTIN_DIMENSIONS = 256
BUILTIN_ALLOWED_DIMENSIONS = (64, 128, 256)

MAX_SERVER_WORKERS = 32
"""server.workers' maximum in schema.json, also the bound of `vectorstore serve --workers` (a test keeps them equal)."""


def vector_type_for(dimensions: int, quantization: Quantization = "none") -> VectorType:
    """The column type: `halfvec` when asked for, or for `none` above 2,000 dimensions, where pgvector can no
    longer index `vector`. Binary quantization indexes bits, so its column keeps full precision."""
    if quantization == "halfvec":
        return "halfvec"
    if quantization == "binary":
        return "vector"
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
    provider: EmbeddingProvider
    base_url: str
    """Empty with provider `builtin`."""
    model: str
    dimensions: int
    api_key: SecretRef | None
    send_dimensions: bool
    timeout_seconds: float
    max_retries: int
    batch_size: int
    query_cache_size: int
    query_cache_bytes: int


@dataclass(frozen=True)
class Search:
    """How a store is searched when a request does not say: the top-level `search`, per store merged over it."""

    mode: SearchMode
    language: str
    """A PostgreSQL text search configuration name (`english`, `simple`, ...)."""
    default_max_num_results: int
    embedding_weight: float
    text_weight: float
    rerank: bool
    """Rerank through the top-level `rerank` endpoint, when one is declared."""


@dataclass(frozen=True)
class Rerank:
    base_url: str
    model: str
    api_key: SecretRef | None
    candidates: int
    timeout_seconds: float


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
    search_overrides: dict[str, Any]
    """Values LiteLLM merges over every search request: they override callers, they are not defaults."""
    auth_key: str
    """Name of the `auth.keys` entry LiteLLM sends."""
    deployment_name: str
    deployment_container: str


@dataclass(frozen=True)
class Registry:
    name: str
    description: str | None
    search_overrides: dict[str, Any]


SourceKind = Literal["path", "git", "s3"]
VolumeKind = Literal["config_map", "pvc", "empty_dir"]
AttributeValue = str | int | float | bool


@dataclass(frozen=True)
class SourceVolume:
    """What render mounts read-only at a path source's `path`."""

    kind: VolumeKind
    name: str | None
    """ConfigMap or PVC name; None for an emptyDir."""
    size_limit: str | None = None


@dataclass(frozen=True)
class PathSource:
    path: str
    """As written: absolute, or relative to the spec file's directory (resolved by the server)."""
    volume: SourceVolume | None


@dataclass(frozen=True)
class GitCredentials:
    username: SecretRef
    password: SecretRef


@dataclass(frozen=True)
class GitSource:
    repo: str
    ref: str
    path: str
    """Directory inside the repository, "" for its root."""
    credentials: GitCredentials | None = None


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: SecretRef
    secret_access_key: SecretRef


@dataclass(frozen=True)
class S3Source:
    bucket: str
    prefix: str
    endpoint: str | None
    region: str
    credentials: S3Credentials | None


@dataclass(frozen=True)
class Source:
    """One place a store's documents come from (stores[].sources[])."""

    name: str
    kind: SourceKind
    location: PathSource | GitSource | S3Source
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    attributes: dict[str, AttributeValue]

    def describe(self) -> str:
        """Where it reads, for logs, plan and the status endpoint (never a secret: the spec holds none)."""
        location = self.location
        if isinstance(location, PathSource):
            return location.path
        if isinstance(location, GitSource):
            return f"{location.repo}@{location.ref}" + (f":{location.path}" if location.path else "")
        where = f"s3://{location.bucket}/{location.prefix}"
        return f"{where} at {location.endpoint}" if location.endpoint else where


@dataclass(frozen=True)
class Sync:
    interval_seconds: float
    """0: sources are read at startup only."""
    git_sync_image: str


@dataclass(frozen=True)
class Migration:
    """`migration:` (top level, per store merged over it): how a store with data moves to a changed spec."""

    keep_previous_seconds: float
    concurrency: int
    max_tokens_per_minute: int


def _migration(data: dict[str, Any], defaults: Migration | None) -> Migration:
    def pick(key: str, attribute: str) -> Any:
        return data[key] if key in data or defaults is None else getattr(defaults, attribute)

    keep = pick("keep_previous", "keep_previous_seconds")
    return Migration(
        keep_previous_seconds=parse_duration(keep) if isinstance(keep, str) else float(keep),
        concurrency=pick("concurrency", "concurrency"),
        max_tokens_per_minute=pick("max_tokens_per_minute", "max_tokens_per_minute"),
    )


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `10m`, `1h30m` or `2s` (already validated by the schema); "0" is 0."""
    return float(
        sum(int(value) * {"h": 3600, "m": 60, "s": 1}[unit] for value, unit in re.findall(r"(\d+)([hms])", text))
    )


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
    quantization: Quantization
    max_chunk_size_tokens: int
    chunk_overlap_tokens: int
    search: Search
    sources: tuple[Source, ...] = ()
    migration: Migration = Migration(86400.0, 2, 0)

    @property
    def vector_type(self) -> VectorType:
        return vector_type_for(self.dimensions, self.quantization)


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
    search: Search
    """The top-level defaults; stores created through the API are searched with these."""
    rerank: Rerank | None
    sync: Sync
    source_text: str = field(repr=False, compare=False)
    migration: Migration = Migration(86400.0, 2, 0)
    """The top-level defaults; each declared store's own `migration` is merged over them."""
    """The spec file exactly as written; render ships it in the ConfigMap."""
    warnings: tuple[str, ...] = field(default=(), compare=False)
    """What `vectorstore validate` warns about (FILE:LINE:COL: $.path: warning: ...); the spec is valid."""

    @property
    def service_url(self) -> str:
        return names.service_url(self.name, self.namespace, self.server.port)

    def secret_refs(self) -> list[SecretRef]:
        """Every secret reference the server reads, in a stable order, each env var once. (Git credentials are
        not among them: in Kubernetes only git-sync gets them, see `git_credential_refs`.)"""
        refs: list[SecretRef] = []
        refs += [self.database.username, self.database.password]
        if self.embedding.api_key is not None:
            refs.append(self.embedding.api_key)
        if self.rerank is not None and self.rerank.api_key is not None:
            refs.append(self.rerank.api_key)
        refs += [key.api_key for key in self.api_keys]
        for store in self.stores:
            for source in store.sources:
                if isinstance(source.location, S3Source) and source.location.credentials is not None:
                    credentials = source.location.credentials
                    refs += [credentials.access_key_id, credentials.secret_access_key]
        unique: dict[str, SecretRef] = {}
        for ref in refs:
            unique.setdefault(ref.env, ref)
        return list(unique.values())

    def git_credential_refs(self) -> list[SecretRef]:
        """The git credentials' references: the server reads them only outside Kubernetes (its own `git`)."""
        refs: list[SecretRef] = []
        for store in self.stores:
            for source in store.sources:
                if isinstance(source.location, GitSource) and source.location.credentials is not None:
                    refs += [source.location.credentials.username, source.location.credentials.password]
        return list({ref.env: ref for ref in refs}.values())

    def store_by_name(self, name: str) -> Store | None:
        return next((store for store in self.stores if store.name == name), None)

    def store_by_id(self, store_id: str) -> Store | None:
        return next((store for store in self.stores if store.id == store_id), None)

    def migration_for(self, store_id: str) -> Migration:
        store = self.store_by_id(store_id)
        return store.migration if store is not None else self.migration

    def search_for(self, store_id: str) -> Search:
        """A declared store's search settings, or the top-level ones for a store created through the API."""
        store = self.store_by_id(store_id)
        return store.search if store is not None else self.search

    @property
    def litellm_key(self) -> ApiKey:
        """The `auth.keys` entry LiteLLM sends (`litellm.auth_key`); its secret is what LiteLLM's pod needs."""
        return next(key for key in self.api_keys if key.name == self.litellm.auth_key)


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
    search = _search(data["search"], None)
    migration = _migration(data["migration"], None)
    builtin = embedding["provider"] == "builtin"
    stores = tuple(_store(store, embedding, litellm, search, migration) for store in data["stores"])
    rerank = data.get("rerank")
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
            provider=embedding["provider"],
            base_url=embedding.get("base_url", "").rstrip("/"),
            model=embedding.get("model", BUILTIN_MODEL if builtin else ""),
            dimensions=embedding.get("dimensions", BUILTIN_DIMENSIONS if builtin else 0),
            api_key=_secret_ref(embedding.get("api_key"), names.EMBEDDING_API_KEY_ENV),
            send_dimensions=embedding["send_dimensions"],
            timeout_seconds=float(embedding["timeout_seconds"]),
            max_retries=embedding["max_retries"],
            batch_size=embedding["batch_size"],
            query_cache_size=embedding["query_cache_size"],
            query_cache_bytes=embedding["query_cache_bytes"],
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
            search_overrides=search_overrides(litellm),
            auth_key=litellm.get("auth_key") or default_litellm_key(data["auth"]["keys"]),
            deployment_name=litellm["deployment"]["name"],
            deployment_container=litellm["deployment"]["container"],
        ),
        stores=stores,
        prune=data["reconcile"]["prune"],
        search=search,
        rerank=Rerank(
            base_url=rerank["base_url"].rstrip("/"),
            model=rerank["model"],
            api_key=_secret_ref(rerank.get("api_key"), names.RERANK_API_KEY_ENV),
            candidates=rerank["candidates"],
            timeout_seconds=float(rerank["timeout_seconds"]),
        )
        if rerank
        else None,
        sync=Sync(
            interval_seconds=parse_duration(data["sync"]["interval"]),
            git_sync_image=data["sync"]["git_sync_image"],
        ),
        source_text=source_text,
        migration=migration,
    )


def _search(data: dict[str, Any], defaults: Search | None) -> Search:
    """Settings from `data`, each one missing taken from `defaults` (the top-level block has them all)."""

    def pick(key: str) -> Any:
        return data[key] if key in data or defaults is None else getattr(defaults, key)

    return Search(
        mode=pick("mode"),
        language=pick("language"),
        default_max_num_results=pick("default_max_num_results"),
        embedding_weight=float(pick("embedding_weight")),
        text_weight=float(pick("text_weight")),
        rerank=data.get("rerank", True),
    )


def search_overrides(section: dict[str, Any]) -> dict[str, Any]:
    """`search_overrides`, read under its deprecated old name `search_defaults` too (a check refuses both)."""
    return {**section.get("search_defaults", {}), **section.get("search_overrides", {})}


def default_litellm_key(keys: list[dict[str, Any]]) -> str:
    """The key LiteLLM sends when `litellm.auth_key` is omitted: the one named `litellm`, else the first."""
    key_names = [key["name"] for key in keys]
    return "litellm" if "litellm" in key_names else key_names[0]


def _store(
    data: dict[str, Any], embedding: dict[str, Any], litellm: dict[str, Any], search: Search, migration: Migration
) -> Store:
    overrides = data.get("embedding", {})
    builtin = embedding["provider"] == "builtin"
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
            search_overrides={**search_overrides(litellm), **search_overrides(registry)},
        )
        if registry
        else None,
        model=overrides.get("model", embedding.get("model", BUILTIN_MODEL if builtin else "")),
        dimensions=overrides.get("dimensions", embedding.get("dimensions", BUILTIN_DIMENSIONS if builtin else 0)),
        distance=data["distance"],
        hnsw_m=data["index"]["m"],
        hnsw_ef_construction=data["index"]["ef_construction"],
        hnsw_ef_search=data["index"]["ef_search"],
        quantization=data["index"]["quantization"],
        max_chunk_size_tokens=data["chunking"]["max_chunk_size_tokens"],
        chunk_overlap_tokens=data["chunking"]["chunk_overlap_tokens"],
        search=_search(data["search"], search),
        sources=tuple(_source(source) for source in data["sources"]),
        migration=_migration(data.get("migration", {}), migration),
    )


def _source_secret(secret: str, key: str) -> SecretRef:
    """A key of a source's credentials Secret, read from the env var config.names derives for it."""
    return SecretRef(secret, key, names.source_secret_env(secret, key))


def _source(data: dict[str, Any]) -> Source:
    location: PathSource | GitSource | S3Source
    kind: SourceKind
    if "git" in data:
        git = data["git"]
        git_credentials = None
        if "credentials" in git:
            secret = git["credentials"]["secret"]
            git_credentials = GitCredentials(
                username=_source_secret(secret, names.GIT_USERNAME_KEY),
                password=_source_secret(secret, names.GIT_PASSWORD_KEY),
            )
        location = GitSource(repo=git["repo"], ref=git["ref"], path=git["path"].strip("/"), credentials=git_credentials)
        kind = "git"
    elif "s3" in data:
        s3 = data["s3"]
        credentials = None
        if "credentials" in s3:
            secret = s3["credentials"]["secret"]
            credentials = S3Credentials(
                access_key_id=_source_secret(secret, names.S3_ACCESS_KEY_ID_KEY),
                secret_access_key=_source_secret(secret, names.S3_SECRET_ACCESS_KEY_KEY),
            )
        kind = "s3"
        location = S3Source(
            bucket=s3["bucket"],
            prefix=s3["prefix"],
            endpoint=s3.get("endpoint"),
            region=s3["region"],
            credentials=credentials,
        )
    else:
        volume = None
        if "volume" in data:
            ((volume_kind, value),) = data["volume"].items()
            if volume_kind == "empty_dir":
                volume = SourceVolume("empty_dir", None, value["size_limit"])
            else:
                volume = SourceVolume(volume_kind, value)
        kind, location = "path", PathSource(path=data["path"], volume=volume)
    return Source(
        name=data["name"],
        kind=kind,
        location=location,
        include=tuple(data["include"]),
        exclude=tuple(data["exclude"]),
        attributes=dict(data["attributes"]),
    )
