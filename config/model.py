"""The typed spec. Built only from data that already passed the schema and the semantic checks.

Defaults live in schema.json alone (`apply_defaults` fills them in), so the schema editors see and the
model the code uses can't disagree.
"""

from __future__ import annotations

import re
from collections.abc import Collection
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


ObjectStoreKind = Literal["s3", "gs", "azure"]
AZURE_BLOB_HOST_SUFFIX = ".blob.core.windows.net"


def object_store_kind(url: str) -> ObjectStoreKind | None:
    """Which object store a Barman Cloud destination URL names, or None when the plugin can't write there."""
    scheme, _, rest = url.partition("://")
    if scheme == "s3" and rest.strip("/"):
        return "s3"
    if scheme == "gs" and rest.strip("/"):
        return "gs"
    host = rest.partition("/")[0].partition(":")[0]
    if scheme == "https" and host.endswith(AZURE_BLOB_HOST_SUFFIX) and rest.partition("/")[2].strip("/"):
        return "azure"
    return None


@dataclass(frozen=True)
class ObjectStoreLocation:
    """A Barman Cloud destination: where, at which endpoint, with which Secret's credentials."""

    destination: str
    endpoint: str | None
    credentials_secret: str
    server_name: str

    @property
    def kind(self) -> ObjectStoreKind:
        kind = object_store_kind(self.destination)
        if kind is None:  # checks.backup refused it already
            raise ValueError(f"unsupported destination {self.destination!r}")
        return kind


@dataclass(frozen=True)
class Backup:
    location: ObjectStoreLocation
    retention: str
    schedule: str
    wal_compression: str | None
    data_compression: str | None


@dataclass(frozen=True)
class Restore:
    location: ObjectStoreLocation
    target_time: str | None


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
    backup: Backup | None = None
    restore: Restore | None = None


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
    target_recall: float | None = None
    """Recall@k the server calibrates vector search to reach (vectorstore/calibration); None: fixed settings."""


@dataclass(frozen=True)
class Rerank:
    base_url: str
    model: str
    api_key: SecretRef | None
    candidates: int
    timeout_seconds: float


@dataclass(frozen=True)
class AlertThresholds:
    """`server.alerts`: what the rendered PrometheusRule's alerts compare against (render/alerts.py)."""

    runbook_url: str
    error_ratio: float
    search_p99_seconds: float
    embedding_error_ratio: float
    source_stale_intervals: int
    ingest_failed_files_per_hour: int
    ingest_queue_growing_minutes: int
    pool_saturation_ratio: float


@dataclass(frozen=True)
class Server:
    image: str
    replicas: int
    workers: int
    port: int
    resources: Resources
    max_upload_bytes: int
    ingest_concurrency: int
    postings_cache_bytes: int
    """Decoded keyword postings each server process keeps between searches (vectorstore/search/postings_cache.py)."""
    unattached_file_ttl_hours: int
    """Never-attached uploads are deleted this long after upload; 0: never."""
    pod_monitor: bool
    prometheus_rule: bool
    alerts: AlertThresholds
    grafana_dashboard: bool
    grafana_dashboard_labels: dict[str, str]
    console: bool


LiteLLMProvider = Literal["openai", "pg_vector"]


@dataclass(frozen=True)
class LiteLLM:
    provider: LiteLLMProvider
    """`openai`: LiteLLM's OpenAI vector store provider, which can also upload, attach and ingest; `pg_vector`:
    search only (docs/render.md)."""
    api_base: str
    """Where LiteLLM reaches the server, without `/v1`: the spec's `litellm.api_base`, else the Service URL."""
    files_model: str | None
    """`model_name` of the litellm.yml entry that routes `/v1/files` to the server (provider `openai` only)."""
    files_settings: bool
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


