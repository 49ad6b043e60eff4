"""Where the replicas are: DATABASE_READ_URL over the primary's settings, and when it is not used."""

from __future__ import annotations

import logging

import psycopg
import pytest

from config import Spec
from config.spec import load_spec
from render.server import env as rendered_env
from vectorstore.settings import StartupError, resolve_read_dsn

PRIMARY = "host=db-rw port=5432 dbname=vectorstore user=litellm password=s3cret-value"


def _spec(tmp_path: pytest.TempPathFactory, *, read_replicas: bool, instances: int = 2) -> Spec:
    path = tmp_path.mktemp("spec") / "stack.yaml"
    flag = str(read_replicas).lower()
    path.write_text(
        "version: 1\nnamespace: demo\n"
        f"database: {{cluster: {{name: docs-pg, instances: {instances}}}, read_replicas: {flag}}}\n"
        "auth: {keys: [{name: app, api_key: {secret: s, key: k}, scope: write}]}\n"
        "embedding: {base_url: 'http://litellm:4000', model: m, dimensions: 8}\n"
    )
    return load_spec(path)


def test_the_read_url_overrides_only_what_it_names(tmp_path_factory: pytest.TempPathFactory) -> None:
    spec = _spec(tmp_path_factory, read_replicas=True)
    dsn = resolve_read_dsn(spec, PRIMARY, {"DATABASE_READ_URL": "host=docs-pg-ro"})
    assert dsn is not None
    assert psycopg.conninfo.conninfo_to_dict(dsn) == {
        "host": "docs-pg-ro",
        "port": "5432",
        "dbname": "vectorstore",
        "user": "litellm",
        "password": "s3cret-value",
    }
    uri = resolve_read_dsn(spec, PRIMARY, {"DATABASE_READ_URL": "postgresql://replica:6432/other"})
    assert uri is not None and psycopg.conninfo.conninfo_to_dict(uri)["port"] == "6432"
    # With libpq's PG* variables the primary DSN is empty: libpq fills in the rest for both pools alike.
    assert resolve_read_dsn(spec, "", {"DATABASE_READ_URL": "host=docs-pg-ro"}) == "host=docs-pg-ro"


def test_what_the_deployment_renders_is_what_the_server_reads(tmp_path_factory: pytest.TempPathFactory) -> None:
    spec = _spec(tmp_path_factory, read_replicas=True)
    env = {item["name"]: item.get("value") for item in rendered_env(spec)}
    assert env["DATABASE_READ_URL"] == f"host={spec.database.cluster.ro_host}" == "host=docs-pg-ro"
    assert env["PGHOST"] == "docs-pg-rw"
    dsn = resolve_read_dsn(spec, "", {key: value for key, value in env.items() if value})
    assert dsn == "host=docs-pg-ro"
    off = _spec(tmp_path_factory, read_replicas=False)
    assert "DATABASE_READ_URL" not in {item["name"] for item in rendered_env(off)}


def test_spec_and_environment_must_agree(
    tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    on = _spec(tmp_path_factory, read_replicas=True)
    off = _spec(tmp_path_factory, read_replicas=False)
    assert resolve_read_dsn(on, PRIMARY, {}) is None
    assert "DATABASE_READ_URL is not set" in caplog.text and "host=docs-pg-ro" in caplog.text
    caplog.clear()
    assert resolve_read_dsn(off, PRIMARY, {"DATABASE_READ_URL": "host=x"}) is None
    assert "database.read_replicas off" in caplog.text


def test_a_bad_read_url_stops_serve_without_echoing_it(tmp_path_factory: pytest.TempPathFactory) -> None:
    spec = _spec(tmp_path_factory, read_replicas=True)
    with pytest.raises(StartupError) as caught:
        resolve_read_dsn(spec, PRIMARY, {"DATABASE_READ_URL": "host=x password=hunter22 = broken"})
    assert "DATABASE_READ_URL" in str(caught.value) and "hunter22" not in str(caught.value)
