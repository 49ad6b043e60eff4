"""Prometheus metrics: one registry per process, the names operators alert on, and the aiohttp middleware.

A process serves one app, so the metrics are module-level (Prometheus' own convention) and the rest of the
server records with the small helpers below, without carrying a registry around. The registry is our own, not
`prometheus_client.REGISTRY`, so importing a library that registers there can't add surprise series.

Gauges that describe state (pool usage, queue depth) are read at scrape time from callbacks the app registers
with `add_gauge_source`, so they are never stale and cost nothing between scrapes.

Route labels are aiohttp's route templates (`/v1/vector_stores/{vector_store_id}`), never raw paths: ids in
labels would make a series per store and per file, which is how Prometheus servers run out of memory.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Final, ParamSpec, TypeVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

REGISTRY: Final = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

# Buckets from 1 ms to 30 s: searches sit in the low milliseconds, ingestion requests and upstream calls can
# take seconds, and 30 s is past any client timeout we expect.
_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

CLIENT_CLOSED: Final = 499
UNMATCHED_ROUTE: Final = "unmatched"
"""Route label of requests no route matched (404s, scanners): one series, whatever the path."""
MALFORMED_ROUTE: Final = "malformed"
"""Route label of requests aiohttp's HTTP parser refused (bad framing): they never reach a route."""

