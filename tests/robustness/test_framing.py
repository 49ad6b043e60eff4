"""Malformed HTTP framing, sent over raw sockets to a real `vectorstore serve`, as the review sent it.

aiohttp's parser refuses these before any middleware runs. Each must get a short 400 in OpenAI's envelope that
quotes nothing of the request (the sender's Authorization header least of all), close the connection, and
leave one warning line in the log: no traceback, no error line.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from robustness.harness import HOST, KEYS, ServerProcess

KEY = KEYS["writer"]
HEAD = f"POST /v1/vector_stores HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n".encode()

FRAMINGS = {
    "duplicate Content-Length": HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "Content-Length and Transfer-Encoding": HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad chunk size": HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "NUL in a header": HEAD + f"X-Trace: {KEY}\x00\r\nContent-Length: 2\r\n\r\n{{}}".encode(),
    "NUL in the Authorization header": (
        f"GET /v1/vector_stores HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\x00x\r\n\r\n".encode()
    ),
    "oversized header line": HEAD + b"X-Big: " + KEY.encode() * 1000 + b"\r\nContent-Length: 2\r\n\r\n{}",
    "bad request line": f"POST /v1/vector stores HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode(),
    "header without a colon": HEAD + f"Bearer {KEY}\r\n\r\n".encode(),
}


async def _exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        await writer.drain()
        # The server closes the connection after a framing error: reading to EOF (no timeout) proves it.
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return status, headers, body


@pytest.mark.parametrize("name", list(FRAMINGS))
async def test_malformed_framing_gets_a_short_json_400_without_echo(shared_server: ServerProcess, name: str) -> None:
    before = len(shared_server.logs())
    status, headers, body = await _exchange(shared_server.port, FRAMINGS[name])
    assert status == 400, body
    assert headers["content-type"].startswith("application/json"), headers
    answer: dict[str, Any] = json.loads(body)
    error = answer["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "malformed_request", answer
    assert error["message"].startswith("The request is not valid HTTP/1.1: "), error
    assert len(body) < 300, body
    for forbidden in (KEY.encode(), b"Authorization", b"Bearer", b"b'", b"X-Trace"):
        assert forbidden not in body, (forbidden, body)

    await asyncio.sleep(0.2)  # the log line is written as the answer goes out; give the pipe a moment
    new = shared_server.logs()[before:]
    lines = [json.loads(line) for line in new.splitlines() if line.startswith("{")]
    refusals = [line for line in lines if "malformed HTTP request" in line["msg"]]
    assert len(refusals) == 1, new
    assert refusals[0]["level"] == "warning"
    assert all(line["level"] != "error" for line in lines), new
    assert "Traceback" not in new and KEY not in new, new


async def test_the_server_still_serves_after_framing_errors_and_counts_them(shared_server: ServerProcess) -> None:
    async with shared_server.session() as http:
        response = await http.get("/v1/vector_stores")
        assert response.status == 200
        metrics = await (await http.get("/metrics")).text()
    counted = [line for line in metrics.splitlines() if 'route="malformed"' in line and "_total" in line]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= len(FRAMINGS), counted
    assert KEY not in metrics
