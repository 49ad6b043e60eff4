"""The rendered alerts with the real tool: `promtool check rules` on every render, and `promtool test rules` with
synthetic series that make each alert fire and series that must not."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from config import Spec, load_spec
from render import alerts
from render.manifests import render_files

from .promql import run, write_rules

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "prod"
NAME = "kb"
JOB = f"{NAMESPACE}/{NAME}"
SPEC = f"""
version: 1
name: {NAME}
namespace: {NAMESPACE}
database: {{cluster: {{name: pg, instances: 2}}, read_replicas: true}}
auth: {{keys: [{{name: app, api_key: {{secret: s, key: k}}, scope: write}}]}}
embedding: {{base_url: "http://litellm:4000", model: m, dimensions: 8}}
server: {{pod_monitor: true, prometheus_rule: true}}
stores:
  - name: docs
    sources: [{{name: wiki, path: /srv/wiki}}]
    search: {{target_recall: 0.95}}
sync: {{interval: 10m}}
"""
BASE = {"namespace": NAMESPACE, "job": JOB}
POD = {**BASE, "pod": "kb-0"}
SEARCH = {**POD, "store": "docs", "mode": "hybrid"}


def series(metric: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return {"series": f"{metric}{{{inner}}}", "values": values}


@dataclass
class Case:
    """One alert: the series that make it fire (and the labels it fires with), the series that must not, and
    when to evaluate (past the alert's `for`)."""

    fire: list[dict[str, str]]
    fire_labels: dict[str, str]
    quiet: list[dict[str, str]]
    at: str
    extra: list[dict[str, str]] = field(default_factory=list)
    value: str = ""
    """What `{{ $value }}` becomes in the annotations when it fires (the alert's value), for alerts that say it."""


CASES: dict[str, Case] = {
    "VectorstoreDown": Case(
        fire=[series("up", POD, "0x10")], fire_labels=POD, quiet=[series("up", POD, "1x10")], at="6m"
    ),
    "VectorstoreAbsent": Case(
        fire=[series("up", {"namespace": "other", "job": "other/kb", "pod": "kb-0"}, "1x20")],
        fire_labels=BASE,
        quiet=[series("up", POD, "1x20")],
        at="11m",
    ),
    "VectorstoreNotReady": Case(
        fire=[series("vectorstore_ready", POD, "0x15")],
        fire_labels=POD,
        quiet=[series("vectorstore_ready", POD, "1x15")],
        at="11m",
    ),
    "VectorstoreErrors": Case(
        fire=[
            series("vectorstore_http_requests_total", {**POD, "status": "500", "route": "/x"}, "0+10x30"),
            series("vectorstore_http_requests_total", {**POD, "status": "200", "route": "/x"}, "0+100x30"),
        ],
        fire_labels={},
        quiet=[
            series("vectorstore_http_requests_total", {**POD, "status": "500", "route": "/x"}, "0+1x30"),
            series("vectorstore_http_requests_total", {**POD, "status": "200", "route": "/x"}, "0+100x30"),
        ],
        at="20m",
    ),
    "VectorstoreSearchSlow": Case(
        fire=[
            series("vectorstore_store_search_duration_seconds_bucket", {**SEARCH, "le": le}, values)
            for le, values in (("0.5", "0x30"), ("1.0", "0x30"), ("2.5", "0+10x30"), ("+Inf", "0+10x30"))
        ],
        fire_labels={"store": "docs"},
        quiet=[
            series("vectorstore_store_search_duration_seconds_bucket", {**SEARCH, "le": le}, "0+10x30")
            for le in ("0.5", "1.0", "2.5", "+Inf")
        ],
        at="20m",
    ),
    "VectorstoreEmbeddingErrors": Case(
        fire=[
            series("vectorstore_embedding_errors_total", {**POD, "purpose": "ingest", "reason": "timeout"}, "0+5x30"),
            series("vectorstore_embedding_request_duration_seconds_count", {**POD, "purpose": "ingest"}, "0+10x30"),
        ],
        fire_labels={"purpose": "ingest"},
        quiet=[
            series("vectorstore_embedding_errors_total", {**POD, "purpose": "ingest", "reason": "timeout"}, "0x30"),
            series("vectorstore_embedding_request_duration_seconds_count", {**POD, "purpose": "ingest"}, "0+10x30"),
        ],
        at="20m",
    ),
    "VectorstoreSourceFailing": Case(
        fire=[series("vectorstore_source_up", {**POD, "store": "docs", "source": "wiki"}, "0x20")],
        fire_labels={"store": "docs", "source": "wiki"},
        # One pod failed once, another synced fine since: the source is fine.
        quiet=[
            series("vectorstore_source_up", {**POD, "store": "docs", "source": "wiki"}, "0x20"),
            series("vectorstore_source_up", {**POD, "pod": "kb-1", "store": "docs", "source": "wiki"}, "1x20"),
        ],
        at="16m",
    ),
    "VectorstoreSourceStale": Case(
        # Last success at Unix time 0: 40 minutes old at 40m, past 3 x 10m.
        fire=[
            series(
                "vectorstore_source_last_success_timestamp_seconds", {**POD, "store": "docs", "source": "wiki"}, "0x40"
            )
        ],
        fire_labels={"store": "docs", "source": "wiki"},
        # A success every minute (the value follows the clock).
        quiet=[
            series(
                "vectorstore_source_last_success_timestamp_seconds",
                {**POD, "store": "docs", "source": "wiki"},
                "0+60x40",
            )
        ],
        at="40m",
    ),
    "VectorstoreSourceDeletionsHeld": Case(
        # The newest sync (at Unix time 600, on kb-1) held 3 deletions.
        fire=[
            series("vectorstore_source_deletes_held", {**POD, "store": "docs", "source": "wiki"}, "0x15"),
            series(
                "vectorstore_source_last_success_timestamp_seconds", {**POD, "store": "docs", "source": "wiki"}, "0x15"
            ),
            series(
                "vectorstore_source_deletes_held", {**POD, "pod": "kb-1", "store": "docs", "source": "wiki"}, "3x15"
            ),
            series(
                "vectorstore_source_last_success_timestamp_seconds",
                {**POD, "pod": "kb-1", "store": "docs", "source": "wiki"},
                "600x15",
            ),
        ],
        fire_labels={"store": "docs", "source": "wiki"},
        # kb-0 held them once; kb-1 synced since and deleted nothing held: the source is fine.
        quiet=[
            series("vectorstore_source_deletes_held", {**POD, "store": "docs", "source": "wiki"}, "3x15"),
            series(
                "vectorstore_source_last_success_timestamp_seconds", {**POD, "store": "docs", "source": "wiki"}, "0x15"
            ),
            series(
                "vectorstore_source_deletes_held", {**POD, "pod": "kb-1", "store": "docs", "source": "wiki"}, "0x15"
            ),
            series(
                "vectorstore_source_last_success_timestamp_seconds",
                {**POD, "pod": "kb-1", "store": "docs", "source": "wiki"},
                "600x15",
            ),
        ],
        at="10m",
    ),
    "VectorstoreIngestFailures": Case(
        fire=[series("vectorstore_ingest_files_total", {**POD, "outcome": "failed"}, "0+1x60")],
        fire_labels={},
        # Three failures in the hour: under the default 5.
        quiet=[series("vectorstore_ingest_files_total", {**POD, "outcome": "failed"}, "0 1 2 3x57")],
        at="60m",
    ),
    "VectorstoreIngestQueueGrowing": Case(
        fire=[series("vectorstore_ingest_queue_depth", {**POD, "state": "ready"}, "0+2x60")],
        fire_labels={},
        # Large but steady: no alert.
        quiet=[series("vectorstore_ingest_queue_depth", {**POD, "state": "ready"}, "500x60")],
        at="50m",
    ),
    "VectorstoreReplicaDown": Case(
        fire=[series("vectorstore_replica_up", POD, "0x15")],
        fire_labels=POD,
        quiet=[series("vectorstore_replica_up", POD, "1x15")],
        at="11m",
    ),
    "VectorstorePoolSaturated": Case(
        fire=[
            series("vectorstore_db_pool_in_use", POD, "10x15"),
            series("vectorstore_db_pool_max", POD, "10x15"),
            series("vectorstore_db_pool_waiting", POD, "0x15"),
        ],
        fire_labels=POD,
        quiet=[
            series("vectorstore_db_pool_in_use", POD, "3x15"),
            series("vectorstore_db_pool_max", POD, "10x15"),
            series("vectorstore_db_pool_waiting", POD, "0x15"),
        ],
        at="11m",
    ),
    "VectorstoreRecallBelowTarget": Case(
        fire=[series("vectorstore_search_recall_target_reached", {**POD, "store": "vs_docs"}, "0x80")],
        fire_labels={"store": "vs_docs"},
        # Below target for a while, then reached: no alert.
        quiet=[series("vectorstore_search_recall_target_reached", {**POD, "store": "vs_docs"}, "0x30 1x50")],
        at="75m",
    ),
    "VectorstoreMigrationPaused": Case(
        fire=[series("vectorstore_migration_phase", {**POD, "store": "vs_docs", "phase": "paused"}, "1x20")],
        fire_labels={"store": "vs_docs"},
        # Building, not paused: no alert.
        quiet=[
            series("vectorstore_migration_phase", {**POD, "store": "vs_docs", "phase": "paused"}, "0x20"),
            series("vectorstore_migration_phase", {**POD, "store": "vs_docs", "phase": "building"}, "1x20"),
        ],
        at="16m",
    ),
}


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Spec:
    path = tmp_path_factory.mktemp("alerts") / "stack.yaml"
    path.write_text(SPEC, encoding="utf-8")
    return load_spec(path)


def _fill(template: str, labels: dict[str, str], value: str = "") -> str:
    """What Prometheus makes of the `{{ $labels.x }}` and `{{ $value }}` templates (the kinds the rules use)."""
    filled = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda match: labels.get(match.group(1), ""), template)
    return filled.replace("{{ $value }}", value)


