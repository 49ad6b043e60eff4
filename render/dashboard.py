"""The Grafana dashboard (`server.grafana_dashboard`): a ConfigMap holding its JSON, labelled for the Grafana
sidecar of kube-prometheus-stack (`server.grafana_dashboard_labels`).

The panels are a table (`PANELS`): title, unit and PromQL targets. The queries use three Grafana variables:
`$namespace`, `$store` (the stores that have been searched: declared names, and `undeclared`)
and `$__rate_interval`; tests/monitoring/test_metrics_exist.py substitutes them and parses every query with promtool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from config import Spec, names
from render.common import Document, metadata

COMPONENT = "server"
DASHBOARD_FILE = "vectorstore.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39
"""Grafana 11's dashboard JSON model."""


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    targets: tuple[Target, ...]
    description: str = ""


def _sel(spec: Spec, extra: str = "") -> str:
    """The series of this server in the chosen namespace: the PodMonitor's job label (see render/alerts.py)."""
    job = names.prometheus_job(spec.name, "$namespace")
    return "{" + f'namespace="$namespace", job="{job}"' + (f", {extra}" if extra else "") + "}"


def panels(spec: Spec) -> tuple[Panel, ...]:
    s = _sel(spec)
    store = _sel(spec, 'store=~"$store"')
    errors = _sel(spec, 'status=~"[45].."')
    rate = "[$__rate_interval]"
    paused = _sel(spec, 'phase="paused"')
    cached = _sel(spec, 'source="cache"')
    return (
        Panel(
            "Searches per second by store and mode",
            "reqps",
            (
                Target(
                    f"sum by (store, mode) (rate(vectorstore_store_search_duration_seconds_count{store}{rate}))",
                    "{{store}} {{mode}}",
                ),
            ),
            "Search requests by store (declared name, or `undeclared`) and the mode asked for.",
        ),
        Panel(
            "Search time p50 / p99 by store and mode",
            "s",
            tuple(
                Target(
                    f"histogram_quantile({q}, sum by (le, store, mode) "
                    f"(rate(vectorstore_store_search_duration_seconds_bucket{store}{rate})))",
                    f"{{{{store}}}} {{{{mode}}}} p{round(q * 100)}",
                )
                for q in (0.5, 0.99)
            ),
            "Whole search requests: query embedding, SQL and rerank.",
        ),
        Panel(
            "Searches by the mode they ran in, and fallbacks",
            "reqps",
            (
                Target(
                    f"sum by (mode, fallback) (rate(vectorstore_searches_total{s}{rate}))", "{{mode}} ({{fallback}})"
                ),
            ),
            "The mode a search ran in after any fallback: `no_terms` (no indexable word) or `upgrading` (keyword "
            "index still being built) ran as vector.",
        ),
        Panel(
            "SQL search time p50 / p99",
            "s",
            tuple(
                Target(
                    f"histogram_quantile({q}, sum by (le) (rate(vectorstore_search_duration_seconds_bucket{s}{rate})))",
                    f"p{round(q * 100)}",
                )
                for q in (0.5, 0.99)
            ),
            "The SQL part of searches only, all stores together.",
        ),
        Panel(
            "Requests by status",
            "reqps",
            (Target(f"sum by (status) (rate(vectorstore_http_requests_total{s}{rate}))", "{{status}}"),),
        ),
        Panel(
            "Errors by route and status",
            "reqps",
            (
                Target(
                    f"sum by (route, status) (rate(vectorstore_http_requests_total{errors}{rate}))",
                    "{{status}} {{route}}",
                ),
            ),
        ),
        Panel(
            "Ingestion: files per second by outcome",
            "ops",
            (Target(f"sum by (outcome) (rate(vectorstore_ingest_files_total{s}{rate}))", "{{outcome}}"),),
        ),
        Panel(
            "Ingestion queue depth",
            "short",
            (Target(f"max by (state) (vectorstore_ingest_queue_depth{s})", "{{state}}"),),
        ),
        Panel(
            "Sources: up",
            "short",
            (Target(f"max by (store, source) (vectorstore_source_up{store})", "{{store}}/{{source}}"),),
            "1 when the last sync could read the source.",
        ),
        Panel(
            "Sources: time since last success",
            "s",
            (
                Target(
                    f"time() - max by (store, source) (vectorstore_source_last_success_timestamp_seconds{store})",
                    "{{store}}/{{source}}",
                ),
            ),
        ),
        Panel(
            "Sources: files synced by change",
            "short",
            (
                Target(
                    f"sum by (store, source, change) (increase(vectorstore_source_files_total{store}{rate}))",
                    "{{store}}/{{source}} {{change}}",
                ),
            ),
        ),
        Panel(
            "Replica routing",
            "reqps",
            (
                Target(f"sum(rate(vectorstore_replica_searches_total{s}{rate}))", "on replicas"),
                Target(f"sum by (reason) (rate(vectorstore_replica_fallbacks_total{s}{rate}))", "primary: {{reason}}"),
                Target(f"min(vectorstore_replica_up{s})", "replicas up"),
            ),
        ),
        Panel(
            "Embedding upstream latency p50 / p99",
            "s",
            tuple(
                Target(
                    f"histogram_quantile({q}, sum by (le, purpose) "
                    f"(rate(vectorstore_embedding_request_duration_seconds_bucket{s}{rate})))",
                    f"{{{{purpose}}}} p{round(q * 100)}",
                )
                for q in (0.5, 0.99)
            ),
        ),
        Panel(
            "Embedding upstream errors",
            "reqps",
            (
                Target(
                    f"sum by (purpose, reason) (rate(vectorstore_embedding_errors_total{s}{rate}))",
                    "{{purpose}} {{reason}}",
                ),
            ),
        ),
        Panel(
            "Rerank latency p99 and fallbacks",
            "s",
            (
                Target(
                    f"histogram_quantile(0.99, sum by (le) (rate(vectorstore_rerank_request_duration_seconds_bucket{s}"
                    f"{rate})))",
                    "p99",
                ),
                Target(f"sum by (reason) (rate(vectorstore_rerank_fallbacks_total{s}{rate}))", "fallback {{reason}}"),
            ),
        ),
        Panel(
            "Database pool",
            "short",
            tuple(
                # Summed over the pod's worker processes (`serve --workers N`: one pool each, label `worker`).
                Target(f"sum by (pod) (vectorstore_db_pool_{name}{s})", f"{{{{pod}}}} {name}")
                for name in ("in_use", "waiting", "max")
            ),
        ),
        Panel(
            "Database pool, fullest worker",
            "percentunit",
            (Target(f"max by (pod) (vectorstore_db_pool_in_use{s} / vectorstore_db_pool_max{s})", "{{pod}}"),),
            "Share of its connections in use in the pod's fullest pool: under `serve --workers N` each worker has "
            "its own, and one saturated worker hides in the sum (VectorstorePoolSaturated fires on this).",
        ),
        Panel(
            "Keyword postings held by the cache",
            "percentunit",
            (
                Target(
                    f"sum(rate(vectorstore_keyword_postings_total{cached}{rate}))"
                    f" / sum(rate(vectorstore_keyword_postings_total{s}{rate}))",
                    "from the cache",
                ),
            ),
            "Of the postings keyword searches and hybrid searches' keyword legs scored, the share the server "
            "processes held decoded (`server.postings_cache_bytes`) rather than read from the database. Low on a "
            "large store means the cache holds too few of its common words: raise it (docs/search.md).",
        ),
        Panel(
            "Store migrations",
            "percentunit",
            (
                # Every pod reads migrations from the database, so they agree: max, not sum, across pods.
                Target(
                    f"max by (store) (vectorstore_migration_chunks_done{s})"
                    f" / max by (store) (vectorstore_migration_chunks_total{s})",
                    "{{store}} done",
                ),
                Target(
                    f"max by (store) (vectorstore_migration_phase{paused})",
                    "{{store}} paused",
                ),
            ),
            "Share of the chunks each declared store's online migration has carried into its new generation "
            "(store ids), and 1 while one is paused (VectorstoreMigrationPaused).",
        ),
    )