def shown_url(url: str) -> str:
    """A URL as logs, `plan` and the status endpoint show it: no userinfo password, no query string, no fragment.
    `validate` already refuses credentials in a URL; this is the second line of defence (a token in a query)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url.split("?", 1)[0]  # user@host:path, whose user is a login name
    # The authority ends at the first '/', '?' or '#': `https://host?private_token=...` has its query there.
    end = min((i for i in (rest.find(mark) for mark in "/?#") if i >= 0), default=len(rest))
    authority, path = rest[:end], rest[end:]
    userinfo, at, host = authority.rpartition("@")
    if at and scheme in ("http", "https"):
        authority = f"[redacted]@{host}"  # a token alone is a valid https username on most forges
    elif at and ":" in userinfo:
        authority = f"{userinfo.split(':', 1)[0]}:[redacted]@{host}"
    for mark in ("?", "#"):
        if mark in path:
            path = path.split(mark, 1)[0] + mark + "[redacted]"
    return f"{scheme}{sep}{authority}{path}"


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
            return f"{shown_url(location.repo)}@{location.ref}" + (f":{location.path}" if location.path else "")
        where = f"s3://{location.bucket}/{location.prefix}"
        return f"{where} at {location.endpoint}" if location.endpoint else where


@dataclass(frozen=True)
class MaxDelete:
    """`sync.max_delete`: the deletion brake's limit, a count of files or a share of a source's files."""

    shown: str
    """As written in the spec ("50%", "200"), for the status and the log."""
    count: int | None = None
    fraction: float | None = None

    @property
    def off(self) -> bool:
        return self.fraction is not None and self.fraction >= 1.0

    def holds(self, deleting: int, total: int) -> bool:
        """Whether deleting `deleting` of a source's `total` files needs the operator's confirmation: more than
        the limit, or all of them (an unmounted volume, an emptied bucket prefix or branch looks just so)."""
        if deleting <= 0 or self.off:
            return False
        if deleting >= total:
            return True
        if self.count is not None:
            return deleting > self.count
        assert self.fraction is not None
        return deleting > self.fraction * total


def parse_max_delete(value: int | str) -> MaxDelete:
    if isinstance(value, int):
        return MaxDelete(str(value), count=value)
    return MaxDelete(value, fraction=float(value.rstrip("%")) / 100)


@dataclass(frozen=True)
class Sync:
    interval_seconds: float
    """0: sources are read at startup only."""
    git_sync_image: str
    max_delete: MaxDelete = field(default_factory=lambda: parse_max_delete("50%"))


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
class Ingest:
    """`ingest`: what one file's extraction may cost (vectorstore.ingest.sandbox)."""

    max_extract_seconds: float = 60.0
    max_extracted_bytes: int = 64 << 20
    max_extract_memory_bytes: int = 1 << 30


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
    ef_search_declared: bool = False
    """The spec writes `index.ef_search` for this store: it wins over `search.target_recall`'s calibration."""
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
    """The spec file exactly as written; render ships it in the ConfigMap."""
    ingest: Ingest = field(default_factory=Ingest)
    migration: Migration = Migration(86400.0, 2, 0)
    """The top-level defaults; each declared store's own `migration` is merged over them."""
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

    def object_store_secret_keys(self) -> list[tuple[str, str]]:
        """(secret, key) of the backup and restore credentials: the plugin reads them, never the server."""
        out: list[tuple[str, str]] = []
        for holder in (self.database.backup, self.database.restore):
            if holder is not None:
                location = holder.location
                keys = {
                    "s3": (names.S3_ACCESS_KEY_ID_KEY, names.S3_SECRET_ACCESS_KEY_KEY),
                    "gs": (names.GCS_CREDENTIALS_KEY,),
                    "azure": (names.AZURE_CONNECTION_STRING_KEY,),
                }[location.kind]
                out += [(location.credentials_secret, key) for key in keys]
        return out

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


