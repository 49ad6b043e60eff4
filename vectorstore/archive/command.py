"""`vectorstore export STORE -o FILE` and `vectorstore import FILE [--as NAME|ID] [--replace]`.

Both go straight to the database, found the way `vectorstore serve` finds it (PG* or DATABASE_URL, else the
embedded one in --data-dir), with the spec for the declared stores. Not through the HTTP API: an import must
be one transaction, and the API has no route that writes embeddings it did not compute. So they need what
the server needs: the database's credentials (in Kubernetes, `kubectl exec` into the server's pod, which has
them). Exit codes: 0 done, 1 refused (bad archive, existing store, unknown store), 2 could not run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import BinaryIO, TextIO

import psycopg
from rich.console import Console
from rich.progress import BarColumn, TaskID, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from config import Spec
from vectorstore.archive.dump import Counts, StoreNotFound, export_store
from vectorstore.archive.format import ArchiveError, Reader
from vectorstore.archive.load import ImportRefused, import_archive
from vectorstore.commands import _load, run_loop
from vectorstore.observability import logs
from vectorstore.options import ExportOptions, ImportOptions
from vectorstore.settings import StartupError
from vectorstore.storage import database
from vectorstore.storage.migrations import MigrationError, migrate, schema_ready
from vectorstore.storage.stores import StoreRecord

PLAIN_EVERY_SECONDS = 2.0


class Progress:
    """Chunks done of the expected total: a live bar on a terminal, a plain line every few seconds elsewhere
    (CI logs, pipes), like `vectorstore ingest`."""

    def __init__(self, verb: str, stream: TextIO) -> None:
        self.verb = verb
        self.stream = stream
        self.total: int | None = None
        self.started = time.monotonic()
        self._last_line = 0.0
        self._counts: Counts | None = None
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None
        if stream.isatty():
            self._bar = RichProgress(
                BarColumn(bar_width=None),
                TextColumn("{task.completed}/{task.total} chunks, {task.fields[files]} files"),
                TimeRemainingColumn(),
                console=Console(file=stream, force_terminal=True),
                expand=True,
            )
            self._task = self._bar.add_task(verb, total=None, files=0)

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif kind is None and self._counts is not None:
            print(self.line(self._counts), file=self.stream, flush=True)  # the last counts, always

    def expect(self, chunks: int) -> None:
        self.total = chunks
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, total=chunks)

    def tick(self, counts: Counts) -> None:
        self._counts = counts
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=counts.chunks, files=counts.files)
            return
        now = time.monotonic()
        if now - self._last_line >= PLAIN_EVERY_SECONDS:
            self._last_line = now
            print(self.line(counts), file=self.stream, flush=True)

    def line(self, counts: Counts) -> str:
        elapsed = time.monotonic() - self.started
        total = f"/{self.total}" if self.total is not None else ""
        rate = counts.chunks / elapsed if elapsed > 0 else 0.0
        return (
            f"{self.verb}: {counts.chunks}{total} chunks, {counts.files} files ({counts.file_bytes} bytes), "
            f"{rate:.0f} chunks/s, {elapsed:.1f}s"
        )


def _open_database(options: ExportOptions | ImportOptions) -> tuple[Spec, database.DatabaseLocation]:
    spec = _load(options.spec)
    logs.add_secrets([os.environ.get("PGPASSWORD", "")])
    return spec, database.locate_database(options.data_dir)


def _fail(command: str, message: str, code: int) -> int:
    print(f"vectorstore {command}: {message}", file=sys.stderr)
    return code


def export_command(options: ExportOptions) -> int:
    try:
        _spec, location = _open_database(options)
    except StartupError as exc:
        return _fail("export", str(exc), 2)
    except Exception as exc:
        return _fail("export", f"can't start the database: {exc}", 2)
    # Written beside the target and renamed at the end: a failed export leaves no half archive behind.
    partial = options.output.with_name(options.output.name + ".partial")
    try:
        with partial.open("wb") as out, Progress("export", sys.stderr) as progress:
            record, counts, size = run_loop(_export(location.dsn, options.store, out, progress))
        partial.replace(options.output)
    except StoreNotFound as exc:
        return _fail("export", str(exc), 1)
    except OSError as exc:
        return _fail("export", f"can't write {options.output}: {exc.strerror or exc}", 2)
    except psycopg.Error as exc:
        return _fail("export", f"database error ({location.description}): {str(exc).strip()}", 2)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        location.close()
    print(
        f"vectorstore export: store {record.id} ({record.name!r}): {counts.files} files, {counts.chunks} chunks, "
        f"{counts.sources} source paths -> {options.output} ({size} bytes)",
        file=sys.stderr,
    )
    return 0


async def _export(dsn: str, ref: str, out: BinaryIO, progress: Progress) -> tuple[StoreRecord, Counts, int]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        if not await schema_ready(conn):
            raise StoreNotFound("this database has no stores yet (the server never ran on it)")
        return await export_store(conn, ref, out, progress.tick, expect=progress.expect)


def import_command(options: ImportOptions) -> int:
    try:
        source = options.archive.open("rb")
    except OSError as exc:
        return _fail("import", f"can't read {options.archive}: {exc.strerror or exc}", 2)
    with source:
        try:
            spec, location = _open_database(options)
        except StartupError as exc:
            return _fail("import", str(exc), 2)
        except Exception as exc:
            return _fail("import", f"can't start the database: {exc}", 2)
        try:
            with Progress("import", sys.stderr) as progress:
                record, counts = run_loop(_import(location.dsn, source, spec, options, progress))
        except (ArchiveError, ImportRefused) as exc:
            return _fail("import", f"{options.archive}: {exc}; nothing was imported", 1)
        except MigrationError as exc:
            return _fail("import", str(exc), 2)
        except psycopg.OperationalError as exc:
            return _fail("import", f"can't use the database ({location.description}): {str(exc).strip()}", 2)
        except psycopg.Error as exc:
            # The archive's data refused by PostgreSQL (a NaN in a vector, a NUL in a text): rolled back.
            message = exc.diag.message_primary or str(exc).strip()
            return _fail(
                "import", f"{options.archive}: PostgreSQL refused its data: {message}; nothing was imported", 1
            )
        finally:
            location.close()
    print(
        f"vectorstore import: store {record.id} ({record.name!r}): {counts.files} files, {counts.chunks} chunks, "
        f"{counts.sources} source paths, 0 embedding calls",
        file=sys.stderr,
    )
    return 0


async def _import(
    dsn: str, source: BinaryIO, spec: Spec, options: ImportOptions, progress: Progress
) -> tuple[StoreRecord, Counts]:
    reader = Reader(source)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(conn)
        return await import_archive(
            conn, reader, spec, as_=options.as_, replace=options.replace, tick=progress.tick, expect=progress.expect
        )
