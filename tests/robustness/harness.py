"""What the robustness tests drive: a real `vectorstore serve` process and an embedding upstream that misbehaves.

The server runs as a subprocess (the same command operators run) so tests can kill -9 it, SIGTERM it, start
four at once and read its real log output. The fake upstream runs in a thread of the test process with a
`mode` the test flips at will: ok, slow, 500, 429 (with Retry-After), wrong dimensions, reflect (401 quoting
the Authorization header it got), or down (connection refused). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp

HOST = "127.0.0.1"
DIMENSIONS = 8
MODEL = "fake-embed"
# Key values: long and distinctive, so a test can grep logs for them.
KEYS = {
    "writer": "robust-writer-key-5f0c2a9e41",
    "reader": "robust-reader-key-b7d3e18c62",
    "limited": "robust-limited-key-09a4f7d3c5",
}
EMBEDDING_KEY = "robust-embedding-key-c3e9a1f0b8"
STORES = ("alpha", "beta")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def fake_vector(text: str, dimensions: int = DIMENSIONS) -> list[float]:
    """Deterministic bag-of-words vector: texts sharing words are close, so searches have a right answer."""
    vector = [0.0] * dimensions
    for word in re.findall(r"\w+", text.lower()) or [text]:
        digest = hashlib.sha256(word.encode()).digest()
        vector[digest[0] % dimensions] += 1.0 + digest[1] / 255.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


@dataclass
class Upstream:
    """An OpenAI-compatible `/v1/embeddings` whose behaviour the test sets through `mode`."""

    port: int
    mode: str = "ok"
    delay: float = 0.0
    retry_after: str = "1"
    calls: int = 0
    inputs: int = 0
    authorizations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"


def _handler(upstream: Upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            payload = json.loads(self.rfile.read(length) or b"{}")
            texts = payload.get("input")
            texts = [texts] if isinstance(texts, str) else list(texts or [])
            with upstream.lock:
                upstream.calls += 1
                upstream.inputs += len(texts)
                upstream.authorizations.append(self.headers.get("Authorization", ""))
            mode = upstream.mode
            if mode == "down":
                # Hang up without an answer: what a client sees when LiteLLM's pod is gone mid-request.
                self.close_connection = True
                return
            if mode == "slow" or upstream.delay:
                time.sleep(upstream.delay or 30.0)
            if mode == "500":
                self._send(500, {"error": {"message": "upstream exploded", "type": "server_error"}})
                return
            if mode == "reflect":
                # LiteLLM's proxy quotes the key it was given in its 401: the server must never pass that on.
                received = self.headers.get("Authorization", "")
                self._send(401, {"error": {"message": f"Invalid key. Received: {received}", "code": "invalid_key"}})
                return
            if mode == "429":
                self._send(
                    429,
                    {"error": {"message": "rate limited", "type": "rate_limit"}},
                    {"Retry-After": upstream.retry_after},
                )
                return
            # Wrong dimension: three extra zeros, so only the length is wrong.
            extra = [0.0] * 3 if mode == "wrongdim" else []
            data = [
                {"object": "embedding", "index": i, "embedding": fake_vector(text) + extra}
                for i, text in enumerate(texts)
            ]
            usage = {"prompt_tokens": 0, "total_tokens": 0}
            self._send(200, {"object": "list", "data": data, "model": payload.get("model"), "usage": usage})

    return Handler


@contextlib.contextmanager
def run_upstream() -> Iterator[Upstream]:
    upstream = Upstream(port=free_port())
    server = ThreadingHTTPServer((HOST, upstream.port), _handler(upstream))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fake-upstream", daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        server.shutdown()
        server.server_close()


def write_spec(
    path: Path,
    upstream_url: str,
    *,
    stores: tuple[str, ...] = STORES,
    max_upload_bytes: int = 256 * 1024,
    timeout_seconds: float = 2.0,
    max_retries: int = 1,
    pool_max: int = 10,
    batch_size: int = 64,
) -> Path:
    """A spec for these tests: three keys (write, read, write limited to `alpha`), small vectors, small uploads."""
    store_lines = "\n".join(f"  - name: {name}\n    description: robustness store {name}" for name in stores)
    path.write_text(
        f"""version: 1
name: robust
namespace: test
database:
  cluster: {{name: pg}}
  pool: {{min_size: 1, max_size: {pool_max}}}
auth:
  keys:
    - {{name: writer, api_key: {{secret: s, key: writer}}, scope: write}}
    - {{name: reader, api_key: {{secret: s, key: reader}}, scope: read}}
    - {{name: limited, api_key: {{secret: s, key: limited}}, scope: write, stores: [alpha]}}