# Under `serve --workers N` the per-process gauges come once per worker, labelled `worker`, from whichever
# worker answers the scrape: one worker in trouble fires the pod's alert, once, without a `worker` label.
WORKER_0, WORKER_1 = {**POD, "worker": "0"}, {**POD, "worker": "1"}
WORKER_CASES: dict[str, Case] = {
    "VectorstoreNotReady": Case(
        fire=[series("vectorstore_ready", WORKER_0, "1x15"), series("vectorstore_ready", WORKER_1, "0x15")],
        fire_labels=POD,
        quiet=[series("vectorstore_ready", WORKER_0, "1x15"), series("vectorstore_ready", WORKER_1, "1x15")],
        at="11m",
    ),
    "VectorstoreReplicaDown": Case(
        fire=[series("vectorstore_replica_up", WORKER_0, "1x15"), series("vectorstore_replica_up", WORKER_1, "0x15")],
        fire_labels=POD,
        quiet=[series("vectorstore_replica_up", WORKER_0, "1x15"), series("vectorstore_replica_up", WORKER_1, "1x15")],
        at="11m",
    ),
    "VectorstorePoolSaturated": Case(
        # One worker idle, the other with every connection lent: the pod's alert fires (an average would not).
        fire=[
            series("vectorstore_db_pool_in_use", WORKER_0, "1x15"),
            series("vectorstore_db_pool_in_use", WORKER_1, "10x15"),
            *(series("vectorstore_db_pool_max", worker, "10x15") for worker in (WORKER_0, WORKER_1)),
            *(series("vectorstore_db_pool_waiting", worker, "0x15") for worker in (WORKER_0, WORKER_1)),
        ],
        fire_labels=POD,
        quiet=[
            *(series("vectorstore_db_pool_in_use", worker, "3x15") for worker in (WORKER_0, WORKER_1)),
            *(series("vectorstore_db_pool_max", worker, "10x15") for worker in (WORKER_0, WORKER_1)),
            *(series("vectorstore_db_pool_waiting", worker, "0x15") for worker in (WORKER_0, WORKER_1)),
        ],
        at="11m",
    ),
}


