"""A real LiteLLM proxy in front of a real server, loaded with the litellm.yml `vectorstore render` writes, as is.

LiteLLM (`litellm[proxy]`, pinned in .ci/run) pins heavy dependencies, so it lives in its own venv, like checkov:
the binary in VECTORSTORE_LITELLM (CI sets it, and then it must exist: the tests fail, never skip), else
`.venv-litellm` in the checkout or beside it. Without any, the tests skip and say how to install it.

One server process and one proxy serve the whole module (LiteLLM takes 10-20 s to start). The proxy runs
offline (its model cost map from the wheel) and without a database, so its DB-backed features (managed
files, per-team store permissions) are not exercised. Its env holds a decoy OPENAI_API_KEY: with provider
`openai`, a missing key would fall back to it, and the server must never see it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakeembed import FakeEmbedder
from openai import AsyncOpenAI
from pgdb import new_database
from server.conftest import WRITE_KEY, free_port, spec_data, write_spec
from serverprocess import ServerProcess

REPO = Path(__file__).resolve().parents[2]
STORE_ID = "vs_litellm0001"
REGISTRY_NAME = "kb"
FILES_MODEL = "vectorstore-files"
OVERRIDDEN_MAX = 2
"""The registry's `search_overrides.max_num_results`: LiteLLM merges it over every search request."""
MASTER_KEY = "sk-litellm-master-0123456789"
DECOY_OPENAI_KEY = "sk-proj-DECOYdecoyDECOYdecoy0123456789abcdefABCDEF"
"""In LiteLLM's env as OPENAI_API_KEY: what the `openai` provider would send if the store key were missing."""
INSTALL = "python3 -m venv .venv-litellm && .venv-litellm/bin/pip install 'litellm[proxy]==1.108.7'"


def litellm_binary() -> Path | None:
    configured = os.environ.get("VECTORSTORE_LITELLM")
    if configured:
        return Path(configured)
    for venv in (REPO / ".venv-litellm", REPO.parent / ".venv-litellm"):
        if (venv / "bin" / "litellm").exists():
            return venv / "bin" / "litellm"
    return None


@pytest.fixture(scope="module")
def litellm_bin() -> Path:
    binary = litellm_binary()
    if binary is None:
        pytest.skip(f"LiteLLM is not installed (CI installs it, see .ci/run): {INSTALL}")
    assert binary.exists(), f"VECTORSTORE_LITELLM={binary} does not exist: {INSTALL}"
    return binary


def litellm_spec(embed_url: str, server_port: int, files_settings: bool) -> dict[str, Any]:
    registry = {"name": REGISTRY_NAME, "search_overrides": {"max_num_results": OVERRIDDEN_MAX}}
    data = spec_data(embed_url, stores=[{"name": "kb", "id": STORE_ID, "registry": registry}])
    # LiteLLM runs beside the server here, not in the cluster: the spec says where it reaches the server.
    data["litellm"] = {
        "api_base": f"http://127.0.0.1:{server_port}",
        "auth_key": "writer",
        "files_settings": files_settings,
    }
    data["server"] = {"max_upload_bytes": 1_000_000, "ingest_concurrency": 2}
    return data