embedding:
  base_url: "{upstream_url}"
  model: {MODEL}
  dimensions: {DIMENSIONS}
  api_key: {{secret: s, key: embedding}}
  timeout_seconds: {timeout_seconds}
  max_retries: {max_retries}
  batch_size: {batch_size}
server:
  max_upload_bytes: {max_upload_bytes}
  ingest_concurrency: 2
stores:
{store_lines}
""",
        encoding="utf-8",
    )
    return path


def server_env(dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "VECTORSTORE_", "DATABASE_URL"))}
    env["DATABASE_URL"] = dsn
    env["VECTORSTORE_API_KEY_WRITER"] = KEYS["writer"]
    env["VECTORSTORE_API_KEY_READER"] = KEYS["reader"]
    env["VECTORSTORE_API_KEY_LIMITED"] = KEYS["limited"]
    env["VECTORSTORE_EMBEDDING_API_KEY"] = EMBEDDING_KEY
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class ServerProcess:
    """`vectorstore serve` in a subprocess; its stdout and stderr go to `log_path`."""

    spec: Path
    dsn: str
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    data_dir: Path | None = None
    """Serve from the embedded PostgreSQL in this directory (no DATABASE_URL) instead of `dsn`."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables, over server_env's."""
    args: tuple[str, ...] = ()
    """Extra `vectorstore serve` arguments."""

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> ServerProcess:
        code = "import sys, cli; sys.exit(cli.main(sys.argv[1:]))"
        argv = [sys.executable, "-c", code, "serve", "--spec", str(self.spec), "--host", HOST, "--port", str(self.port)]
        env = {**server_env(self.dsn), **self.env}
        if self.data_dir is not None:
            argv += ["--data-dir", str(self.data_dir)]
            del env["DATABASE_URL"]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([*argv, *self.args], env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
            status, last = http_get(f"{self.base_url}/ready")
            if status == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout}s ({last}):\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace`; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def session(self, key: str | None = "writer", timeout: float = 10.0) -> aiohttp.ClientSession:
        """An HTTP session on this server, with `key`'s bearer header (none for None)."""
        headers = {"Authorization": f"Bearer {KEYS[key]}"} if key else {}
        return aiohttp.ClientSession(
            base_url=self.base_url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        )


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body) of a GET; status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - 127.0.0.1 only
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (OSError, urllib.error.URLError) as exc:
        return 0, str(exc)


def declared_store_ids(spec_path: Path) -> dict[str, str]:
    """Store name -> id, as the server derives them (config is the one source of truth)."""
    from config.spec import load_spec

    spec = load_spec(spec_path)
    return {store.name: store.id for store in spec.stores}


async def upload(http: aiohttp.ClientSession, filename: str, content: bytes, purpose: str = "assistants") -> str:
    """POST /v1/files; the new File's id."""
    form = aiohttp.FormData()
    form.add_field("purpose", purpose)
    form.add_field("file", content, filename=filename)
    response = await http.post("/v1/files", data=form)
    assert response.status == 200, await response.text()
    file_id: str = (await response.json())["id"]
    return file_id


async def attach(
    http: aiohttp.ClientSession, store_id: str, file_id: str, attributes: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"file_id": file_id}
    if attributes is not None:
        body["attributes"] = attributes
    response = await http.post(f"/v1/vector_stores/{store_id}/files", json=body)
    assert response.status == 200, await response.text()
    result: dict[str, Any] = await response.json()
    return result


async def wait_file(
    http: aiohttp.ClientSession, store_id: str, file_id: str, statuses: set[str], within: float = 30.0
) -> dict[str, Any]:
    """Poll a vector store file until its status is one of `statuses`."""
    import asyncio

    deadline = time.monotonic() + within
    while True:
        response = await http.get(f"/v1/vector_stores/{store_id}/files/{file_id}")
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        if body["status"] in statuses:
            return body
        assert time.monotonic() < deadline, f"file {file_id} still {body['status']} after {within}s: {body}"
        await asyncio.sleep(0.2)


def chunk_rows(dsn: str, store_id: str, file_id: str | None = None) -> list[tuple[str, int, int]]:
    """(file_id, chunk_index, vector dimensions) of a store's stored chunks, straight from its table."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT table_name FROM vector_stores WHERE id = %s", [store_id]).fetchone()
        assert row is not None, store_id
        query = sql.SQL("SELECT file_id, chunk_index, vector_dims(embedding) FROM {} {} ORDER BY 1, 2").format(
            sql.Identifier(row[0]), sql.SQL("WHERE file_id = %s" if file_id else "")
        )
        return [(str(r[0]), int(r[1]), int(r[2])) for r in conn.execute(query, [file_id] if file_id else [])]
