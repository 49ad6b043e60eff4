"""`vectorstore ingest --store NAME PATH...`: upload a folder of documents into a store over the HTTP API.

It speaks only the public API (the same routes the OpenAI SDK uses), so it works against any deployment:
upload each file (`POST /v1/files`), attach it (`POST /v1/vector_stores/{id}/files`) with the file's SHA-256
and relative path as attributes, and poll until each is `completed` or `failed`. A file whose SHA-256 is
already attached and completed in the store is skipped, so running it again over the same folder only sends
what changed. Exit code: 0 when every file is in, 1 when any failed, 2 when it could not run at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, TaskID, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Column

from vectorstore.ingest.extract import ExtractError, detect_kind
from vectorstore.options import IngestOptions

UPLOAD_CONCURRENCY = 4
POLL_SECONDS = 0.25
HASH_ATTRIBUTE = "sha256"
PATH_ATTRIBUTE = "path"
CHUNKS_HEADER = "x-vectorstore-chunks"


class IngestError(Exception):
    """The command can't run (no key, unknown store, server unreachable); the message says why."""


@dataclass
class Outcome:
    path: Path
    status: str = "pending"
    chunks: int = 0
    error: str | None = None


class Progress:
    """Each file's outcome as it ends, and the counts the summary prints.

    On a terminal, a live bar (rich): files done of total, chunks, failed and skipped, rate and ETA,
    with failures printed above it as they happen. Anywhere else (CI logs, a pipe) one plain line per file,
    with the same counts, rate and ETA, so a log shows progress without control characters.
    """

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.done = 0
        self.skipped = 0
        self.failed = 0
        self.chunks = 0
        self.started = time.monotonic()
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None
        if stream.isatty():
            console = Console(file=stream, force_terminal=True)
            # One line in 80 columns: the bar takes what the counts leave, and the counts never wrap.
            counts = (
                "{task.completed}/{task.total} files, {task.fields[chunks]} chunks, {task.fields[failed]} failed, "
                "{task.fields[skipped]} skipped, {task.fields[rate]} files/s, ETA"
            )
            self._bar = RichProgress(
                BarColumn(bar_width=None),
                TextColumn(counts, table_column=Column(no_wrap=True)),
                TimeRemainingColumn(),
                console=console,
                expand=True,
            )
            self._task = self._bar.add_task("ingest", total=total, chunks=0, skipped=0, failed=0, rate="-")

    @property
    def interactive(self) -> bool:
        return self._bar is not None

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    @property
    def rate(self) -> float:
        """Files per second so far."""
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds left at the rate so far; None before the first file ends."""
        return (self.total - self.done) / self.rate if self.done and self.rate > 0 else None

    def show(self, outcome: Outcome) -> None:
        if outcome.status == "skipped":
            self.skipped += 1
        elif outcome.status == "failed":
            self.failed += 1
        else:
            self.chunks += outcome.chunks
        self.done += 1
        if self._bar is not None and self._task is not None:
            if outcome.status == "failed":
                self._bar.console.print(f"FAILED {outcome.path}: {outcome.error}", markup=False, highlight=False)
            self._bar.update(
                self._task,
                advance=1,
                chunks=self.chunks,
                skipped=self.skipped,
                failed=self.failed,
                rate=f"{self.rate:.1f}",
            )
            return
        detail = f"{outcome.chunks} chunks" if outcome.status == "completed" else outcome.status
        if outcome.error:
            detail += f": {outcome.error}"
        eta = self.eta()
        timing = f"{self.rate:.1f} files/s" + (
            f", ETA {eta:.0f}s" if eta is not None and self.done < self.total else ""
        )
        self.stream.write(f"[{self.done}/{self.total}] {outcome.path}: {detail} ({timing})\n")
        self.stream.flush()


def collect(paths: tuple[Path, ...]) -> tuple[list[Path], list[Path]]:
    """Files to send, and files skipped as unsupported. Named files are always sent; directories are walked
    (hidden entries skipped) for files whose type the server can read."""
    chosen: list[Path] = []
    unsupported: list[Path] = []
    for path in paths:
        if path.is_dir():
            for candidate in _walk(path):
                try:
                    detect_kind(candidate.name)
                except ExtractError:
                    unsupported.append(candidate)
                    continue
                chosen.append(candidate)
        elif path.is_file():
            chosen.append(path)
        else:
            raise IngestError(f"{path}: no such file or directory")
    unique = list(dict.fromkeys(chosen))
    return unique, unsupported


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _path_attribute(path: Path) -> str:
    """The file's absolute path (at most 512 characters, OpenAI's limit): the same file from any cwd."""
    return str(path.resolve())[-512:]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Api:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, key: str) -> None:
        self.session = session
        self.base = base_url.rstrip("/") + "/v1"
        self.headers = {"Authorization": f"Bearer {key}"}

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[dict[str, Any], dict[str, str]]:
        async with self.session.request(method, self.base + path, headers=self.headers, **kwargs) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = None
            if response.status >= 400:
                message = body.get("error", {}).get("message") if isinstance(body, dict) else None
                raise ApiFailure(response.status, message or response.reason or "error")
            return (body if isinstance(body, dict) else {}), dict(response.headers)

    async def pages(self, path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params = {"limit": "100", "order": "asc", **({"after": after} if after else {})}
            body, _ = await self.call("GET", path, params=params)
            items += body.get("data", [])
            if not body.get("has_more") or not body.get("data"):
                return items
            after = body["data"][-1]["id"]


class ApiFailure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


async def resolve_store(api: Api, store: str) -> str:
    """A store given by id or by name (names are unique among declared stores; the first match wins)."""
    try:
        body, _ = await api.call("GET", f"/vector_stores/{store}")
        return str(body["id"])
    except ApiFailure as exc:
        if exc.status != 404:
            raise
    matches = [item["id"] for item in await api.pages("/vector_stores") if item.get("name") == store]
    if not matches:
        raise IngestError(f"no vector store with id or name '{store}' (or the key may not see it)")
    return str(matches[0])


async def run(options: IngestOptions, key: str, stream: TextIO) -> int:
    files, unsupported = collect(options.paths)
    for path in unsupported:
        stream.write(f"skipping {path}: not a type the server can read\n")
    if not files:
        stream.write("nothing to ingest\n")
        return 0
    strategy: dict[str, Any] | None = None
    if options.chunk_size is not None:
        from vectorstore.storage.strategy import ChunkingError, validate_static

        try:
            validate_static(options.chunk_size, options.chunk_size // 4)
        except ChunkingError as exc:
            raise IngestError(f"--chunk-size: {exc.message}") from None
        strategy = {
            "type": "static",
            "static": {"max_chunk_size_tokens": options.chunk_size, "chunk_overlap_tokens": options.chunk_size // 4},
        }
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        api = Api(session, options.base_url, key)
        store_id = await resolve_store(api, options.store)
        attached = await api.pages(f"/vector_stores/{store_id}/files")
        existing = {
            str((item.get("attributes") or {}).get(HASH_ATTRIBUTE))
            for item in attached
            if item.get("status") == "completed"
        }
        by_path: dict[str, list[str]] = {}
        for item in attached:
            path_attribute = (item.get("attributes") or {}).get(PATH_ATTRIBUTE)
            if isinstance(path_attribute, str):
                by_path.setdefault(path_attribute, []).append(str(item["id"]))
        stream.write(f"ingesting {len(files)} file(s) into {store_id} at {options.base_url}\n")
        limit = asyncio.Semaphore(UPLOAD_CONCURRENCY)
        with Progress(len(files), stream) as progress:
            outcomes = await asyncio.gather(
                *(_one(api, store_id, path, existing, by_path, strategy, limit, progress) for path in files)
            )
    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    completed = sum(outcome.status == "completed" for outcome in outcomes)
    elapsed = time.monotonic() - progress.started
    stream.write(
        f"done in {elapsed:.1f}s ({progress.rate:.1f} files/s): {completed} ingested ({progress.chunks} chunks), "
        f"{progress.skipped} already there, {len(failed)} failed\n"
    )
    for outcome in failed:
        stream.write(f"  FAILED {outcome.path}: {outcome.error}\n")
    return 1 if failed else 0


async def _one(
    api: Api,
    store_id: str,
    path: Path,
    existing: set[str],
    by_path: dict[str, list[str]],
    strategy: dict[str, Any] | None,
    limit: asyncio.Semaphore,
    progress: Progress,
) -> Outcome:
    outcome = Outcome(path)
    try:
        digest = await asyncio.to_thread(sha256_of, path)
        if digest in existing:
            outcome.status = "skipped"
            return outcome
        async with limit:
            form = aiohttp.FormData()
            form.add_field("purpose", "assistants")
            form.add_field("file", await asyncio.to_thread(path.read_bytes), filename=path.name)
            uploaded, _ = await api.call("POST", "/files", data=form)
            body: dict[str, Any] = {
                "file_id": uploaded["id"],
                "attributes": {HASH_ATTRIBUTE: digest, PATH_ATTRIBUTE: _path_attribute(path)},
            }
            if strategy is not None:
                body["chunking_strategy"] = strategy
            await api.call("POST", f"/vector_stores/{store_id}/files", json=body)
        while True:
            attached, headers = await api.call("GET", f"/vector_stores/{store_id}/files/{uploaded['id']}")
            if attached.get("status") != "in_progress":
                break
            await asyncio.sleep(int(headers.get("openai-poll-after-ms", "250")) / 1000)
        outcome.status = str(attached.get("status"))
        outcome.chunks = int(headers.get(CHUNKS_HEADER, "0"))
        error = attached.get("last_error")
        if outcome.status != "completed":
            outcome.status = "failed"
            outcome.error = f"{error.get('code')}: {error.get('message')}" if error else "cancelled"
        else:
            # The new version is in: earlier versions of this path (changed since, or failed) leave the store.
            for old_id in by_path.get(_path_attribute(path), []):
                if old_id != uploaded["id"]:
                    try:
                        await api.call("DELETE", f"/vector_stores/{store_id}/files/{old_id}")
                    except ApiFailure as exc:
                        if exc.status != 404:
                            raise
    except ApiFailure as exc:
        outcome.status = "failed"
        outcome.error = str(exc)
    except OSError as exc:
        outcome.status = "failed"
        outcome.error = f"can't read it ({exc.strerror or exc})"
    finally:
        progress.show(outcome)
    return outcome


def ingest(options: IngestOptions) -> int:
    key = os.environ.get(options.api_key_env)
    if not key:
        print(f"vectorstore ingest: set {options.api_key_env} to the API key (a write key)", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(options, key, sys.stdout))
    except IngestError as exc:
        print(f"vectorstore ingest: {exc}", file=sys.stderr)
        return 2
    except ApiFailure as exc:
        print(f"vectorstore ingest: the server refused: {exc}", file=sys.stderr)
        return 2
    except aiohttp.ClientError as exc:
        print(f"vectorstore ingest: can't reach {options.base_url}: {exc}", file=sys.stderr)
        return 2