def test_every_alert_applies_to_the_test_spec_and_has_a_case(spec: Spec) -> None:
    rendered = [rule["alert"] for rule in alerts.rules(spec)]
    assert rendered == [alert.name for alert in alerts.ALERTS]
    assert set(CASES) == set(rendered)


def test_every_alert_has_a_runbook_in_operations_md(spec: Spec) -> None:
    text = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    headings = {line[4:].strip().lower() for line in section.splitlines() if line.startswith("### ")}
    for rule in alerts.rules(spec):
        assert rule["annotations"]["runbook_url"].endswith("#" + rule["alert"].lower())
        assert rule["alert"].lower() in headings, f"docs/operations.md has no runbook for {rule['alert']}"
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_rendered_rules_pass_promtool_check(tmp_path: Path) -> None:
    """Every committed render case with alerts, and the full test spec: `promtool check rules` finds no problem."""
    specs = [REPO / "config" / "stack.yaml", *sorted((REPO / "tests" / "rendering" / "specs").glob("*.yaml"))]
    checked = 0
    for path in specs:
        for name, text in render_files(load_spec(path)).items():
            if name.startswith("prometheusrule-"):
                rules = write_rules(tmp_path / f"{path.stem}.yaml", yaml.safe_load(text)["spec"]["groups"])
                result = run("check", "rules", str(rules), cwd=tmp_path)
                assert result.returncode == 0, result.stdout + result.stderr
                assert "SUCCESS" in result.stdout
                checked += 1
    assert checked >= 2


