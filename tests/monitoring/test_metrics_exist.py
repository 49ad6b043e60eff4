"""Every metric the rendered alerts and dashboard read is one a live server exports on /metrics, and every
dashboard query parses (promtool, each wrapped in a throwaway recording rule)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from fakeembed import FakeEmbedder
from pgdb import new_database
from prometheus_client.parser import text_string_to_metric_families
from server.conftest import WRITE_KEY, RunningServer, auth, spec_data, start_server, write_spec

from config import Spec
from render import alerts, dashboard

from .promql import SYNTHETIC_METRICS, metric_names, run, write_rules

# What Grafana puts in for its variables when it runs a query; any valid value parses the same.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": "prod", "$store": ".*"}


def _monitoring_spec(path: Path, embed_url: str) -> Spec:
    data = spec_data(embed_url)
    data["server"] = {"pod_monitor": True, "prometheus_rule": True, "grafana_dashboard": True}
    # Every alert applies: read replicas (their gauges register only then) and a declared source.
    data["database"] = {"cluster": {"name": "pg", "instances": 2}, "read_replicas": True}
    data["stores"] = [
        {"name": "docs", "sources": [{"name": "wiki", "path": str(path.parent)}], "search": {"target_recall": 0.95}}
    ]
    data["sync"] = {"interval": "10m"}
    return write_spec(path, data)


@pytest.fixture(scope="module")
async def live(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[RunningServer, set[str]]]:
    embedder = await FakeEmbedder().start()
    databases = new_database(pg_dsn, "mon")
    dsn = next(databases)
    spec = _monitoring_spec(tmp_path_factory.mktemp("monitoring") / "stack.yaml", embedder.base_url)
    # The replica DSN is the primary itself: enough for the replica series to register.
    server = await start_server(spec, dsn, read_dsn=dsn)
    try:
        async with aiohttp.ClientSession() as session, session.get(server.url("/metrics")) as response:
            assert response.status == 200
            text = await response.text()
        yield server, exported_names(text)
    finally:
        await server.stop()
        await embedder.close()
        next(databases, None)


def exported_names(text: str) -> set[str]:
    """Every sample name the exposition declares, whether or not a labelled metric has a child yet."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    out = set()
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, ("",)):
            out.add(family.name + suffix)
        out.update(sample.name for sample in family.samples)
    return out


def _queries(spec: Spec) -> list[str]:
    return [target.expr for panel in dashboard.panels(spec) for target in panel.targets]


def _substitute(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


async def test_every_metric_the_alerts_read_is_exported(live: tuple[RunningServer, set[str]]) -> None:
    server, exported = live
    rules = alerts.rules(server.spec)
    assert len(rules) == len(alerts.ALERTS)
    used = {name for rule in rules for name in metric_names(rule["expr"])}
    assert "vectorstore_ready" in used and "vectorstore_replica_up" in used
    assert used - SYNTHETIC_METRICS - exported == set()


async def test_every_metric_the_dashboard_reads_is_exported(live: tuple[RunningServer, set[str]]) -> None:
    server, exported = live
    used = {name for expr in _queries(server.spec) for name in metric_names(expr)}
    assert len(used) >= 12
    assert used - exported == set()


async def test_a_misspelt_metric_would_be_caught(live: tuple[RunningServer, set[str]]) -> None:
    _server, exported = live
    assert metric_names("rate(vectorstore_searchs_total[5m])") - exported == {"vectorstore_searchs_total"}


def test_every_dashboard_query_parses_under_promtool(tmp_path: Path, live: tuple[RunningServer, set[str]]) -> None:
    server, _exported = live
    queries = _queries(server.spec)
    rules = [{"record": f"dashboard:query{index}", "expr": _substitute(expr)} for index, expr in enumerate(queries)]
    path = write_rules(tmp_path / "dashboard.yaml", [{"name": "dashboard", "rules": rules}])
    result = run("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_dashboard_json_is_complete(live: tuple[RunningServer, set[str]]) -> None:
    server, _exported = live
    document = json.loads(dashboard.config_map(server.spec)["data"][dashboard.DASHBOARD_FILE])
    variables = {item["name"] for item in document["templating"]["list"]}
    assert {"namespace", "store", "datasource"} <= variables
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(panel["title"] for panel in document["panels"]).lower()
    for topic in ("searches", "search time", "errors", "ingestion", "queue", "sources", "replica", "embedding",
                  "rerank", "pool"):  # fmt: skip
        assert topic in titles, topic


async def test_the_postings_cache_is_shown(live: tuple[RunningServer, set[str]]) -> None:
    """Its gauges are there from the start (docs/operations.md lists them), sized as the spec says."""
    server, exported = live
    names = {f"vectorstore_postings_cache_{name}" for name in ("bytes", "rows", "max_bytes")}
    assert names <= exported
    async with aiohttp.ClientSession() as session, session.get(server.url("/metrics")) as response:
        text = await response.text()
    (budget,) = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "vectorstore_postings_cache_max_bytes"
    ]
    assert budget == server.spec.server.postings_cache_bytes == 128 << 20


async def test_searches_are_counted_by_store_and_mode(live: tuple[RunningServer, set[str]]) -> None:
    """The dashboard's per-store panels and the slow-search alert read this series: a declared store is labelled
    with its name, a store created through the API with `undeclared`."""
    server, _exported = live
    (declared,) = server.spec.stores
    async with aiohttp.ClientSession(headers=auth(WRITE_KEY)) as session:
        async with session.post(server.url("/v1/vector_stores"), json={"name": "made-by-api"}) as response:
            assert response.status == 200
            created = (await response.json())["id"]
        for store_id, mode in ((declared.id, "keyword"), (declared.id, "vector"), (created, "hybrid")):
            url = server.url(f"/v1/vector_stores/{store_id}/search")
            async with session.post(url, json={"query": "hello world", "search_mode": mode}) as response:
                assert response.status == 200, await response.text()
        async with session.get(server.url("/metrics")) as response:
            text = await response.text()
    counts = {
        (sample.labels["store"], sample.labels["mode"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "vectorstore_store_search_duration_seconds"
        for sample in family.samples
        if sample.name.endswith("_count")
    }
    assert counts[("docs", "keyword")] >= 1 and counts[("docs", "vector")] >= 1
    assert counts[("undeclared", "hybrid")] >= 1
    assert not any(store == created for store, _mode in counts)
