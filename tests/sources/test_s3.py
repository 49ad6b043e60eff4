"""An `s3` source against a real S3 endpoint on 127.0.0.1 (moto in server mode, authentication on)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakeembed import FakeEmbedder
from server.conftest import write_spec

from config import names
from sources.conftest import attachments, sources_spec, start_with_sources, sync_again, wait_synced
from sources.s3server import S3Server, run_s3
from vectorstore.sources.service import SYNCER

SECRET = "s3-reports"
_buckets = itertools.count()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with run_s3() as server:
        yield server


@pytest.fixture
def bucket(s3: S3Server) -> str:
    name = f"reports-{next(_buckets)}"
    s3.client().create_bucket(Bucket=name)
    return name


def credentials_env(s3: S3Server, *, secret: str | None = None) -> dict[str, str]:
    return {
        names.source_secret_env(SECRET, names.S3_ACCESS_KEY_ID_KEY): s3.access_key_id,
        names.source_secret_env(SECRET, names.S3_SECRET_ACCESS_KEY_KEY): secret or s3.secret_access_key,
    }


def source(s3: S3Server, bucket: str, **fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "bucket": bucket,
        "prefix": "2026/",
        "endpoint": s3.url,
        "region": "us-east-1",
        "credentials": {"secret": SECRET},
    }
    return {"name": "reports", "s3": {**spec, **fields}}


def put(s3: S3Server, bucket: str, objects: dict[str, bytes | None]) -> None:
    client = s3.client()
    for key, body in objects.items():
        if body is None:
            client.delete_object(Bucket=bucket, Key=key)
        else:
            client.put_object(Bucket=bucket, Key=key, Body=body)


async def test_objects_added_changed_and_deleted(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path, http: aiohttp.ClientSession, s3: S3Server, bucket: str
) -> None:
    put(
        s3,
        bucket,
        {
            "2026/q1.md": b"First quarter: revenue grew.",
            "2026/q2/summary.txt": b"Second quarter summary.",
            "2026/q2/": b"",  # a "folder" marker
            "2026/.keep": b"hidden",
            "2026/evil/../../escape.md": b"a key with .. segments",
            "2025/old.md": b"Outside the prefix.",
        },
    )
    settings = {"source_env": credentials_env(s3)}
    server = await start_with_sources(fake_embedder, fresh_dsn, tmp_path / "spec.yaml", [source(s3, bucket)], settings)
    try:
        (status,) = await wait_synced(http, server)
        assert status["type"] == "s3" and status["location"] == f"s3://{bucket}/2026/ at {s3.url}"
        assert sorted(row["filename"] for row in attachments(fresh_dsn)) == ["q1.md", "q2/summary.txt"]
        (failure,) = status["last_sync"]["failures"]
        assert failure["path"] == "2026/evil/../../escape.md" and "`..`" in failure["reason"]

        put(
            s3,
            bucket,
            {"2026/q1.md": b"First quarter, restated.", "2026/q3.md": b"Third.", "2026/q2/summary.txt": None},
        )
        fake_embedder.calls.clear()
        (result,) = await sync_again(server, http)
        outcome = result.sources[0]
        assert (outcome.added, outcome.updated, outcome.deleted, outcome.unchanged) == (1, 1, 1, 0)
        assert sorted(fake_embedder.inputs) == ["First quarter, restated.", "Third."]

        fake_embedder.calls.clear()
        (result,) = await sync_again(server, http)
        assert (result.sources[0].unchanged, result.sources[0].changes) == (2, 0) and fake_embedder.calls == []
    finally:
        await server.stop()


async def _resync_with(server: Any, http: aiohttp.ClientSession, **context: Any) -> str:
    syncer = server.app[SYNCER]
    syncer.context = dataclasses.replace(syncer.context, **context)
    (result,) = await sync_again(server, http)
    assert result.sources[0].deleted == 0
    return str(result.sources[0].error)


async def test_bad_credentials_and_an_unreachable_endpoint_delete_nothing(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path, http: aiohttp.ClientSession, s3: S3Server, bucket: str
) -> None:
    put(s3, bucket, {"2026/q1.md": b"First quarter."})
    settings = {"source_env": credentials_env(s3)}
    server = await start_with_sources(fake_embedder, fresh_dsn, tmp_path / "spec.yaml", [source(s3, bucket)], settings)
    try:
        await wait_synced(http, server)
        before = attachments(fresh_dsn)
        assert len(before) == 1

        wrong = "wrong-secret-key-7d1c0f9e2b"
        error = await _resync_with(server, http, environ=credentials_env(s3, secret=wrong))
        assert "SignatureDoesNotMatch" in error and "the secret key is wrong" in error and wrong not in error

        unknown = {
            **credentials_env(s3),
            names.source_secret_env(SECRET, names.S3_ACCESS_KEY_ID_KEY): "AKIAUNKNOWN0000",
        }
        error = await _resync_with(server, http, environ=unknown)
        assert "InvalidAccessKeyId" in error

        error = await _resync_with(server, http, environ={})
        assert names.source_secret_env(SECRET, names.S3_ACCESS_KEY_ID_KEY) in error and "not set" in error

        syncer = server.app[SYNCER]
        syncer.context = dataclasses.replace(syncer.context, environ=credentials_env(s3))
        # The discard port: nothing listens there.
        unreachable = sources_spec(fake_embedder.base_url, [source(s3, bucket, endpoint="http://127.0.0.1:9")])
        syncer.spec = write_spec(tmp_path / "unreachable.yaml", unreachable)
        (result,) = await sync_again(server, http)
        assert "unreachable" in str(result.sources[0].error) and result.sources[0].deleted == 0
        assert attachments(fresh_dsn) == before
        (status,) = await wait_synced(http, server)
        assert status["status"] == "failed" and wrong not in str(status)
    finally:
        await server.stop()


async def test_a_missing_bucket_is_an_error(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path, http: aiohttp.ClientSession, s3: S3Server
) -> None:
    settings = {"source_env": credentials_env(s3)}
    sources = [source(s3, "no-such-bucket")]
    server = await start_with_sources(fake_embedder, fresh_dsn, tmp_path / "spec.yaml", sources, settings)
    try:
        (status,) = await wait_synced(http, server)
        assert status["status"] == "failed" and "NoSuchBucket" in status["last_sync"]["error"]
    finally:
        await server.stop()


async def test_a_prefix_is_a_folder_and_an_emptied_prefix_is_held(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path, http: aiohttp.ClientSession, s3: S3Server, bucket: str
) -> None:
    put(
        s3,
        bucket,
        {
            "docs/intro.md": b"Intro of the docs folder.",
            "docs/guide/setup.md": b"Setup guide.",
            "docs-archive/old.md": b"A sibling folder: not under docs/.",
            "docsREADME.md": b"A sibling key: not under docs/ either.",
        },
    )
    settings = {"source_env": credentials_env(s3)}
    sources = [source(s3, bucket, prefix="docs")]  # no trailing slash: still the folder docs/
    server = await start_with_sources(fake_embedder, fresh_dsn, tmp_path / "spec.yaml", sources, settings)
    try:
        (status,) = await wait_synced(http, server)
        assert status["status"] == "ok" and status["location"] == f"s3://{bucket}/docs/ at {s3.url}"
        assert status["last_sync"]["failed"] == 0
        assert sorted(row["filename"] for row in attachments(fresh_dsn)) == ["guide/setup.md", "intro.md"]

        # Every object under the prefix gone (moved, or a wrong bucket policy): held, nothing deleted.
        put(s3, bucket, {"docs/intro.md": None, "docs/guide/setup.md": None})
        (result,) = await sync_again(server, http)
        assert result.sources[0].held == {"would_delete": 2, "files": 2, "max_delete": "50%"}
        assert len(attachments(fresh_dsn)) == 2
        (status,) = await wait_synced(http, server)
        assert status["status"] == "held"
    finally:
        await server.stop()
