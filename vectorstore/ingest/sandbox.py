"""Extraction with a bound on what one file may cost: wall-clock time, memory and extracted text.

A PDF is a program of sorts: a few kilobytes of Flate streams can inflate to gigabytes, and pypdf's time grows
faster than the text it produces (docs/ingestion.md, "What one file may cost"). So a PDF is extracted in a child
process of our own (`python -m vectorstore.ingest.sandbox`), one per concurrent extraction and reused from file
to file, which limits its own address space (RLIMIT_AS) and CPU time (RLIMIT_CPU) before it reads anything.
The parent waits at most `max_extract_seconds` for the answer, then kills the child and starts another for the
next file; a child that dies (out of memory) is replaced the same way. The file fails alone, as `invalid_file`
with a reason naming the limit, and the worker moves on; the server's event loop never runs the parser.

Other kinds (text, Markdown, HTML, JSON, CSV, code) cost time linear in their size, which `server.max_upload_bytes`
bounds; they are extracted in a thread as before, and their text is held to `max_extracted_bytes` too.

The protocol on the child's stdin/stdout: a request is an 8-byte length and a JSON header, then an 8-byte length
and the file's bytes; a reply is an 8-byte length and a JSON object (`{"text": ...}` or `{"code", "message"}`).
JSON both ways, so a child that a hostile file subverted can't make the parent run anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from config.model import Ingest
from vectorstore.ingest.extract import ExtractError, InvalidFile, UnsupportedFile, detect_kind, extract_text

log = logging.getLogger("vectorstore")

_LENGTH = struct.Struct(">Q")
_READY = b"ready\n"
MAX_IDLE_CHILDREN = 16
SPAWN_SECONDS = 60.0
"""How long a new child may take to start (an interpreter and pypdf's import, on a busy machine)."""


class _Unavailable(Exception):
    """The extraction process could not be started: the machine's fault, not the file's (retried later)."""


Extract = Callable[[bytes, str, str | None], Awaitable[str]]
"""(content, filename, content type) -> text; raises ExtractError."""


@dataclass(frozen=True)
class Limits:
    """`ingest.*` of the spec: what one file's extraction may take."""

    seconds: float = 60.0
    memory_bytes: int = 1 << 30
    text_bytes: int = 64 << 20


def _check_size(text: str, filename: str, limit: int) -> str:
    # UTF-8 is at most 4 bytes a character: most texts are decided without encoding them.
    if len(text) * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit:
        raise InvalidFile(
            f"{filename!r}: the extracted text is larger than the limit of {limit} bytes "
            "(ingest.max_extracted_bytes); a compression bomb, or a file to split"
        )
    return text


class _Child:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def ask(self, header: dict[str, Any], data: bytes) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        encoded = json.dumps(header).encode()
        stdin.write(_LENGTH.pack(len(encoded)) + encoded + _LENGTH.pack(len(data)))
        stdin.write(data)
        await stdin.drain()
        (length,) = _LENGTH.unpack(await stdout.readexactly(_LENGTH.size))
        reply: dict[str, Any] = json.loads(await stdout.readexactly(length))
        return reply

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with contextlib.suppress(Exception):
            await self.process.wait()


class Sandbox:
    """Extracts PDFs in child processes under `limits`; everything else in a thread. `close()` ends the children."""

    @classmethod
    def from_spec(cls, ingest: Ingest) -> Sandbox:
        return cls(Limits(ingest.max_extract_seconds, ingest.max_extract_memory_bytes, ingest.max_extracted_bytes))

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._idle: list[_Child] = []
        self._closed = False

    async def extract(self, data: bytes, filename: str, content_type: str | None) -> str:
        if detect_kind(filename, content_type) != "pdf":
            text = await asyncio.to_thread(extract_text, data, filename, content_type)
            return _check_size(text, filename, self.limits.text_bytes)
        child = self._idle.pop() if self._idle else await self._spawn()
        header = {"filename": filename, "content_type": content_type, "max_bytes": self.limits.text_bytes}
        try:
            reply = await asyncio.wait_for(child.ask(header, data), timeout=self.limits.seconds)
        except TimeoutError:
            await child.kill()
            raise InvalidFile(
                f"{filename!r}: extracting its text took longer than the limit of {self.limits.seconds:g}s "
                "(ingest.max_extract_seconds); a compression bomb, or a file to split"
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            returncode = child.process.returncode
            await child.kill()
            raise InvalidFile(
                f"{filename!r}: the extraction process ended (exit status {returncode}): it needed more memory than "
                f"the limit of {self.limits.memory_bytes} bytes (ingest.max_extract_memory_bytes), or crashed"
            ) from None
        except BaseException:
            await child.kill()  # cancelled mid-file: the child's state is unknown
            raise
        if self._closed or len(self._idle) >= MAX_IDLE_CHILDREN:
            await child.kill()
        else:
            self._idle.append(child)
        if "text" in reply:
            return str(reply["text"])
        message = str(reply.get("message", "extraction failed"))
        raise UnsupportedFile(message) if reply.get("code") == "unsupported_file" else InvalidFile(message)

    async def _spawn(self) -> _Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "vectorstore.ingest.sandbox",
            str(self.limits.memory_bytes),
            str(max(1, int(self.limits.seconds) + 1)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            # The child needs none of the server's secrets.
            env={key: value for key, value in os.environ.items() if key in ("PATH", "PYTHONPATH", "LANG", "HOME")},
            limit=1 << 20,
        )
        child = _Child(process)
        assert process.stdout is not None
        try:
            # The child says it is ready once pypdf is imported: a file's time limit is its own extraction only.
            await asyncio.wait_for(process.stdout.readexactly(len(_READY)), timeout=SPAWN_SECONDS)
        except (TimeoutError, asyncio.IncompleteReadError):
            await child.kill()
            raise _Unavailable(f"the extraction process did not start within {SPAWN_SECONDS:g}s") from None
        return child

    async def close(self) -> None:
        self._closed = True
        children, self._idle = self._idle, []
        for child in children:
            await child.kill()


async def in_thread(data: bytes, filename: str, content_type: str | None) -> str:
    """Extraction without isolation (a worker built without a Sandbox: tests of the queue itself)."""
    return await asyncio.to_thread(extract_text, data, filename, content_type)


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError
    return data


def _serve(memory_bytes: int, cpu_seconds: int) -> None:
    """The child: set its own limits, then answer requests until stdin closes."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # A child outlives its parent only until its next read of stdin; the wall-clock limit is the parent's, per
    # file, so no CPU limit (CPU time would add up over the files a child extracts).
    del cpu_seconds
    import pypdf  # noqa: F401 - imported before the handshake, so that no file's time limit pays for it

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(_READY)
    stdout.flush()
    while True:
        try:
            (length,) = _LENGTH.unpack(_read_exactly(stdin, _LENGTH.size))
        except EOFError:
            return
        header = json.loads(_read_exactly(stdin, length))
        (size,) = _LENGTH.unpack(_read_exactly(stdin, _LENGTH.size))
        data = _read_exactly(stdin, size)
        filename = str(header["filename"])
        try:
            text = _check_size(extract_text(data, filename, header["content_type"]), filename, header["max_bytes"])
            reply: dict[str, Any] = {"text": text}
        except ExtractError as exc:
            reply = {"code": exc.code, "message": exc.message}
        except MemoryError:
            reply = {
                "code": "invalid_file",
                "message": f"{filename!r}: extracting its text needed more than the limit of {memory_bytes} bytes "
                "of memory (ingest.max_extract_memory_bytes)",
            }
        except RecursionError:
            reply = {"code": "invalid_file", "message": f"{filename!r}: the file is nested too deeply to read"}
        del data
        encoded = json.dumps(reply).encode()
        stdout.write(_LENGTH.pack(len(encoded)) + encoded)
        stdout.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