def _panel(index: int, panel: Panel) -> Document:
    width, height = 12, 8
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": width, "x": (index % 2) * width, "y": (index // 2) * height},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": [
            {
                "refId": chr(ord("A") + number),
                "datasource": DATASOURCE,
                "expr": target.expr,
                "legendFormat": target.legend,
            }
            for number, target in enumerate(panel.targets)
        ],
    }


def _variable(name: str, label: str, query: str, *, multi: bool) -> Document:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        # A multi-value variable starts on All: stores searched and stores with sources alike.
        **({"allValue": ".*", "current": {"selected": True, "text": ["All"], "value": ["$__all"]}} if multi else {}),
    }


def dashboard(spec: Spec) -> Document:
    job = names.prometheus_job(spec.name, "$namespace")
    return {
        "uid": f"vectorstore-{spec.namespace}-{spec.name}"[:40],
        "title": f"Vector store {spec.name}",
        "tags": ["vectorstore"],
        "schemaVersion": SCHEMA_VERSION,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"},
                _variable(
                    "namespace",
                    "Namespace",
                    f'label_values(vectorstore_http_requests_total{{job=~".+/{spec.name}"}}, namespace)',
                    multi=False,
                ),
                _variable(
                    "store",
                    "Store",
                    "label_values(vectorstore_store_search_duration_seconds_count"
                    f'{{namespace="$namespace", job="{job}"}}, store)',
                    multi=True,
                ),
            ]
        },
        "panels": [_panel(index, panel) for index, panel in enumerate(panels(spec))],
    }


def config_map(spec: Spec) -> Document:
    meta = metadata(spec, names.dashboard_config_map_name(spec.name), COMPONENT)
    meta["labels"] = dict(sorted({**meta["labels"], **spec.server.grafana_dashboard_labels}.items()))
    text = json.dumps(dashboard(spec), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {DASHBOARD_FILE: text}}


def documents(spec: Spec) -> list[Document]:
    return [config_map(spec)] if spec.server.grafana_dashboard else []