def build_spec(data: dict[str, Any], source_text: str, *, explicit_ef_search: Collection[int] = ()) -> Spec:
    """Turn defaulted, validated data into the typed spec. `explicit_ef_search`: indexes of the stores whose
    `index.ef_search` was written (defaults hide that, and it decides how `target_recall` applies)."""
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
    stores = tuple(
        _store(store, embedding, litellm, search, index in explicit_ef_search, migration)
        for index, store in enumerate(data["stores"])
    )
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
            backup=_backup(db.get("backup"), cluster["name"]),
            restore=_restore(db.get("restore"), db.get("backup"), cluster["name"]),
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
            postings_cache_bytes=server["postings_cache_bytes"],
            unattached_file_ttl_hours=server["unattached_file_ttl_hours"],
            pod_monitor=server["pod_monitor"],
            prometheus_rule=server["prometheus_rule"],
            alerts=AlertThresholds(
                runbook_url=server["alerts"]["runbook_url"],
                error_ratio=float(server["alerts"]["error_ratio"]),
                search_p99_seconds=float(server["alerts"]["search_p99_seconds"]),
                embedding_error_ratio=float(server["alerts"]["embedding_error_ratio"]),
                source_stale_intervals=server["alerts"]["source_stale_intervals"],
                ingest_failed_files_per_hour=server["alerts"]["ingest_failed_files_per_hour"],
                ingest_queue_growing_minutes=server["alerts"]["ingest_queue_growing_minutes"],
                pool_saturation_ratio=float(server["alerts"]["pool_saturation_ratio"]),
            ),
            grafana_dashboard=server["grafana_dashboard"],
            grafana_dashboard_labels=dict(sorted(server["grafana_dashboard_labels"].items())),
            console=server["console"],
        ),
        litellm=LiteLLM(
            provider=litellm["provider"],
            api_base=litellm.get("api_base") or names.service_url(data["name"], data["namespace"], server["port"]),
            files_model=litellm["files_model"],
            files_settings=litellm["files_settings"],
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
            max_delete=parse_max_delete(data["sync"]["max_delete"]),
        ),
        source_text=source_text,
        ingest=Ingest(
            max_extract_seconds=float(data["ingest"]["max_extract_seconds"]),
            max_extracted_bytes=data["ingest"]["max_extracted_bytes"],
            max_extract_memory_bytes=data["ingest"]["max_extract_memory_bytes"],
        ),
        migration=migration,
    )


def _backup(data: dict[str, Any] | None, cluster_name: str) -> Backup | None:
    if data is None:
        return None
    return Backup(
        location=ObjectStoreLocation(
            destination=data["destination"],
            endpoint=data.get("endpoint"),
            credentials_secret=data["credentials"]["secret"],
            server_name=data.get("server_name", cluster_name),
        ),
        retention=data["retention"],
        schedule=data["schedule"],
        wal_compression=data.get("wal_compression"),
        data_compression=data.get("data_compression"),
    )


def _restore(data: dict[str, Any] | None, backup: dict[str, Any] | None, cluster_name: str) -> Restore | None:
    """Endpoint and credentials default to the backup's ("same as backup"), as a pair: a restore that names its
    own credentials names its own endpoint too."""
    if data is None:
        return None
    inherit = "credentials" not in data and backup is not None
    source = backup if inherit and backup is not None else data
    return Restore(
        location=ObjectStoreLocation(
            destination=data["from"],
            endpoint=data.get("endpoint", source.get("endpoint")) if inherit else data.get("endpoint"),
            credentials_secret=source["credentials"]["secret"],
            server_name=data.get("server_name", cluster_name),
        ),
        target_time=data.get("target_time"),
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
        target_recall=None if pick("target_recall") is None else float(pick("target_recall")),
    )


def search_overrides(section: dict[str, Any]) -> dict[str, Any]:
    """`search_overrides`, read under its deprecated old name `search_defaults` too (a check refuses both)."""
    return {**section.get("search_defaults", {}), **section.get("search_overrides", {})}


def default_litellm_key(keys: list[dict[str, Any]]) -> str:
    """The key LiteLLM sends when `litellm.auth_key` is omitted: the one named `litellm`, else the first."""
    key_names = [key["name"] for key in keys]
    return "litellm" if "litellm" in key_names else key_names[0]


def _store(
    data: dict[str, Any],
    embedding: dict[str, Any],
    litellm: dict[str, Any],
    search: Search,
    ef_search_declared: bool,
    migration: Migration,
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
        ef_search_declared=ef_search_declared,
        migration=_migration(data.get("migration", {}), migration),
    )


def _source_secret(secret: str, key: str) -> SecretRef:
    """A key of a source's credentials Secret, read from the env var config.names derives for it."""
    return SecretRef(secret, key, names.source_secret_env(secret, key))


def folder_prefix(prefix: str) -> str:
    """An S3 prefix is a folder: `docs` means `docs/`, so a sibling `docs-archive/` is not part of the source."""
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


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
            prefix=folder_prefix(s3["prefix"]),
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