def render(spec_path: Path, out: Path) -> Path:
    """`vectorstore render`, the command operators run; returns the litellm.yml it wrote."""
    subprocess.run(
        [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", "render", str(spec_path), "-o", str(out)],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    return out / "litellm.yml"


@dataclass
class Proxy:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs: Any) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.base_url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=60, **kwargs)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _launch(binary: Path, directory: Path, snippet: Path, store_key: str | None) -> Proxy:
    """LiteLLM with a config.yaml that only adds its master key and includes the rendered snippet."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "litellm.yml").write_bytes(snippet.read_bytes())
    (directory / "config.yaml").write_text(
        f"general_settings:\n  master_key: {MASTER_KEY}\ninclude:\n  - litellm.yml\n", encoding="utf-8"
    )
    env: dict[str, str] = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(directory),
        "LANG": "C.UTF-8",
        # Offline: the model cost map from the wheel, no telemetry.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "OPENAI_API_KEY": DECOY_OPENAI_KEY,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    if store_key is not None:
        env["VECTOR_STORE_API_KEY"] = store_key
    port = free_port()
    log_path = directory / "litellm.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(binary), "--config", "config.yaml", "--host", "127.0.0.1", "--port", str(port)],
            cwd=directory,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Proxy(process, port, log_path)


async def start_proxy(binary: Path, directory: Path, snippet: Path, store_key: str | None) -> Proxy:
    proxy = await asyncio.to_thread(_launch, binary, directory, snippet, store_key)
    process = proxy.process
    deadline = time.monotonic() + 120
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError("LiteLLM exited at startup:\n" + proxy.log()[-3000:])
            try:
                async with http.get(proxy.base_url + "/health/liveliness") as response:
                    if response.status == 200:
                        return proxy
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.25)
    proxy.stop()
    raise AssertionError("LiteLLM did not start in 120 s:\n" + proxy.log()[-3000:])


WRONG_KEY = "sk-proj-WRONGwrongWRONG" + "x" * 40
"""The store key of the second proxy: wrong, and shaped like an OpenAI key."""


@dataclass
class Stack:
    server: ServerProcess
    proxy: Proxy
    wrong_key_proxy: Proxy
    """The default render (no files_settings), WRONG_KEY in its env; started beside the first, so the module
    waits for one startup only."""
    snippet: Path
    default_snippet: Path
    dsn: str
    embedder: FakeEmbedder


@pytest.fixture(scope="module")
def module_dsn(pg_dsn: str) -> Iterator[str]:
    yield from new_database(pg_dsn, "ll")


@pytest.fixture(scope="module")
async def module_embedder() -> AsyncIterator[FakeEmbedder]:
    embedder = await FakeEmbedder().start()
    try:
        yield embedder
    finally:
        await embedder.close()


@pytest.fixture(scope="module")
async def stack(
    litellm_bin: Path, module_dsn: str, module_embedder: FakeEmbedder, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    root = tmp_path_factory.mktemp("litellm")
    port = free_port()
    # The main proxy gets files_settings (model-less uploads come here), the wrong-key one the default render.
    default_path = root / "default.yaml"
    write_spec(default_path, litellm_spec(module_embedder.base_url, port, files_settings=False))
    default_snippet = render(default_path, root / "rendered-default")
    spec_path = root / "stack.yaml"
    write_spec(spec_path, litellm_spec(module_embedder.base_url, port, files_settings=True))
    snippet = render(spec_path, root / "rendered")
    server = ServerProcess(spec_path, module_dsn, root / "server.log", port=port)
    server.start()
    try:
        await server.wait_ready()
        started = await asyncio.gather(
            start_proxy(litellm_bin, root / "proxy", snippet, WRITE_KEY),
            start_proxy(litellm_bin, root / "wrong-key-proxy", default_snippet, WRONG_KEY),
            return_exceptions=True,
        )
        proxies = [proxy for proxy in started if isinstance(proxy, Proxy)]
        try:
            for failure in started:
                if isinstance(failure, BaseException):
                    raise failure
            yield Stack(server, proxies[0], proxies[1], snippet, default_snippet, module_dsn, module_embedder)
        finally:
            for proxy in proxies:
                proxy.stop()
    finally:
        server.stop()


@pytest.fixture
async def via_litellm(stack: Stack) -> AsyncIterator[AsyncOpenAI]:
    client = stack.proxy.client()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def direct(stack: Stack) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(base_url=stack.server.base_url + "/v1", api_key=WRITE_KEY, max_retries=0, timeout=30)
    try:
        yield client
    finally:
        await client.close()


def files_headers() -> Mapping[str, str]:
    return {"x-litellm-model": FILES_MODEL}