HTTP_REQUESTS: Final = Counter(
    "vectorstore_http_requests_total",
    "HTTP requests by method, route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY: Final = Histogram(
    "vectorstore_http_request_duration_seconds",
    "HTTP request latency by method and route template, including time spent waiting for the database.",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
SEARCH_LATENCY: Final = Histogram(
    "vectorstore_search_duration_seconds",
    "Time of the SQL part of a vector store search (without the query embedding).",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
EMBEDDING_LATENCY: Final = Histogram(
    "vectorstore_embedding_request_duration_seconds",
    "Latency of one HTTP request to the embedding upstream, by purpose: `request` (a search or prototype call "
    "waiting for it) or `ingest` (the background worker).",
    ["purpose"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
EMBEDDING_ERRORS: Final = Counter(
    "vectorstore_embedding_errors_total",
    "Failed requests to the embedding upstream, by purpose and reason (timeout, connect, status_429, status_5xx, ...).",
    ["purpose", "reason"],
    registry=REGISTRY,
)
INGEST_OUTCOMES: Final = Counter(
    "vectorstore_ingest_files_total",
    "Ingestion jobs the worker ended, by outcome: completed, failed, retry (upstream down, tried again later), "
    "dropped (detached or store deleted meanwhile), taken (by another worker first), requeued (interrupted by "
    "shutdown), other.",
    ["outcome"],
    registry=REGISTRY,
)
INGEST_LATENCY: Final = Histogram(
    "vectorstore_ingest_file_duration_seconds",
    "Time to ingest one file: extract, chunk, embed and write.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
SEARCHES: Final = Counter(
    "vectorstore_searches_total",
    "Searches by the mode they ran in (vector, keyword, hybrid) and by what they fell back from: `none`, "
    "`no_terms` (the query had no indexable term, so its vector ranking was used), `upgrading` (the store's "
    "keyword index is still being built) or `old_model_unavailable` (a hybrid search of a store migrating to a "
    "new model, whose old model could not embed the query: keyword ranking answered).",
    ["mode", "fallback"],
    registry=REGISTRY,
)
STORE_SEARCH_LATENCY: Final = Histogram(
    "vectorstore_store_search_duration_seconds",
    "Time of a whole search request as the handler sees it (query embedding, SQL, rerank), by store and by the "
    "mode asked for (vector, keyword, hybrid). `store` is the name of a declared store, or `undeclared` for the "
    "stores created through the API, so the label stays bounded. Its `_count` is searches per store and mode.",
    ["store", "mode"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
UNDECLARED_STORE: Final = "undeclared"
KEYWORD_POSTINGS: Final = Counter(
    "vectorstore_keyword_postings_total",
    "Postings keyword searches (and hybrid searches' keyword legs) scored, by where they came from: `database` "
    "(read in the fetch) or `cache` (held decoded by the process: server.postings_cache_bytes). The share from "
    "`cache` says whether the cache is large enough for the stores' common words.",
    ["source"],
    registry=REGISTRY,
)
CALIBRATIONS: Final = Counter(
    "vectorstore_calibrations_total",
    "Recall calibrations this process ran (vectorstore/calibration), by outcome: reached (every group met the "
    "store's target_recall), not_reached (the best setting found is in use) or failed (the database failed it, "
    "or its budget ran out before any result: the log says which).",
    ["outcome"],
    registry=REGISTRY,
)
RERANK_LATENCY: Final = Histogram(
    "vectorstore_rerank_request_duration_seconds",
    "Latency of one request to the rerank endpoint, failures and timeouts included.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
RERANK_FALLBACKS: Final = Counter(
    "vectorstore_rerank_fallbacks_total",
    "Searches served in fused order because the reranker failed, by reason: timeout, connect, status_4xx, "
    "status_5xx, status_429, bad_answer.",
    ["reason"],
    registry=REGISTRY,
)

REPLICA_SEARCHES: Final = Counter(
    "vectorstore_replica_searches_total",
    "Searches served by a read replica (database.read_replicas), after it had replayed the primary's writes.",
    registry=REGISTRY,
)
REPLICA_FALLBACKS: Final = Counter(
    "vectorstore_replica_fallbacks_total",
    "Searches the primary served although read replicas are on, by reason: `lagging` (the replica had not "
    "replayed the writes the search must see within the wait), `unavailable` (no replica connection: down, "
    "unreachable or busy), `failed` (the replica broke or cancelled the query midway).",
    ["reason"],
    registry=REGISTRY,
)
PRIMARY_LSN_READS: Final = Counter(
    "vectorstore_primary_lsn_reads_total",
    "Queries of the primary's WAL position for read-your-writes on replicas; concurrent searches share one.",
    registry=REGISTRY,
)

GaugeSource = Callable[[], Iterable[Metric]]


class _Sources(Collector):
    """Calls the registered sources at scrape time. A failing source costs its own series, not the scrape.

    `per_process` names the sources that describe this process alone (its pools, its readiness, its replica
    router): under `serve --workers N` they are published per worker instead (see `publish_worker_gauges`), and
    `shared_only` leaves them out here."""

    def __init__(self) -> None:
        self.sources: dict[str, GaugeSource] = {}
        self.per_process: set[str] = set()
        self.shared_only = False

    def collect(self) -> Iterator[Metric]:
        for name, source in list(self.sources.items()):
            if self.shared_only and name in self.per_process:
                continue
            yield from _safely(source)

    def collect_per_process(self) -> Iterator[Metric]:
        for name, source in list(self.sources.items()):
            if name in self.per_process:
                yield from _safely(source)

    def describe(self) -> Iterator[Metric]:
        # Sources are dynamic: describing them would call them at registration time.
        return iter(())


_SOURCES: Final = _Sources()
REGISTRY.register(_SOURCES)


def _safely(source: GaugeSource) -> Iterator[Metric]:
    try:
        yield from source()
    except Exception:  # a scrape must not fail because one source (e.g. the DB) is down
        return


def add_gauge_source(name: str, source: GaugeSource, *, per_process: bool = False) -> None:
    """Register (or replace, by name) a callback that yields metric families at scrape time.

    `per_process`: the values are this process's own (a pool, readiness), not the same in every worker (a
    table's count, the stores' calibrations): under `serve --workers N` every worker's are exported, each with
    its `worker` label, whichever worker answers the scrape."""
    _SOURCES.sources[name] = source
    if per_process:
        _SOURCES.per_process.add(name)
    else:
        _SOURCES.per_process.discard(name)


# --- per-worker gauges under `serve --workers N` ---------------------------------------------------------------
# Each worker writes its per-process gauges into prometheus_client's multiprocess files (the directory the
# parent owns), with a `worker` label (its index: bounded, and stable across scrapes, unlike a pid). Whichever
# worker answers a scrape then reports every worker's pool, readiness and replica state, as of that worker's
# last publication (at most WORKER_PUBLISH_SECONDS old; its own is refreshed for the scrape). Alerts aggregate
# over the label (`max without (worker)`), so one saturated worker is seen, not averaged or hidden.

WORKER_LABEL: Final = "worker"
WORKER_PUBLISH_SECONDS: Final = 1.0
_WORKER_GAUGES: dict[tuple[str, tuple[str, ...]], Gauge] = {}


def publish_worker_gauges(worker: str) -> None:
    """Write this worker's per-process gauges into the shared multiprocess files, labelled `worker`."""
    for family in _SOURCES.collect_per_process():
        for sample in family.samples:
            names = tuple(sorted(sample.labels))
            gauge = _WORKER_GAUGES.get((sample.name, names))
            if gauge is None:
                # Not registered anywhere: only MultiProcessCollector reads it back, from the files. `mostrecent`:
                # one worker writes each label set, and the value is its latest.
                gauge = _WORKER_GAUGES[(sample.name, names)] = Gauge(
                    sample.name,
                    family.documentation,
                    [*names, WORKER_LABEL],
                    registry=None,
                    multiprocess_mode="mostrecent",
                )
            gauge.labels(*(sample.labels[name] for name in names), worker).set(sample.value)


def _multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def remove_gauge_source(name: str) -> None:
    _SOURCES.sources.pop(name, None)


def pool_gauges(stats: Callable[[], Mapping[str, int]], prefix: str = "vectorstore_db_pool") -> GaugeSource:
    """A source for psycopg_pool's `get_stats()`: size, idle, busy, waiting clients, and the configured maximum.

    `prefix` names the pool: `vectorstore_db_pool` (the primary) or `vectorstore_db_read_pool` (the replicas).
    """

    def collect() -> Iterator[Metric]:
        values = stats()
        size = values.get("pool_size", 0)
        available = values.get("pool_available", 0)
        for name, doc, value in (
            ("size", "Connections the pool holds now.", size),
            ("available", "Idle connections in the pool.", available),
            ("in_use", "Connections lent to requests or workers.", max(size - available, 0)),
            ("waiting", "Clients waiting for a connection.", values.get("requests_waiting", 0)),
            ("max", "Configured maximum pool size.", values.get("pool_max", 0)),
        ):
            yield GaugeMetricFamily(f"{prefix}_{name}", doc, value=value)

    return collect


def replica_up_gauge(up: Callable[[], bool]) -> GaugeSource:
    def collect() -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "vectorstore_replica_up",
            "1 while searches go to the read replicas, 0 while the primary serves them.",
            value=1 if up() else 0,
        )

    return collect


def ready_gauge(ready: Callable[[], bool]) -> GaugeSource:
    """`vectorstore_ready`: what `/ready` answers before its database round trip (startup done: migrated and
    reconciled). Alerts need it as a series: a probe's answer never reaches Prometheus."""

    def collect() -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "vectorstore_ready",
            "1 once startup (migrations, reconcile) has finished, 0 before or when it failed.",
            value=1 if ready() else 0,
        )

    return collect


def queue_gauge(depths: Callable[[], Mapping[str, int]]) -> GaugeSource:
    """A source for the ingestion queue: a callback returning the number of jobs per state (queued, running...)."""

    def collect() -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "vectorstore_ingest_queue_depth", "Ingestion jobs in the queue, by state.", labels=["state"]
        )
        for state, count in sorted(depths().items()):
            family.add_metric([state], count)
        yield family

    return collect


def postings_cache_gauges(held_bytes: Callable[[], int], entries: Callable[[], int], max_bytes: int) -> GaugeSource:
    """The process's cache of decoded keyword postings (search/postings_cache.py): bytes held, rows held, budget."""

    def collect() -> Iterator[Metric]:
        for name, doc, value in (
            ("bytes", "Bytes of decoded keyword postings this process holds.", held_bytes()),
            ("rows", "Block rows of keyword postings this process holds decoded.", entries()),
            ("max_bytes", "The cache's budget, server.postings_cache_bytes (0: off).", max_bytes),
        ):
            yield GaugeMetricFamily(f"vectorstore_postings_cache_{name}", doc, value=value)

    return collect


def count_keyword_postings(from_cache: int, from_database: int) -> None:
    if from_cache:
        KEYWORD_POSTINGS.labels("cache").inc(from_cache)
    if from_database:
        KEYWORD_POSTINGS.labels("database").inc(from_database)


def observe_search(seconds: float) -> None:
    SEARCH_LATENCY.observe(seconds)


def observe_store_search(store: str, mode: str, seconds: float) -> None:
    STORE_SEARCH_LATENCY.labels(store, mode).observe(seconds)


def count_search(mode: str, fallback: str = "none") -> None:
    SEARCHES.labels(mode, fallback).inc()


def observe_rerank(seconds: float, fallback_reason: str | None = None) -> None:
    RERANK_LATENCY.observe(seconds)
    if fallback_reason is not None:
        RERANK_FALLBACKS.labels(fallback_reason).inc()


T = TypeVar("T")
P = ParamSpec("P")


def timed_search(function: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorator: the call's duration goes to the search-latency histogram, whether it returns or raises."""

    @functools.wraps(function)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        started = time.perf_counter()
        try:
            return await function(*args, **kwargs)
        finally:
            SEARCH_LATENCY.observe(time.perf_counter() - started)

    return wrapper


def timed_embedding(function: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorator for one upstream request: latency, and on failure a bounded reason label.

    The purpose is `request` while serving an HTTP request (the access-log middleware has set a request id)
    and `ingest` otherwise, so the client needs no extra parameter. Failures are classified by the exception's
    `status` or `upstream_status` attribute (the embedding client's errors carry one) or its kind.
    """

    @functools.wraps(function)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        purpose = embedding_purpose()
        started = time.perf_counter()
        try:
            result = await function(*args, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # `upstream_status` first: the client's UpstreamError also has `status`, its own 502.
            status = getattr(exc, "upstream_status", None) if hasattr(exc, "upstream_status") else None
            status = status if status is not None else getattr(exc, "status", None)
            reason = embedding_error_reason(status if isinstance(status, int) else None, exc)
            if reason == "other" and "timed out" in str(exc):
                reason = "timeout"
            elif reason == "other" and "unreachable" in str(exc):
                reason = "connect"
            elif reason == "status_2xx":
                reason = "bad_answer"  # 200 with the wrong dimensions or shape
            observe_embedding(purpose, time.perf_counter() - started, reason)
            raise
        observe_embedding(purpose, time.perf_counter() - started)
        return result

    return wrapper


def embedding_purpose() -> str:
    """`request` while serving an HTTP request (the access-log middleware has set a request id), else `ingest`."""
    from vectorstore.observability.logs import request_id_var

    return "request" if request_id_var.get() is not None else "ingest"


def count_embedding_error(reason: str) -> None:
    """An answer that arrived but can't be used (wrong count or dimensions, NaN), found after the request."""
    EMBEDDING_ERRORS.labels(embedding_purpose(), reason).inc()


def observe_embedding(purpose: str, seconds: float, error: str | None = None) -> None:
    """Record one upstream call; `error` is a short reason such as `timeout` or `status_429`, None on success."""
    EMBEDDING_LATENCY.labels(purpose).observe(seconds)
    if error is not None:
        EMBEDDING_ERRORS.labels(purpose, error).inc()


def embedding_error_reason(status: int | None = None, exc: BaseException | None = None) -> str:
    """A bounded label for an upstream failure: an HTTP status class, or the exception kind."""
    if status is not None:
        return "status_429" if status == 429 else f"status_{status // 100}xx"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if exc is not None and type(exc).__name__.startswith(("ClientConnector", "ServerDisconnected")):
        return "connect"
    return "other"


INGEST_OUTCOME_LABELS: Final = frozenset({"completed", "failed", "retry", "dropped", "taken", "requeued"})


def observe_ingest(outcome: str, seconds: float | None = None) -> None:
    """One job's end. `outcome` may be the worker's log phrase ("retry in 5s", "dropped (store deleted)"): its
    first word is the label, and anything unexpected is `other`, so the label set stays bounded."""
    word = outcome.split(" ", 1)[0] if outcome else "other"
    INGEST_OUTCOMES.labels(word if word in INGEST_OUTCOME_LABELS else "other").inc()
    if seconds is not None:
        INGEST_LATENCY.observe(seconds)


def route_label(request: web.Request) -> str:
    """The matched route's template, or `unmatched` (aiohttp's 404/405 match infos have no real route)."""
    match_info = request.match_info
    if match_info.http_exception is not None:
        return UNMATCHED_ROUTE
    resource = match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


# Method labels are bounded like route labels: a client picks the method, and /metrics is public, so an
# arbitrary token (even an API key sent as the method) must never become a series.
_METHOD_LABELS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Labelled children by label values: `labels()` validates and locks on every call, and the label sets are
# bounded (route templates, methods, statuses), so each child is looked up once per process.
_REQUEST_COUNTERS: dict[tuple[str, str, int], Counter] = {}
_REQUEST_LATENCIES: dict[tuple[str, str], Histogram] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    method = method if method in _METHOD_LABELS else "other"
    counter = _REQUEST_COUNTERS.get((method, route, status))
    if counter is None:
        counter = _REQUEST_COUNTERS[(method, route, status)] = HTTP_REQUESTS.labels(method, route, str(status))
    latency = _REQUEST_LATENCIES.get((method, route))
    if latency is None:
        latency = _REQUEST_LATENCIES[(method, route)] = HTTP_LATENCY.labels(method, route)
    counter.inc()
    latency.observe(seconds)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts every request by route template and final status, errors and aiohttp's own 404/405 included."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        # The client went away before the answer: nginx's 499, so these don't pass for server errors.
        status = CLIENT_CLOSED
        raise
    finally:
        observe_request(request.method, route_label(request), status, time.perf_counter() - started)


def render(worker: str | None = None) -> tuple[bytes, str]:
    """The exposition text and its content type.

    Under `serve --workers N` (vectorstore/workers.py sets PROMETHEUS_MULTIPROC_DIR; `worker` is this one's
    index) the counters and histograms live in files every worker writes, and this sums them; the per-process
    gauges are every worker's, labelled `worker` (see `publish_worker_gauges`), and the shared ones (the queue,
    calibrations, migrations: the same in every worker) this worker's. process_* series are left out there:
    they would describe whichever worker answered.
    """
    if _multiprocess():
        if worker is not None:
            publish_worker_gauges(worker)  # this worker's, fresh; the others' are at most a second old
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        shared = _Sources()
        shared.sources, shared.per_process = _SOURCES.sources, _SOURCES.per_process
        shared.shared_only = worker is not None  # without an index (never under serve), keep this process's own
        registry.register(shared)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# --- declared documents (vectorstore/sources/) ---------------------------------------------------------------
# Labels are the store and source names of the spec: declared, so bounded.

SOURCE_SYNCS: Final = Counter(
    "vectorstore_source_syncs_total",
    "Syncs of a declared source, by outcome: ok, or error (the source could not be read; nothing was deleted).",
    ["store", "source", "outcome"],
    registry=REGISTRY,
)
SOURCE_FILES: Final = Counter(
    "vectorstore_source_files_total",
    "Files a sync of a source handled, by change: added, updated, deleted, unchanged, failed.",
    ["store", "source", "change"],
    registry=REGISTRY,
)
SOURCE_DELETES_HELD: Final = Gauge(
    "vectorstore_source_deletes_held",
    "Deletions the last sync of the source held back (the deletion brake, sync.max_delete); 0 when none.",
    ["store", "source"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
SOURCE_UP: Final = Gauge(
    "vectorstore_source_up",
    "1 when the last sync of the source could read it, 0 when it could not.",
    ["store", "source"],
    registry=REGISTRY,
    # Under `serve --workers`, the value the latest sync wrote, whichever worker ran it (not one per pid).
    multiprocess_mode="mostrecent",
)
SOURCE_LAST_SUCCESS: Final = Gauge(
    "vectorstore_source_last_success_timestamp_seconds",
    "Unix time at which the last successful sync of the source finished.",
    ["store", "source"],
    registry=REGISTRY,
    # Under `serve --workers`, the value the latest sync wrote, whichever worker ran it (not one per pid).
    multiprocess_mode="mostrecent",
)
SOURCE_DURATION: Final = Gauge(
    "vectorstore_source_last_sync_duration_seconds",
    "How long the last sync of the source took (listing, reading changed files, queueing them).",
    ["store", "source"],
    registry=REGISTRY,
    # Under `serve --workers`, the value the latest sync wrote, whichever worker ran it (not one per pid).
    multiprocess_mode="mostrecent",
)


def observe_source_sync(
    store: str,
    source: str,
    *,
    ok: bool,
    seconds: float,
    finished_at: float,
    changes: Mapping[str, int],
    held: int = 0,
) -> None:
    """One sync of one source: its outcome, its duration and how many files it added, updated, deleted..."""
    SOURCE_SYNCS.labels(store, source, "ok" if ok else "error").inc()
    if ok:
        # Only a sync that read the source knows; a failed one leaves the last known figure.
        SOURCE_DELETES_HELD.labels(store, source).set(held)
    for change, count in changes.items():
        if count:
            SOURCE_FILES.labels(store, source, change).inc(count)
    SOURCE_UP.labels(store, source).set(1 if ok else 0)
    SOURCE_DURATION.labels(store, source).set(seconds)
    if ok:
        SOURCE_LAST_SUCCESS.labels(store, source).set(finished_at)
