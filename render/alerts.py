"""The PrometheusRule (`server.prometheus_rule`): the alerts an operator of the server wants, from one table.

Each alert is a row of `ALERTS`: its name, severity, how long it must hold, the PromQL (built from the spec's
thresholds and the selector of the PodMonitor's series), a summary and a description naming the server, store or
source, and whether it applies to the spec (no replica alert without read replicas). Adding an alert for a new
metric is adding a row, a heading under "Alerts" in docs/operations.md (its runbook), and a case in
tests/monitoring/test_alerts.py (the promtool unit tests that make it fire and not fire).

Label templates (`{{ $labels.store }}`) are Prometheus' own, filled in when the alert fires; the spec's names in
the queries are DNS labels (schema), so they need no quoting inside PromQL strings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from config import Spec, names
from config.model import shown_url
from render.common import Document, metadata

COMPONENT = "server"
RULE_GROUP = "vectorstore"

Severity = Literal["critical", "warning"]


def selector(spec: Spec) -> str:
    """The label matchers of every series the PodMonitor scrapes from this server (and nothing else's)."""
    return f'namespace="{spec.namespace}", job="{names.prometheus_job(spec.name, spec.namespace)}"'


def _seconds(value: float) -> str:
    """A threshold in seconds as PromQL reads it: integers without a trailing .0, so the rules read as written."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _upstream(spec: Spec) -> str:
    """The embedding upstream as an alert names it: alerts reach chat and mail, so never with a user:password."""
    return shown_url(spec.embedding.base_url) if spec.embedding.base_url else "built in"


def _has_sources(spec: Spec) -> bool:
    return any(store.sources for store in spec.stores)


def _always(spec: Spec) -> bool:
    return True


@dataclass(frozen=True)
class Alert:
    name: str
    severity: Severity
    for_: str | Callable[[Spec], str]
    """How long the expression must hold before the alert fires (Prometheus' `for`), fixed or from the spec."""
    expr: Callable[[Spec, str], str]
    """PromQL, from the spec and the selector."""
    summary: str
    description: Callable[[Spec], str]
    applies: Callable[[Spec], bool] = _always

    @property
    def anchor(self) -> str:
        """The runbook's heading in docs/operations.md: the alert name in lowercase (GitHub's heading ids)."""
        return self.name.lower()


def _server(spec: Spec) -> str:
    return f"vector store server {spec.name} in namespace {spec.namespace}"


ALERTS: tuple[Alert, ...] = (
    Alert(
        name="VectorstoreDown",
        severity="critical",
        for_="5m",
        expr=lambda spec, sel: f"up{{{sel}}} == 0",
        summary="A vector store server pod does not answer scrapes.",
        description=lambda spec: (
            f"Prometheus could not scrape pod {{{{ $labels.pod }}}} of the {_server(spec)} for 5 minutes: "
            "the process is down, stuck or unreachable."
        ),
    ),
    Alert(
        name="VectorstoreAbsent",
        severity="critical",
        for_="10m",
        expr=lambda spec, sel: f"absent(up{{{sel}}})",
        summary="No vector store server pod is scraped at all.",
        description=lambda spec: (
            f"Prometheus has had no target for the {_server(spec)} for 10 minutes: no pod runs, or the "
            "PodMonitor no longer selects them."
        ),
    ),
    Alert(
        name="VectorstoreNotReady",
        severity="critical",
        for_="10m",
        # `serve --workers N` reports each worker's readiness (label `worker`): one not ready is the pod's alert.
        expr=lambda spec, sel: f"min without (worker) (vectorstore_ready{{{sel}}}) == 0",
        summary="A vector store server pod is not ready.",
        description=lambda spec: (
            f"Pod {{{{ $labels.pod }}}} of the {_server(spec)} has not been ready for 10 minutes: its startup "
            "(migrations, reconcile) failed or waits for the database. `/ready` says why."
        ),
    ),
    Alert(
        name="VectorstoreErrors",
        severity="critical",
        for_="10m",
        expr=lambda spec, sel: (
            f'sum(rate(vectorstore_http_requests_total{{{sel}, status=~"5.."}}[5m]))'
            f" / sum(rate(vectorstore_http_requests_total{{{sel}}}[5m])) > {spec.server.alerts.error_ratio!r}"
        ),
        summary="The vector store server answers too many requests with 5xx.",
        description=lambda spec: (
            f"More than {spec.server.alerts.error_ratio:.0%} of the requests to the {_server(spec)} answered "
            "5xx over the last 5 minutes, for 10 minutes."
        ),
    ),
    Alert(
        name="VectorstoreSearchSlow",
        severity="warning",
        for_="10m",
        expr=lambda spec, sel: (
            "histogram_quantile(0.99, sum by (le, store) "
            f"(rate(vectorstore_store_search_duration_seconds_bucket{{{sel}}}[5m])))"
            f" > {_seconds(spec.server.alerts.search_p99_seconds)}"
        ),
        summary="Searches of a store are slow.",
        description=lambda spec: (
            "The 99th percentile of search time in store {{ $labels.store }} (whole requests: query embedding, "
            f"SQL and rerank) on the {_server(spec)} has been above "
            f"{_seconds(spec.server.alerts.search_p99_seconds)}s for 10 minutes."
        ),
    ),
    Alert(
        name="VectorstoreEmbeddingErrors",
        severity="warning",
        for_="10m",
        expr=lambda spec, sel: (
            f"sum by (purpose) (rate(vectorstore_embedding_errors_total{{{sel}}}[5m]))"
            f" / sum by (purpose) (rate(vectorstore_embedding_request_duration_seconds_count{{{sel}}}[5m]))"
            f" > {spec.server.alerts.embedding_error_ratio!r}"
        ),
        summary="Requests to the embedding upstream fail.",
        description=lambda spec: (
            f"More than {spec.server.alerts.embedding_error_ratio:.0%} of the {{{{ $labels.purpose }}}} requests "
            f"from the {_server(spec)} to its embedding upstream ({_upstream(spec)}) "
            "failed over the last 5 minutes, for 10 minutes."
        ),
    ),
    Alert(
        name="VectorstoreSourceFailing",
        severity="warning",
        for_="15m",
        # Any replica may sync a store (one at a time): the newest result across pods is the source's state, so
        # a pod that failed once and another that succeeded since do not fire.
        expr=lambda spec, sel: f"max by (store, source) (vectorstore_source_up{{{sel}}}) == 0",
        summary="A declared source can't be read.",
        description=lambda spec: (
            "Source {{ $labels.source }} of store {{ $labels.store }} "
            f"(served by the {_server(spec)}) could not be read by its last syncs for 15 minutes; nothing was "
            "deleted. `GET /v1/sources` shows the error."
        ),
        applies=_has_sources,
    ),
    Alert(
        name="VectorstoreSourceStale",
        severity="warning",
        for_="5m",
        expr=lambda spec, sel: (
            f"time() - max by (store, source) (vectorstore_source_last_success_timestamp_seconds{{{sel}}})"
            f" > {_seconds(spec.server.alerts.source_stale_intervals * spec.sync.interval_seconds)}"
        ),
        summary="A declared source has not synced successfully for several intervals.",
        description=lambda spec: (
            "The last successful sync of source {{ $labels.source }} of store {{ $labels.store }} "
            f"(served by the {_server(spec)}) is older than {spec.server.alerts.source_stale_intervals} sync "
            f"intervals ({_seconds(spec.server.alerts.source_stale_intervals * spec.sync.interval_seconds)}s)."
        ),
        applies=lambda spec: _has_sources(spec) and spec.sync.interval_seconds > 0,
    ),
    Alert(
        name="VectorstoreSourceDeletionsHeld",
        severity="warning",
        for_="5m",
        # A held sync counts as a success (source_up 1, last success now), so neither alert above sees it. Only
        # the pod with the newest sync of the source knows whether deletions are held now: a pod that held them
        # once and lost the sync lock since keeps its old figure, which must not keep the alert firing.
        expr=lambda spec, sel: (
            f"max by (store, source) (vectorstore_source_deletes_held{{{sel}}}"
            " and on (namespace, job, pod, store, source)"
            f" (vectorstore_source_last_success_timestamp_seconds{{{sel}}}"
            " == on (store, source) group_left"
            f" max by (store, source) (vectorstore_source_last_success_timestamp_seconds{{{sel}}}))) > 0"
        ),
        summary="A declared source's deletions are held by the deletion brake.",
        description=lambda spec: (
            "The last sync of source {{ $labels.source }} of store {{ $labels.store }} "
            f"(served by the {_server(spec)}) would delete all of its files or more than sync.max_delete, and "
            "deleted none. An unmounted volume or an emptied bucket prefix or branch looks like this; if the "
            "deletion is meant, run `vectorstore sync --allow-deletes` or raise sync.max_delete."
        ),
        applies=_has_sources,
    ),
    Alert(
        name="VectorstoreIngestFailures",
        severity="warning",
        for_="0m",
        expr=lambda spec, sel: (
            f'sum(increase(vectorstore_ingest_files_total{{{sel}, outcome="failed"}}[1h]))'
            f" > {spec.server.alerts.ingest_failed_files_per_hour}"
        ),
        summary="Files fail ingestion.",
        description=lambda spec: (
            f"More than {spec.server.alerts.ingest_failed_files_per_hour} files failed ingestion on the "
            f"{_server(spec)} in the last hour. Their `last_error` says why: list a store's files with "
            "`filter=failed`, or open the console."
        ),
    ),
    Alert(
        name="VectorstoreIngestQueueGrowing",
        severity="warning",
        for_=lambda spec: f"{spec.server.alerts.ingest_queue_growing_minutes}m",
        # Every pod reports the whole queue (one table), so the largest report is the queue, not their sum.
        expr=lambda spec, sel: f"deriv(max(sum without (state) (vectorstore_ingest_queue_depth{{{sel}}}))[10m:1m]) > 0",
        summary="The ingestion queue keeps growing.",
        description=lambda spec: (
            f"The ingestion queue of the {_server(spec)} has grown for "
            f"{spec.server.alerts.ingest_queue_growing_minutes} minutes: files arrive faster than they are "
            "ingested, or the worker is stuck (see the embedding upstream alerts)."
        ),
    ),
    Alert(
        name="VectorstoreReplicaDown",
        severity="warning",
        for_="10m",
        expr=lambda spec, sel: f"min without (worker) (vectorstore_replica_up{{{sel}}}) == 0",
        summary="Searches run on the primary: the read replicas are down or lagging.",
        description=lambda spec: (
            f"Pod {{{{ $labels.pod }}}} of the {_server(spec)} has sent its searches to the primary of "
            f"{spec.database.cluster.name} for 10 minutes: its read replicas are unreachable."
        ),
        applies=lambda spec: spec.database.read_replicas,
    ),
    Alert(
        name="VectorstorePoolSaturated",
        severity="warning",
        for_="10m",
        # Each worker of `serve --workers N` has its own pool (label `worker`): the fullest one decides, since an
        # idle worker beside a saturated one would hide it in a sum or an average.
        expr=lambda spec, sel: (
            f"max without (worker) (vectorstore_db_pool_in_use{{{sel}}} / vectorstore_db_pool_max{{{sel}}})"
            f" > {spec.server.alerts.pool_saturation_ratio!r}"
            f" or max without (worker) (vectorstore_db_pool_waiting{{{sel}}}) > 0"
        ),
        summary="The database pool of a server pod is saturated.",
        description=lambda spec: (
            f"Pod {{{{ $labels.pod }}}} of the {_server(spec)} has had more than "
            f"{spec.server.alerts.pool_saturation_ratio:.0%} of its database connections in use, or clients "
            "waiting for one, for 10 minutes (in at least one of its worker processes, under `serve --workers`)."
        ),
    ),
    Alert(
        name="VectorstoreRecallBelowTarget",
        severity="warning",
        for_="1h",
        # `store` is the store's id: calibration gauges are per store id, like the status route.
        expr=lambda spec, sel: f"max by (store) (vectorstore_search_recall_target_reached{{{sel}}}) == 0",
        summary="A store's measured recall is below its target_recall.",
        description=lambda spec: (
            "Store {{ $labels.store }} (an id; `GET /v1/vector_stores/<id>/recall` shows it) of the "
            f"{_server(spec)} has measured a recall below its `search.target_recall` for an hour: no setting "
            "tried reaches it, so the best one found is in use."
        ),
        applies=lambda spec: any(store.search.target_recall is not None for store in spec.stores),
    ),
    Alert(
        name="VectorstoreMigrationPaused",
        severity="warning",
        for_="15m",
        # Every pod reads the phase from the database, so they agree: max across them is the store's phase.
        expr=lambda spec, sel: f'max by (store) (vectorstore_migration_phase{{{sel}, phase="paused"}}) == 1',
        summary="A store's online migration to a changed spec is paused.",
        description=lambda spec: (
            "The migration of store {{ $labels.store }} (an id; `GET /v1/vector_stores/<id>/migration` shows "
            f"its last_error) on the {_server(spec)} has been paused for 15 minutes: the embedding upstream "
            "refused a batch for the new model. The store still answers from its previous generation."
        ),
    ),
)


def rules(spec: Spec) -> list[Document]:
    """The alerting rules that apply to the spec, in table order."""
    sel = selector(spec)
    base = spec.server.alerts.runbook_url
    out: list[Document] = []
    for alert in ALERTS:
        if not alert.applies(spec):
            continue
        out.append(
            {
                "alert": alert.name,
                "expr": alert.expr(spec, sel),
                "for": alert.for_ if isinstance(alert.for_, str) else alert.for_(spec),
                "labels": {"severity": alert.severity},
                "annotations": {
                    "summary": alert.summary,
                    "description": alert.description(spec),
                    "runbook_url": f"{base}#{alert.anchor}",
                },
            }
        )
    return out


def prometheus_rule(spec: Spec) -> Document:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata(spec, spec.name, COMPONENT),
        "spec": {"groups": [{"name": RULE_GROUP, "rules": rules(spec)}]},
    }


def documents(spec: Spec) -> list[Document]:
    return [prometheus_rule(spec)] if spec.server.prometheus_rule else []
