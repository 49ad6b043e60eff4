"""A real server for the API tests: aiohttp on 127.0.0.1 (random port), a fresh database, the fake upstream.

Specs are written as JSON (valid YAML) to a temp file and loaded with `config.load_spec`, the same path
`vectorstore serve` takes.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fakeembed import FakeEmbedder
from openai import AsyncOpenAI

from config import Spec, load_spec
from vectorstore.api.protocol import EdgeAppRunner
from vectorstore.app import create_app
from vectorstore.settings import Settings
from vectorstore.state import READINESS

DIMS = 8
WRITE_KEY = "write-key-0123456789"
READ_KEY = "read-key-0123456789"
LIMITED_KEY = "limited-key-0123456789"
KEY_VALUES = {"writer": WRITE_KEY, "reader": READ_KEY, "limited": LIMITED_KEY}
DOCS_ID = "vs_docs0001"
STANDARD_STORES: list[dict[str, Any]] = [
    {"name": "docs", "id": DOCS_ID, "description": "Product docs", "metadata": {"team": "a"}},
    {"name": "notes"},
]


def spec_data(
    embed_url: str,
    *,
    stores: list[dict[str, Any]] | None = None,
    prune: bool = False,
    dims: int = DIMS,
    keys: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    stores = STANDARD_STORES if stores is None else stores
    if keys is None:
        keys = [
            {"name": "writer", "api_key": {"secret": "s", "key": "w"}, "scope": "write"},
            {"name": "reader", "api_key": {"secret": "s", "key": "r"}, "scope": "read"},
        ]
        if any(store["name"] == "docs" for store in stores):
            keys.append(
                {"name": "limited", "api_key": {"secret": "s", "key": "l"}, "scope": "write", "stores": ["docs"]}
            )
    return {
        "version": 1,
        "name": "vs-test",
        "namespace": "test",
        "database": {"cluster": {"name": "pg"}},
        "auth": {"keys": keys},
        "embedding": {
            "base_url": embed_url,
            "model": "fake-model",
            "dimensions": dims,
            "api_key": {"secret": "s", "key": "e"},
            "max_retries": 2,
            "timeout_seconds": 5,
        },
        "stores": stores,
        "reconcile": {"prune": prune},
    }


def write_spec(path: Path, data: Mapping[str, Any]) -> Spec:
    path.write_text(json.dumps(data, indent=1))
    return load_spec(path)


@dataclass
class RunningServer:
    app: web.Application
    runner: web.AppRunner
    base_url: str
    dsn: str
    spec: Spec

    def url(self, path: str) -> str:
        return self.base_url + path

    async def stop(self) -> None:
        await self.runner.cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_server(
    spec: Spec,
    dsn: str,
    *,
    api_keys: Mapping[str, str] | None = None,
    wait_ready: bool = True,
    embedding_api_key: str | None = "upstream-key",
    read_dsn: str | None = None,
    replica_wait_seconds: float = 0.05,
    **settings_fields: Any,
) -> RunningServer:
    keys = dict(api_keys) if api_keys is not None else {key.name: KEY_VALUES[key.name] for key in spec.api_keys}
    settings = Settings(
        dsn=dsn,
        api_keys=keys,
        embedding_api_key=embedding_api_key,
        pool_timeout=2.0,
        read_dsn=read_dsn,
        replica_wait_seconds=replica_wait_seconds,
        **settings_fields,
    )
    app = create_app(spec, settings=settings)
    # The runner `vectorstore serve` uses: malformed HTTP gets the same answer here.
    runner = EdgeAppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    server = RunningServer(app, runner, f"http://127.0.0.1:{port}", dsn, spec)
    if wait_ready:
        await asyncio.wait_for(app[READINESS].done.wait(), timeout=30)
        if not app[READINESS].ready:
            await server.stop()
            raise AssertionError(f"server did not become ready: {app[READINESS].error}")
    return server


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    return tmp_path / "stack.yaml"


@pytest.fixture
async def server(fresh_dsn: str, fake_embedder: FakeEmbedder, spec_path: Path) -> AsyncIterator[RunningServer]:
    spec = write_spec(spec_path, spec_data(fake_embedder.base_url))
    running = await start_server(spec, fresh_dsn)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[AsyncOpenAI]:
    openai_client = AsyncOpenAI(base_url=server.url("/v1"), api_key=WRITE_KEY, max_retries=0)
    try:
        yield openai_client
    finally:
        await openai_client.close()


def auth(key: str = WRITE_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