def test_promtool_refuses_a_broken_rule(tmp_path: Path) -> None:
    """The check above can fail."""
    rules = write_rules(tmp_path / "bad.yaml", [{"name": "g", "rules": [{"alert": "X", "expr": "sum(rate(x[5m])"}]}])
    assert run("check", "rules", str(rules), cwd=tmp_path).returncode != 0


def _unit_tests(spec: Spec) -> dict[str, Any]:
    by_name = {rule["alert"]: rule for rule in alerts.rules(spec)}
    tests: list[dict[str, Any]] = []
    cases = [(name, case, "") for name, case in CASES.items()]
    cases += [(name, case, " (two workers)") for name, case in WORKER_CASES.items()]
    for name, case, variant in cases:
        rule = by_name[name]
        labels = {**case.fire_labels, "alertname": name, "severity": rule["labels"]["severity"]}
        annotations = {key: _fill(value, labels, case.value) for key, value in rule["annotations"].items()}
        tests.append(
            {
                "name": f"{name} fires{variant}",
                "interval": "1m",
                "input_series": case.fire,
                "alert_rule_test": [
                    {
                        "eval_time": case.at,
                        "alertname": name,
                        "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}],
                    }
                ],
            }
        )
        tests.append(
            {
                "name": f"{name} stays quiet{variant}",
                "interval": "1m",
                "input_series": case.quiet,
                "alert_rule_test": [{"eval_time": case.at, "alertname": name, "exp_alerts": []}],
            }
        )
    return {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}


def test_every_alert_fires_and_stays_quiet_under_promtool(spec: Spec, tmp_path: Path) -> None:
    write_rules(tmp_path / "rules.yaml", alerts.prometheus_rule(spec)["spec"]["groups"])
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(_unit_tests(spec), sort_keys=False), encoding="utf-8")
    result = run("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_can_fail(spec: Spec, tmp_path: Path) -> None:
    """A case whose alert must fire but whose series are the quiet ones fails: the tests above prove something."""
    write_rules(tmp_path / "rules.yaml", alerts.prometheus_rule(spec)["spec"]["groups"])
    document = _unit_tests(spec)
    document["tests"][0]["input_series"] = CASES["VectorstoreDown"].quiet
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    result = run("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode != 0 and "VectorstoreDown" in result.stdout + result.stderr


def test_thresholds_come_from_the_spec(spec: Spec, tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text(
        SPEC.replace(
            "prometheus_rule: true}",
            "prometheus_rule: true, alerts: {search_p99_seconds: 0.25, error_ratio: 0.01, source_stale_intervals: 6, "
            "ingest_queue_growing_minutes: 45, runbook_url: 'https://wiki.example.com/ops'}}",
        ),
        encoding="utf-8",
    )
    rules = {rule["alert"]: rule for rule in alerts.rules(load_spec(path))}
    assert rules["VectorstoreSearchSlow"]["expr"].endswith("> 0.25")
    assert rules["VectorstoreErrors"]["expr"].endswith("> 0.01")
    assert rules["VectorstoreSourceStale"]["expr"].endswith("> 3600")
    assert rules["VectorstoreIngestQueueGrowing"]["for"] == "45m"
    assert rules["VectorstoreDown"]["annotations"]["runbook_url"] == "https://wiki.example.com/ops#vectorstoredown"


def test_alerts_that_do_not_apply_are_left_out(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    replicas = "database: {cluster: {name: pg, instances: 2}, read_replicas: true}"
    text = SPEC.replace(replicas, "database: {cluster: {name: pg}}").replace(
        "sync: {interval: 10m}", "sync: {interval: '0'}"
    )
    path.write_text(text, encoding="utf-8")
    names = {rule["alert"] for rule in alerts.rules(load_spec(path))}
    assert "VectorstoreReplicaDown" not in names and "VectorstoreSourceStale" not in names
    assert "VectorstoreSourceFailing" in names


def test_no_credential_of_the_embedding_url_reaches_an_alert(spec: Spec) -> None:
    """Alert descriptions go to Alertmanager's receivers (chat, mail): validate refuses a user:password in the
    embedding URL (tests/specs/invalid/embedding-base-url-credentials.yaml), and should one reach render some
    other way, the URL is shown without it."""
    embedding = dataclasses.replace(spec.embedding, base_url="http://vs:hunter2-password@litellm:4000")
    rendered = yaml.safe_dump(alerts.rules(dataclasses.replace(spec, embedding=embedding)))
    assert "VectorstoreEmbeddingErrors" in rendered and "litellm:4000" in rendered
    assert "hunter2-password" not in rendered
